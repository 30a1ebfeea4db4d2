"""`retrain-batch` end to end, on the stack of tests/e2e_stack.py (its own data and outputs: it
runs before or after the other e2e files): a manifest of three LoRAs (one
with a bad request) served over loopback; the changed entries train as `train-lora` runs through
the deployment (CPU pool, then the GPU pool, one GPU run at a time); a rerun skips what did not
change; changing one dataset retrains exactly that one."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from tests.e2e_helpers import BUCKET
from tests.e2e_stack import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

BATCH_RUN_S = 900  # two tiny trainings, one GPU at a time, on 2 slow cores


def _manifest(stack: Stack) -> str:
    from lib.media.synthetic import make_sample_zip

    make_sample_zip(stack.served / "batch_anna.zip", triplets=2, include_bad=False)
    make_sample_zip(stack.served / "batch_smoke.zip", triplets=2, include_bad=False, duration_s=1.2)
    defaults = {
        "model": "tiny",
        "number_of_steps": 100,
        "rank": 8,
        "number_of_frames": 9,
        "resolution": "low",
        "aspect_ratio": "16:9",
        "trigger_phrase": "repl4ce",
    }
    entries = [
        {"name": "anna", "request": {"training_data_url": f"{stack.base_url}/batch_anna.zip"}},
        {"name": "smoke", "request": {"training_data_url": f"{stack.base_url}/batch_smoke.zip"}},
        {"name": "broken", "request": {"training_data_url": f"{stack.base_url}/batch_anna.zip", "rank": 12}},
    ]
    (stack.served / "manifest.json").write_text(
        json.dumps({"output_url": f"s3://{BUCKET}/batch", "defaults": defaults, "entries": entries})
    )
    return f"{stack.base_url}/manifest.json"


def _run_batch(stack: Stack, manifest_url: str) -> tuple[dict, dict[str, dict]]:
    """One retrain-batch run over REST: (the run, its summary rows by entry)."""
    import time

    batch = stack.deployment("retrain-batch", "retrain-batch-nightly")
    started = time.monotonic()
    response = stack.create_flow_run(batch["id"], {"manifest_url": manifest_url})
    assert response.status_code == 201, response.text
    run = stack.wait_flow_run(response.json()["id"], BATCH_RUN_S)
    print(f"\n[e2e] retrain-batch run {run['name']}: {run['state_type']} after {time.monotonic() - started:.1f}s")
    artifacts = stack.client.post(
        "/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run["id"]]}, "key": {"any_": ["batch-summary"]}}},
    ).json()
    assert len(artifacts) == 1, stack.describe(run)
    data = artifacts[0]["data"]
    rows = json.loads(data) if isinstance(data, str) else data
    return run, {row["entry"]: row for row in rows}


def _train_runs(stack: Stack) -> list[dict]:
    train = stack.deployment("train-lora", "train-lora")
    return stack.flow_runs(deployments={"id": {"any_": [train["id"]]}})


def _interval(run: dict) -> tuple[datetime, datetime]:
    return (datetime.fromisoformat(run["start_time"]), datetime.fromisoformat(run["end_time"]))


def test_batch_trains_changed_entries_only(stack):
    manifest_url = _manifest(stack)
    today = f"{datetime.now(timezone.utc):%Y-%m-%d}"
    runs_before = {r["id"] for r in _train_runs(stack)}

    run, rows = _run_batch(stack, manifest_url)
    assert run["state_type"] == "FAILED", stack.describe(run)
    assert "broken: invalid: rank" in run["state"]["message"], run["state"]["message"]
    assert {e: r["status"] for e, r in rows.items()} == {"anna": "trained", "smoke": "trained", "broken": "invalid"}
    assert rows["anna"]["child_run"] == f"nightly-anna-{today}" and rows["anna"]["billing_units"] == 100
    assert rows["smoke"]["output"] == f"s3://{BUCKET}/batch/smoke" and rows["broken"]["billing_units"] == 0
    for entry in ("anna", "smoke"):
        assert stack.s3.exists(f"{BUCKET}/batch/{entry}/lora.safetensors"), entry
    children = [r for r in _train_runs(stack) if r["id"] not in runs_before]
    assert sorted(r["name"] for r in children) == [f"nightly-anna-{today}", f"nightly-smoke-{today}"]
    assert {r["state_type"] for r in children} == {"COMPLETED"}
    # The GPU deployment's concurrency limit of 1: the two trainings never overlap.
    gpu_runs = stack.flow_runs(flow_runs={"name": {"any_": [f"{r['name']}-gpu" for r in children]}})
    first, second = sorted(_interval(r) for r in gpu_runs)
    assert len(gpu_runs) == 2 and first[1] <= second[0], [(r["name"], _interval(r)) for r in gpu_runs]
    print(f"[e2e] GPU runs {first[0]:%H:%M:%S}-{first[1]:%H:%M:%S} and {second[0]:%H:%M:%S}-{second[1]:%H:%M:%S}")

    runs_before = {r["id"] for r in _train_runs(stack)}
    run, rows = _run_batch(stack, manifest_url)  # nothing changed
    assert {e: r["status"] for e, r in rows.items()} == {
        "anna": "skipped-unchanged",
        "smoke": "skipped-unchanged",
        "broken": "invalid",
    }
    assert sum(r["billing_units"] for r in rows.values()) == 0
    assert {r["id"] for r in _train_runs(stack)} == runs_before, "nothing trained"

    from lib.media.synthetic import make_sample_zip

    make_sample_zip(stack.served / "batch_smoke.zip", triplets=3, include_bad=False)  # new data for one
    run, rows = _run_batch(stack, manifest_url)
    assert {e: r["status"] for e, r in rows.items()} == {
        "anna": "skipped-unchanged",
        "smoke": "trained",
        "broken": "invalid",
    }
    assert [r["name"] for r in _train_runs(stack) if r["id"] not in runs_before] == [f"nightly-smoke-{today}"]
