"""End to end against a real Prefect server (the stack of tests/e2e_stack.py): `train-lora`
started through the REST API as a user (or the UI) would. The CPU flow must hand the heavy half to
`train-lora-gpu` as its own deployment run on the `gpu` pool.

The two workers are set up as on two machines: each has its own local cache folder, and the only
thing they share is the cache location, a bucket on a real S3 API (moto's server, on loopback).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from lib.core.cache import RECORD_SUFFIX
from tests.e2e_helpers import BUCKET, resolve, tiny_request
from tests.e2e_stack import FAILING_RUN_S, ROOT, TRAIN_RUN_S, Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

# ---------------------------------------------------------------------------------------------
# The tests (module order: cheap checks first, then the runs)


def test_deployments_and_parameter_schema(stack):
    train = stack.deployment("train-lora", "train-lora")
    gpu = stack.deployment("train-lora-gpu", "train-lora-gpu")
    nightly = stack.deployment("train-lora", "retrain-nightly")
    assert train["work_pool_name"] == "cpu" and gpu["work_pool_name"] == "gpu"
    assert train["enforce_parameter_schema"] and gpu["enforce_parameter_schema"]
    assert gpu["concurrency_limit"] == 1 or (gpu.get("global_concurrency_limit") or {}).get("limit") == 1
    assert train["pull_steps"] == [{"prefect.deployments.steps.set_working_directory": {"directory": str(ROOT)}}]
    assert [s["active"] for s in nightly["schedules"]] == [False]
    assert nightly["parameters"]["skip_if_unchanged"] is True

    schema = train["parameter_openapi_schema"]
    assert schema["required"] == ["request"], schema.get("required")
    assert set(schema["properties"]) == {"request", "skip_if_unchanged"}
    request_schema = resolve(schema, schema["properties"]["request"])
    assert request_schema.get("additionalProperties") is False  # extra="forbid"
    properties = request_schema["properties"]
    assert {"training_data_url", "rank", "number_of_steps", "resolution", "validation", "output_url"} <= set(properties)
    missing = {
        name: sorted({"title", "description"} - set(prop))
        for name, prop in properties.items()
        if not {"title", "description"} <= set(prop)
    }
    assert not missing, f"request fields without title/description: {missing}"
    assert properties["training_data_url"]["title"] == "Training data URL"
    assert request_schema["required"] == ["training_data_url"]
    assert properties["rank"]["enum"] == [8, 16, 32, 64, 128]
    assert sorted(resolve(schema, properties["resolution"])["enum"]) == ["high", "low", "medium"]
    assert sorted(resolve(schema, properties["aspect_ratio"])["enum"]) == ["16:9", "1:1", "9:16"]
    steps = properties["number_of_steps"]
    assert (steps["minimum"], steps["maximum"], steps["default"]) == (100, 20000, 2000)
    sample = resolve(schema, properties["validation"]["items"])
    assert {"video_url", "mask_url", "reference_video_url"} <= set(sample["required"])


@pytest.mark.parametrize(
    "overrides",
    [{"rank": 12}, {"number_of_steps": 5}, {"resolution": "ultra"}, {"no_such_field": 1}],
    ids=["rank", "steps", "resolution", "extra-field"],
)
def test_invalid_parameters_refused_by_server(stack, overrides, tmp_path):
    train = stack.deployment("train-lora", "train-lora")
    before = len(stack.flow_runs(deployments={"id": {"any_": [train["id"]]}}))
    response = stack.create_flow_run(
        train["id"], {"request": tiny_request(stack, "sample.zip", tmp_path / "out", **overrides)}
    )
    # Prefect answers a schema violation with 409 Conflict, "Error creating flow run: <jsonschema message>".
    assert response.status_code == 409, (response.status_code, response.text)
    assert "Error creating flow run" in response.json()["detail"], response.text
    assert len(stack.flow_runs(deployments={"id": {"any_": [train["id"]]}})) == before, "no flow run may be created"


def test_schema_bypass_still_fails_in_the_flow(stack, tmp_path):
    """create_flow_run accepts `enforce_parameter_schema: false` from any caller; the flow's own
    pydantic validation must then refuse the request (Failed, before any work is done)."""
    train = stack.deployment("train-lora", "train-lora")
    response = stack.client.post(
        f"/deployments/{train['id']}/create_flow_run",
        json={
            "parameters": {"request": tiny_request(stack, "sample.zip", tmp_path / "out", rank=12)},
            "enforce_parameter_schema": False,
        },
    )
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], FAILING_RUN_S)
    assert run["state_type"] == "FAILED", stack.describe(run)
    assert "rank" in (run["state"]["message"] or "") or "rank" in stack.flow_run_logs(run["id"]), stack.describe(run)
    assert not (tmp_path / "out").exists()


VALIDATION_FIELDS = dict(
    validation_number_of_frames=9, validation_resolution="low", validation_aspect_ratio="16:9", validation_steps=4
)
CACHED = ("checks", "conformed", "validation", "latents")  # what a rerun with the same data must reuse


def _validation(stack: Stack) -> list[dict]:
    return [
        {
            "prompt": "repl4ce the square",
            "video_url": f"{stack.base_url}/val_source.mp4",
            "mask_url": f"{stack.base_url}/val_mask.png",
            "reference_video_url": f"{stack.base_url}/val_reference.mp4",
        }
    ]


def _files_under(folder: Path, part: str) -> list[str]:
    """Cache entries (not their .sha256 checksum records) under `part`."""
    return sorted(
        str(path.relative_to(folder))
        for path in folder.rglob("*")
        if path.is_file() and part in path.parts and path.suffix != RECORD_SUFFIX
    )


def _train_into_bucket(stack: Stack, name: str) -> tuple[dict, dict]:
    """One train-lora run through the REST API with its outputs in the bucket: (run, result.json)."""
    train = stack.deployment("train-lora", "train-lora")
    started = time.monotonic()
    response = stack.create_flow_run(
        train["id"],
        {
            "request": tiny_request(
                stack, "sample.zip", f"s3://{BUCKET}/outputs/{name}", validation=_validation(stack), **VALIDATION_FIELDS
            )
        },
    )
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], TRAIN_RUN_S)
    print(f"\n[e2e] train-lora run {run['name']} ({name}): {run['state_type']} after {time.monotonic() - started:.1f}s")
    assert run["state_type"] == "COMPLETED", stack.describe(run)
    stack.s3.invalidate_cache()
    return run, json.loads(stack.s3.cat_file(f"{BUCKET}/outputs/{name}/result.json"))


@pytest.fixture(scope="module")
def first_training(stack) -> tuple[dict, dict]:
    """One train-lora run into the bucket from an empty cache, shared by the tests that look at
    what it made and reused (whichever of them runs first, whatever ran before)."""
    stack.empty_cache(*CACHED)
    return _train_into_bucket(stack, "ok")


def test_train_lora_runs_on_both_pools(stack, first_training):
    gpu = stack.deployment("train-lora-gpu", "train-lora-gpu")
    run, result = first_training
    assert run["work_pool_name"] == "cpu"
    assert result["billing_units"] == 100 and result["steps"] == 100
    assert result["accepted_triplets"] == 2 and result["flow_run"] == run["name"]
    assert set(result["outputs"]) == {"lora.safetensors", "config.json", "loss.png", "report.json", "validation.mp4"}
    import hashlib

    downloaded = stack.root / "downloaded"
    for name, info in result["outputs"].items():
        assert info["url"] == f"s3://{BUCKET}/outputs/ok/{name}", info
        data = stack.s3.cat_file(info["url"])
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["size"], name
        (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / name).write_bytes(data)
    from safetensors import safe_open

    with safe_open(str(downloaded / "lora.safetensors"), framework="pt") as lora:
        keys = list(lora.keys())
    assert keys and all(
        k.startswith("diffusion_model.") and k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys
    ), keys[:10]
    import av

    with av.open(str(downloaded / "validation.mp4")) as reel:
        assert reel.streams.video and len(reel.streams.audio) == 1
    report = json.loads((downloaded / "report.json").read_text())
    assert report["accepted"] == 2
    assert {row["name"]: row.get("reason") for row in report["triplets"]}["silent"] == "silent_audio"

    # The heavy half ran as its own deployment run, on the gpu pool, in another process,
    # as a child of this run (run_deployment links it through a task run of the parent).
    gpu_runs = stack.flow_runs(
        deployments={"id": {"any_": [gpu["id"]]}}, flow_runs={"name": {"any_": [f"{run['name']}-gpu"]}}
    )
    assert [r["state_type"] for r in gpu_runs] == ["COMPLETED"], [(r["name"], r["state_name"]) for r in gpu_runs]
    gpu_run = gpu_runs[0]
    assert gpu_run["work_pool_name"] == "gpu"
    assert gpu_run["infrastructure_pid"] and gpu_run["infrastructure_pid"] != run["infrastructure_pid"]
    assert gpu_run["parent_task_run_id"], "run_deployment inside a flow links the GPU run as a subflow"
    parent_task = stack.client.get(f"/task_runs/{gpu_run['parent_task_run_id']}").json()
    assert parent_task["flow_run_id"] == run["id"]

    # No shared folder: the GPU run got the bucket's URL and cache entries (names + hashes), and
    # read the conformed clips from the bucket into its own local folder; the latents it made are
    # in the bucket and on the GPU machine only; the staging area is gone after the upload.
    parameters = gpu_run["parameters"]
    assert parameters["cache_url"] == f"s3://{BUCKET}/cache" and parameters["run_id"] == run["id"]
    clips = parameters["clips"] + parameters["plan"]["validation"]["clips"]
    assert len(clips) == 3 and all(c["entry"].startswith(("conformed/", "validation/")) for c in clips), clips
    cpu_cache, gpu_cache = stack.local_cache("cpu"), stack.local_cache("gpu")
    for clip in clips:
        assert f"{BUCKET}/cache/{clip['entry']}" in stack.bucket_entries(clip["entry"].split("/")[0])
        assert (gpu_cache / clip["entry"]).is_file(), f"the GPU worker fetched {clip['entry']} from the bucket"
    assert len(_files_under(gpu_cache, "latents")) == 3 and not _files_under(cpu_cache, "latents")
    assert len(stack.bucket_entries("latents")) == 3
    assert (
        not stack.bucket_entries("runs") and not _files_under(cpu_cache, "runs") and not _files_under(gpu_cache, "runs")
    )
    assert stack.bucket_entries("prefect-results"), "Prefect's results are kept in the bucket as well"

    # The run the user started shows the work: the GPU run is named after it and linked from it,
    # and the training progress (log lines and the progress artifact) is mirrored onto it.
    assert gpu_run["name"] == f"{run['name']}-gpu"
    artifacts = {
        a["key"]: a
        for a in stack.client.post(
            "/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
        ).json()
    }
    assert gpu_run["name"] in artifacts["gpu-run"]["data"]
    assert artifacts["training-progress"]["data"] == 100.0
    outputs = artifacts["training-outputs"]["data"]
    assert outputs.count("](data:image/webp;base64,") == 1, "one preview per validation sample"
    logs = stack.flow_run_logs(run["id"], limit=200)
    assert "training: 100/100 steps" in logs and "Traceback" not in logs, logs


def test_rerun_after_cleaning_both_local_caches_reuses_the_bucket(stack, first_training):
    """Both machines lose their local cache folder between two runs with the same data: the second
    run completes, refetching from the bucket; no cache entry is recomputed or rewritten."""
    before = stack.bucket_entries(*CACHED)
    assert len(before) >= 3 + 4 + 1 + 3, sorted(
        before
    )  # checks (3 triplets), 2 clips + outcomes, 1 validation clip, latents
    for pool in ("cpu", "gpu"):
        shutil.rmtree(stack.local_cache(pool))
    run, result = _train_into_bucket(stack, "again")
    assert result["steps"] == 100 and result["accepted_triplets"] == 2
    assert stack.bucket_entries(*CACHED) == before, "every check, clip and latent came from the bucket"
    assert len(_files_under(stack.local_cache("gpu"), "latents")) == 3  # refetched, not re-encoded
    assert not stack.bucket_entries("runs")


def test_invalid_dataset_fails_with_422_message(stack):
    output = stack.root / "outputs" / "bad"
    train = stack.deployment("train-lora", "train-lora")
    gpu = stack.deployment("train-lora-gpu", "train-lora-gpu")
    gpu_runs_before = len(stack.flow_runs(deployments={"id": {"any_": [gpu["id"]]}}))
    response = stack.create_flow_run(train["id"], {"request": tiny_request(stack, "only_silent.zip", output)})
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], FAILING_RUN_S)
    assert run["state_type"] == "FAILED" and run["state_name"] == "InvalidDataset", stack.describe(run)
    message = run["state"]["message"]
    assert "422" in message and "silent_audio" in message, message
    _assert_one_clear_line(stack, run)
    assert not (output / "result.json").exists(), "an invalid dataset is never billed"
    assert len(stack.flow_runs(deployments={"id": {"any_": [gpu["id"]]}})) == gpu_runs_before, "no GPU run"


def test_not_a_zip_fails_with_invalid_dataset(stack):
    """A text file served as .zip: refused as a whole archive (also a 422, never a crash)."""
    (stack.served / "not_a.zip").write_text("this is not a zip archive\n")
    assert not zipfile.is_zipfile(stack.served / "not_a.zip")
    output = stack.root / "outputs" / "not-a-zip"
    train = stack.deployment("train-lora", "train-lora")
    response = stack.create_flow_run(train["id"], {"request": tiny_request(stack, "not_a.zip", output)})
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], FAILING_RUN_S)
    assert run["state_type"] == "FAILED" and run["state_name"] == "InvalidDataset", stack.describe(run)
    assert "422" in run["state"]["message"] and "not_a.zip is not a .zip" in run["state"]["message"]
    _assert_one_clear_line(stack, run)
    assert not (output / "result.json").exists()


def _assert_one_clear_line(stack: Stack, run: dict) -> None:
    """An expected refusal logs its state name and message once, and no traceback. The run's
    last logs reach the server after its state (the engine flushes them on exit): wait for them."""
    deadline = time.monotonic() + 20
    logs = stack.flow_run_logs(run["id"], limit=200)
    # a task's "Finished in state ..." can come first: wait for the flow's own refusal line
    while f"{run['state_name']}: " not in logs and time.monotonic() < deadline:
        time.sleep(1)
        logs = stack.flow_run_logs(run["id"], limit=200)
    assert "Traceback" not in logs and "unexpected exception" not in logs, logs
    assert f"{run['state_name']}: " in logs, logs


@pytest.mark.parametrize(
    "zip_name, overrides, state_name, text",
    [
        ("missing.zip", {}, "DownloadFailed", "HTTP 404"),
        ("sample.zip", {"model": "ltx-2.3"}, "ModelUnavailable", "diffusers/LTX-2.3-Diffusers"),
        ("sample.zip", {"resume_from": "/nowhere/checkpoint.safetensors"}, "InvalidRequest", "resume_from"),
    ],
    ids=["http-404", "model-unavailable", "resume-from-missing"],
)
def test_refusals_end_named_with_one_clear_line(stack, zip_name, overrides, state_name, text):
    output = stack.root / "outputs" / state_name
    train = stack.deployment("train-lora", "train-lora")
    started = time.monotonic()
    response = stack.create_flow_run(train["id"], {"request": tiny_request(stack, zip_name, output, **overrides)})
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], FAILING_RUN_S)
    assert run["state_type"] == "FAILED" and run["state_name"] == state_name, stack.describe(run)
    assert text in run["state"]["message"], run["state"]["message"]
    _assert_one_clear_line(stack, run)
    assert not (output / "result.json").exists(), "refused before anything was produced: billed 0"
    print(f"\n[e2e] {state_name} after {time.monotonic() - started:.1f}s")


def test_readme_python_snippet_runs_verbatim(stack):
    """The README's Python client snippet, copied as is, against the live server (after the
    `export PREFECT_API_URL=...` the README asks for)."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("From Python:", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    completed = subprocess.run(
        [sys.executable, "-c", snippet],
        cwd=stack.root,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=FAILING_RUN_S,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Traceback" not in completed.stdout + completed.stderr
    name, state_name, *_ = completed.stdout.split()
    assert state_name == "ModelUnavailable", completed.stdout  # no LTX-2.3 weights here, as expected
