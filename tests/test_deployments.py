"""Deployments: the UI form comes from the request model; the nightly schedule skips unchanged data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from prefect.utilities.callables import parameter_schema

import flows.train_lora as train_lora_module
from flows.train_lora import train_lora
from lib.core.config import TrainRequest

ROOT = Path(__file__).resolve().parents[1]


def _deployments() -> dict[str, dict]:
    return {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}


def test_form_schema_is_the_request_model():
    schema = parameter_schema(train_lora).model_dump()
    fields = schema["definitions"]["TrainRequest"]["properties"]
    assert set(fields) == set(TrainRequest.model_fields)
    for name, field in fields.items():
        assert field.get("title") and field.get("description"), name
    assert fields["rank"]["enum"] == [8, 16, 32, 64, 128]
    assert fields["resolution"]["enum"] == ["low", "medium", "high"]
    assert fields["aspect_ratio"]["enum"] == ["16:9", "1:1", "9:16"]
    assert (fields["number_of_steps"]["minimum"], fields["number_of_steps"]["maximum"]) == (100, 20000)
    assert (fields["number_of_frames"]["minimum"], fields["number_of_frames"]["maximum"]) == (9, 121)
    assert schema["definitions"]["TrainRequest"]["additionalProperties"] is False
    assert "nightly" in schema["properties"]["skip_if_unchanged"]["description"]


def test_user_facing_forms_title_every_plain_parameter_in_words():
    """Prefect titles a parameter by its Python name; the forms a user fills show words instead."""
    from flows.generate import generate
    from flows.retrain_batch import retrain_batch

    for flow_fn in (train_lora, retrain_batch, generate):
        for name, field in parameter_schema(flow_fn).model_dump()["properties"].items():
            assert field.get("title") not in (None, name) and "_" not in field["title"], (flow_fn.name, name)
            assert field.get("description"), (flow_fn.name, name)


def test_prefect_yaml_deployments():
    deployments = _deployments()
    assert {"train-lora", "train-lora-gpu", "retrain-nightly"} <= set(deployments)
    assert all(d["enforce_parameter_schema"] for d in deployments.values())
    assert deployments["train-lora"]["work_pool"]["name"] == "cpu"
    gpu = deployments["train-lora-gpu"]
    assert gpu["work_pool"]["name"] == "gpu" and gpu["concurrency_limit"] == 1
    assert "CUDA_VISIBLE_DEVICES" in gpu["work_pool"]["job_variables"]["env"]
    nightly = deployments["retrain-nightly"]
    assert nightly["schedules"][0]["cron"] and nightly["parameters"]["skip_if_unchanged"] is True
    TrainRequest(**nightly["parameters"]["request"])  # the schedule's parameters are a valid request
    batch = deployments["retrain-batch-nightly"]
    assert batch["entrypoint"] == "flows/retrain_batch.py:retrain_batch" and batch["work_pool"]["name"] == "cpu"
    assert batch["schedules"][0]["cron"] and batch["schedules"][0]["active"] is False
    assert set(batch["parameters"]) == {"manifest_url"}
    generate, generate_gpu = deployments["generate"], deployments["generate-gpu"]
    assert generate["entrypoint"] == "flows/generate.py:generate" and generate["work_pool"]["name"] == "cpu"
    assert generate_gpu["entrypoint"] == "flows/generate_gpu.py:generate_gpu"
    assert generate_gpu["work_pool"]["name"] == "gpu" and generate_gpu["concurrency_limit"] == 1
    assert {"CUDA_VISIBLE_DEVICES", "AV2AV_GPU_MEMORY_GB"} <= set(generate_gpu["work_pool"]["job_variables"]["env"])


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_nightly_run_skips_an_unchanged_dataset(tmp_path, monkeypatch):
    from lib.core.handback import TrainingGpuResult
    from lib.core.storage import FileRef
    from lib.media.synthetic import make_sample_zip

    sample_zip = make_sample_zip(tmp_path / "data" / "triplets.zip", triplets=3, duration_s=0.5)
    trainings = []

    def fake_gpu_flow(plan, clips, run_id, cache):
        staging = cache.path(f"runs/{run_id}/gpu")
        trainings.append(len(clips))
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "lora.safetensors").write_bytes(b"lora")
        return TrainingGpuResult(
            files={"lora.safetensors": FileRef.of(staging / "lora.safetensors")}, final_loss=1.0, steps=100
        )

    monkeypatch.setattr(train_lora_module, "run_gpu_flow", fake_gpu_flow)
    parameters = _deployments()["retrain-nightly"]["parameters"]
    request = TrainRequest(
        **(
            parameters["request"]
            | {
                "training_data_url": str(sample_zip),
                "model": "tiny",
                "number_of_frames": 9,
                "resolution": "low",
                "aspect_ratio": "16:9",
                "output_url": str(tmp_path / "nightly"),
            }
        )
    )
    first = train_lora(request, skip_if_unchanged=parameters["skip_if_unchanged"], return_state=True)
    assert first.is_completed() and trainings == [3]
    result = json.loads((tmp_path / "nightly" / "result.json").read_text())
    second = train_lora(request, skip_if_unchanged=True, return_state=True)
    assert second.is_completed() and "Skipped" in second.message and "unchanged" in second.message
    assert trainings == [3], "the second run must not train"
    assert json.loads((tmp_path / "nightly" / "result.json").read_text()) == result
    make_sample_zip(sample_zip, triplets=2, duration_s=0.5, include_bad=False)  # new content, same URL
    changed = train_lora(request, skip_if_unchanged=True, return_state=True)
    assert changed.is_completed() and "Skipped" not in (changed.message or "") and trainings == [3, 2]
    again = train_lora(request.model_copy(update={"rank": 8}), skip_if_unchanged=True, return_state=True)
    assert again.is_completed() and trainings == [3, 2, 2], "other parameters: a new run"
