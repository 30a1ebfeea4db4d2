"""The whole `train-lora` flow on the tiny model: check → encode → train → validate → upload."""
from __future__ import annotations

import json

import av
import pytest
from safetensors import safe_open

import flows.train_lora as train_lora_module
from lib.config import TrainRequest
from lib.storage import sha256_file
from lib.synthetic import make_box_mask, make_clip
from lib.validation import InvalidValidationSample

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _request(sample_zip, output, validation, **overrides) -> TrainRequest:
    fields = dict(training_data_url=str(sample_zip), model="tiny", number_of_steps=100, rank=8,
                  number_of_frames=9, resolution="low", aspect_ratio="16:9", output_url=str(output),
                  validation=validation, validation_number_of_frames=9, validation_resolution="low",
                  validation_aspect_ratio="16:9", trigger_phrase="repl4ce")
    return TrainRequest(**(fields | overrides))


def test_end_to_end_outputs(sample_zip, tmp_path):
    sample = {"prompt": "repl4ce", "video_url": str(make_clip(tmp_path / "s.mp4", 0.5, seed=5)),
              "mask_url": str(make_box_mask(tmp_path / "m.png", (320, 180), (0.3, 0.3, 0.7, 0.7))),
              "reference_video_url": str(make_clip(tmp_path / "r.mp4", 0.5, seed=6))}
    result = train_lora_module.train_lora(_request(sample_zip, tmp_path / "out", [sample], validation_every=60))
    out = tmp_path / "out"
    assert json.loads((out / "result.json").read_text()) == result
    assert result["billing_units"] == 100 and result["steps"] == 100
    assert set(result["outputs"]) == {"lora.safetensors", "config.json", "loss.png", "validation.mp4",
                                      "validation-step000060.mp4", "report.json"}
    for name, info in result["outputs"].items():
        assert sha256_file(out / name) == info["sha256"]
    with safe_open(str(out / "lora.safetensors"), framework="pt") as lora:
        assert all(k.startswith("diffusion_model.") and ".lora_" in k for k in lora.keys())
    config = json.loads((out / "config.json").read_text())
    assert config["training_type"] == "av2av-masked" and config["trigger_phrase"] == "repl4ce"
    assert config["reference_audio_positions"] == "aligned" and config["request"]["rank"] == 8
    assert config["reference_downscale_factor"] == 2 and config["lora_dtype"] == "bf16"
    with av.open(str(out / "validation.mp4")) as reel:
        assert reel.streams.video[0].width == 4 * 512 and len(reel.streams.audio) == 1


def test_bad_validation_sample_fails_before_training(sample_zip, tmp_path, media, monkeypatch):
    trained = []
    monkeypatch.setattr(train_lora_module, "run_gpu_flow", lambda *a, **k: trained.append(a))
    sample = {"prompt": "p", "video_url": str(media / "h264_aac_854x480_25fps_9s_editlist.mp4"),
              "mask_url": str(media / "masks" / "runningcar_mask_square_432x240.png"),
              "reference_video_url": str(media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4")}
    with pytest.raises(InvalidValidationSample, match="422"):
        train_lora_module.train_lora(_request(sample_zip, tmp_path / "out", [sample]))
    assert trained == [], "the GPU flow must never be reached"
    assert not (tmp_path / "out" / "result.json").exists(), "no result, so nothing is billed"
