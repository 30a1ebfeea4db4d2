"""The whole `train-lora` flow on the tiny model: check → encode → train → validate → upload."""

from __future__ import annotations

import json

import av
import pytest
from safetensors import safe_open

import flows.train_lora as train_lora_module
from lib.core.config import TrainRequest
from lib.core.storage import sha256_file
from lib.ingest.validation import InvalidValidationSample
from lib.media.synthetic import make_box_mask, make_clip

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _request(sample_zip, output, validation, **overrides) -> TrainRequest:
    fields = dict(
        training_data_url=str(sample_zip),
        model="tiny",
        number_of_steps=100,
        rank=8,
        number_of_frames=9,
        resolution="low",
        aspect_ratio="16:9",
        output_url=str(output),
        validation=validation,
        validation_number_of_frames=9,
        validation_resolution="low",
        validation_aspect_ratio="16:9",
        trigger_phrase="repl4ce",
        validation_steps=4,
    )
    return TrainRequest(**(fields | overrides))


@pytest.mark.slow
def test_end_to_end_outputs(sample_zip, tmp_path):
    sample = {
        "prompt": "repl4ce",
        "video_url": str(make_clip(tmp_path / "s.mp4", 0.5, seed=5)),
        "mask_url": str(make_box_mask(tmp_path / "m.png", (320, 180), (0.3, 0.3, 0.7, 0.7))),
        "reference_video_url": str(make_clip(tmp_path / "r.mp4", 0.5, seed=6)),
    }
    state = train_lora_module.train_lora(
        _request(sample_zip, tmp_path / "out", [sample, sample], validation_every=60), return_state=True
    )
    result = state.result()
    out = tmp_path / "out"
    assert json.loads((out / "result.json").read_text()) == result
    assert result["billing_units"] == 100 and result["steps"] == 100
    assert set(result["outputs"]) == {
        "lora.safetensors",
        "config.json",
        "loss.png",
        "validation.mp4",
        "validation-step000060.mp4",
        "report.json",
    }
    for name, info in result["outputs"].items():
        assert sha256_file(out / name) == info["sha256"]
    with safe_open(str(out / "lora.safetensors"), framework="pt") as lora:
        assert all(k.startswith("diffusion_model.") and ".lora_" in k for k in lora.keys())
    config = json.loads((out / "config.json").read_text())
    assert config["training_type"] == "av2av-masked" and config["trigger_phrase"] == "repl4ce"
    assert config["reference_audio_positions"] == "aligned" and config["request"]["rank"] == 8
    assert config["reference_downscale_factor"] == 1 and config["lora_dtype"] == "bf16"  # 512x288 has no exact half
    with av.open(str(out / "validation.mp4")) as reel:
        assert reel.streams.video[0].width == 4 * 512 and len(reel.streams.audio) == 1
    _check_what_the_user_run_shows(state.state_details.flow_run_id, samples=2)


def _logs(client, run_id, log_filter, expected: str, timeout_s: float = 20.0) -> list[str]:
    """The run's log messages; logs reach the server in batches, so wait for `expected` to arrive."""
    import time

    from prefect.client.schemas.sorting import LogSort

    deadline = time.monotonic() + timeout_s
    while True:  # the newest 200 (the API's limit): the training lines come late in the run
        logs = [log.message for log in client.read_logs(log_filter=log_filter, limit=200, sort=LogSort.TIMESTAMP_DESC)]
        if any(expected in line for line in logs) or time.monotonic() > deadline:
            return logs
        time.sleep(0.5)


def _check_what_the_user_run_shows(run_id, samples: int) -> None:
    """The run the user started: a preview per validation sample and only links that open, the
    training progress and a link to its GPU sub-run (named after it), and the step/loss lines."""
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        artifacts = {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        }
        parent = client.read_flow_run(run_id)
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[run_id]))
        )
        logs = _logs(
            client, run_id, LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), "training: 100/100 steps"
        )
    outputs = artifacts["training-outputs"].data
    assert outputs.count("](data:image/webp;base64,") == samples
    assert outputs.count("](data:image/png;base64,") == 1  # the loss curve
    targets = re.findall(r"\]\(([^)]+)\)", outputs)
    assert all(t.startswith(("http://", "https://", "data:image/")) for t in targets), targets
    assert artifacts["training-progress"].data == 100.0
    assert [child.name for child in children] == [f"{parent.name}-gpu"]
    assert children[0].name in artifacts["gpu-run"].data
    assert any(re.match(r"training: 100/100 steps loss [0-9.]+", line) for line in logs), logs[-20:]
    assert any(line.startswith("loaded the model's transformer: ") for line in logs), logs  # mirrored from the GPU run


def test_bad_validation_sample_fails_before_training(sample_zip, tmp_path, media, monkeypatch):
    trained = []
    monkeypatch.setattr(train_lora_module, "run_gpu_flow", lambda *a, **k: trained.append(a))
    sample = {
        "prompt": "p",
        "video_url": str(media / "h264_aac_854x480_25fps_9s_editlist.mp4"),
        "mask_url": str(media / "masks" / "runningcar_mask_square_432x240.png"),
        "reference_video_url": str(media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4"),
    }
    with pytest.raises(InvalidValidationSample, match="422"):
        train_lora_module.train_lora(_request(sample_zip, tmp_path / "out", [sample]))
    assert trained == [], "the GPU flow must never be reached"
    assert not (tmp_path / "out" / "result.json").exists(), "no result, so nothing is billed"
