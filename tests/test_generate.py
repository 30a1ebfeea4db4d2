"""`generate`'s refusals, fast: the request model, the LoRA file checks (header only, no model),
the inputs' rules (shared with validation samples) and the inference memory plan."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from lib.core.cache import Cache
from lib.core.errors import InvalidRequest
from lib.core.generate import GenerateRequest, generate_parameter_table, plan_generation, prompt_with_trigger
from lib.ingest.generate_inputs import InvalidGenerateInput, prepare_inputs
from lib.media.synthetic import make_box_mask, make_clip
from lib.train.lora_file import inspect_lora
from lib.train.lora_io import lora_metadata

ROOT = Path(__file__).resolve().parents[1]
INFO = {
    "base_model": "LTX-2.3 (tiny random test preset)",
    "trigger_phrase": "repl4ce",
    "reference_audio_positions": "before",
    "reference_downscale": 2,
    "base_precision": "bf16",
}


def _lora(
    path: Path, width: int = 16, rank: int = 4, module: str = "transformer_blocks.0.attn1", info: dict | None = INFO
) -> Path:
    """A LoRA file in save_lora's layout: q/k/v of one attention, `width` wide."""
    tensors = {}
    for projection in ("to_q", "to_k", "to_v"):
        key = f"diffusion_model.{module}.{projection}"
        tensors[f"{key}.lora_A.weight"] = torch.zeros(rank, width)
        tensors[f"{key}.lora_B.weight"] = torch.zeros(width, rank)
    save_file(tensors, str(path), metadata=lora_metadata(rank, info) if info is not None else {"format": "pt"})
    return path


def _request(tmp_path: Path, **fields) -> GenerateRequest:
    defaults = dict(
        lora_url=str(tmp_path / "lora.safetensors"),
        model="tiny",
        prompt="a square",
        video_url=str(tmp_path / "source.mp4"),
        mask_url=str(tmp_path / "mask.png"),
        reference_video_url=str(tmp_path / "reference.mp4"),
        number_of_frames=9,
        resolution="low",
        aspect_ratio="1:1",
    )
    return GenerateRequest(**(defaults | fields))


def test_request_model_is_the_single_source():
    request = GenerateRequest(lora_url="l", video_url="v", mask_url="m", reference_video_url="r", number_of_frames=96)
    assert request.number_of_frames == 89 and request.steps == 30 and request.sampler().video_guidance == 3.0
    with pytest.raises(ValidationError, match="lora_scale"):
        GenerateRequest(lora_url="l", video_url="v", mask_url="m", reference_video_url="r", lora_scale=5)
    with pytest.raises(ValidationError, match="reference_audio_positions"):  # read from the LoRA, never entered
        GenerateRequest(
            lora_url="l", video_url="v", mask_url="m", reference_video_url="r", reference_audio_positions="before"
        )
    table = generate_parameter_table()
    assert all(f"| `{name}` |" in table for name in GenerateRequest.model_fields)
    schema = GenerateRequest.model_json_schema()
    assert schema["additionalProperties"] is False and set(schema["required"]) == {
        "lora_url",
        "video_url",
        "mask_url",
        "reference_video_url",
    }
    assert all(prop.get("title") and prop.get("description") for prop in schema["properties"].values())


def test_form_schema_of_the_flow_is_the_request_model():
    from prefect.utilities.callables import parameter_schema

    from flows.generate import generate

    fields = parameter_schema(generate).model_dump()["definitions"]["GenerateRequest"]["properties"]
    assert set(fields) == set(GenerateRequest.model_fields)


@pytest.mark.skipif("## Use your LoRA" not in (ROOT / "README.md").read_text(), reason="README section not yet added")
def test_readme_documents_the_generate_parameters():
    assert generate_parameter_table() in (ROOT / "README.md").read_text()


def test_trigger_phrase_is_prepended_as_training_does_unless_written():
    assert prompt_with_trigger("a red car", "repl4ce") == "repl4ce a red car"
    assert prompt_with_trigger("repl4ce the square", "repl4ce") == "repl4ce the square"
    assert prompt_with_trigger("a red car", "") == "a red car"


def test_conventions_come_from_the_file(tmp_path):
    lora = inspect_lora(_lora(tmp_path / "lora.safetensors"), "lora.safetensors", "tiny", "abc")
    assert (lora.rank, lora.reference_audio_positions, lora.reference_downscale, lora.trigger_phrase) == (
        4,
        "before",
        2,
        "repl4ce",
    )
    plan = plan_generation(_request(tmp_path, prompt="a cat"), lora, "lora.safetensors")
    assert plan.conditioning.reference_audio_positions == "before" and plan.conditioning.reference_downscale == 2
    assert plan.prompt == "repl4ce a cat"


def test_config_json_beside_the_file_stands_in_for_metadata(tmp_path):
    path = _lora(tmp_path / "lora.safetensors", info=None)
    config = {
        "rank": 4,
        "alpha": 4,
        "base_model": INFO["base_model"],
        "trigger_phrase": "x",
        "reference_audio_positions": "aligned",
        "reference_downscale_factor": 1,
    }
    lora = inspect_lora(path, "lora.safetensors", "tiny", "abc", lambda: config)
    assert lora.read_from == "config.json" and lora.reference_audio_positions == "aligned"
    with pytest.raises(InvalidRequest, match="lora_url: .*no training conventions"):
        inspect_lora(path, "lora.safetensors", "tiny", "abc", lambda: None)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: _lora(p, width=32), "32-wide video stream.*16 wide"),
        (lambda p: _lora(p, module="single_transformer_blocks.0.attn"), "not a module of .*another base"),
        (lambda p: _lora(p, module="transformer_blocks.7.attn1"), "not a module of .*2 blocks"),
        (lambda p: p.write_bytes(b"\x00" * 4096) and p, "not a safetensors file"),
        (lambda p: save_file({"weight": torch.zeros(2)}, str(p)) or p, "holds no LoRA weights"),
    ],
    ids=["other-width", "other-base", "too-many-blocks", "not-safetensors", "not-a-lora"],
)
def test_a_lora_that_cannot_fit_is_refused_naming_lora_url(tmp_path, make, message):
    path = make(tmp_path / "lora.safetensors")
    with pytest.raises(InvalidRequest, match=message) as caught:
        inspect_lora(path, "lora.safetensors", "tiny", "abc")
    assert caught.value.message.startswith("lora_url: lora.safetensors")


def test_a_lora_of_another_base_model_is_refused_naming_model(tmp_path):
    with pytest.raises(InvalidRequest, match="^model: 'ltx-2.3' runs LTX-2.3, but lora_url .* \\(tiny"):
        inspect_lora(_lora(tmp_path / "lora.safetensors"), "lora.safetensors", "ltx-2.3", "abc")


@pytest.mark.slow
def test_cli_refuses_a_lora_of_another_width_with_exit_2_in_seconds(tmp_path):
    _lora(tmp_path / "lora.safetensors", width=32)
    (tmp_path / "generate.json").write_text(_request(tmp_path).model_dump_json())
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "flows.cli", "generate", "--config", str(tmp_path / "generate.json")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={
            "PATH": "/usr/bin:/bin",
            "AV2AV_CACHE_DIR": str(tmp_path / "cache"),
            "AV2AV_LOCAL_CACHE_DIR": str(tmp_path / "cache"),
            "HOME": str(tmp_path),
        },
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith("Invalid request: lora_url: ") and "32-wide" in lines[-1], done.stderr
    assert "Traceback" not in done.stderr and elapsed < 10, elapsed


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    make_clip(folder / "source.mp4", 0.5, seed=1)
    make_clip(folder / "reference.mp4", 0.5, seed=2)
    make_clip(folder / "long.mp4", 2.0, seed=3)
    make_box_mask(folder / "mask.png", (320, 180), (0.3, 0.3, 0.7, 0.7))
    make_box_mask(folder / "black.png", (320, 180), (0, 0, 0, 0))
    return folder


def test_inputs_conform_to_the_validation_clip_layout(inputs, tmp_path):
    from safetensors.numpy import load_file

    clip = prepare_inputs(_request(inputs), "repl4ce a square", Cache.at(tmp_path))
    tensors = load_file(clip.path)
    assert tensors["target"].shape == (9, 512, 512, 3) and tensors["mask"].any() and not tensors["mask"].all()
    assert abs(tensors["reference_audio"]).max() > 0.1 and not tensors["target_audio"].any()


def test_a_mask_that_selects_nothing_is_refused_like_validation(inputs, tmp_path):
    with pytest.raises(InvalidGenerateInput, match=r"422\): mask_selects_nothing: .*'black.png' selects nothing"):
        prepare_inputs(_request(inputs, mask_url=str(inputs / "black.png")), "p", Cache.at(tmp_path))


def test_a_source_longer_than_the_window_is_refused_naming_its_duration(inputs, tmp_path):
    with pytest.raises(
        InvalidGenerateInput,
        match=r"too_long: video 'long.mp4' lasts 2.00 s \(48 frames at 24 fps\)"
        r".*set number_of_frames=41",
    ):
        prepare_inputs(_request(inputs, video_url=str(inputs / "long.mp4")), "p", Cache.at(tmp_path))


def test_a_missing_input_is_a_422_naming_the_file(inputs, tmp_path):
    with pytest.raises(InvalidGenerateInput, match="422.*nowhere.mp4"):
        prepare_inputs(_request(inputs, reference_video_url=str(inputs / "nowhere.mp4")), "p", Cache.at(tmp_path))


def test_the_inference_plan_holds_each_part_only_while_needed():
    from lib.validate.inference_memory import GB, plan_generate_memory

    request = GenerateRequest(
        lora_url="l",
        video_url="v",
        mask_url="m",
        reference_video_url="r",
        model="tiny",
        resolution="low",
        number_of_frames=17,
    )
    plan = plan_generate_memory(request, rank=8, reference_downscale=2, device="cuda", gpu_memory=1)
    stages = {row.name: row.stages for row in plan.rows}
    assert stages["text_encoder"] == ("text",) and stages["transformer"] == ("sample",)
    assert stages["vae"] == ("encode", "sample") and stages["LoRA rank 8 (fp32, no gradients)"] == ("sample",)
    assert not any("grads" in name or name.startswith("activations") for name in stages), "no training rows"
    assert plan.peak == max(plan.stages.values()) and plan.fits
    assert not plan_generate_memory(request, 8, 2, "cuda", plan.peak / GB / 2).fits
    assert json.dumps(plan.as_dict())


def test_plan_takes_a_generate_config(tmp_path, capsys):
    from flows.cli import main

    _lora(tmp_path / "lora.safetensors", info=INFO | {"reference_downscale": 1})
    (tmp_path / "generate.json").write_text(_request(tmp_path).model_dump_json())
    assert main(["plan", "--config", str(tmp_path / "generate.json"), "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Memory plan (generate): tiny, bf16 base, LoRA rank 4, 512x512, 9 frames, reference 1/1")
    assert "stage peaks: text " in out and "fits in 80 GB" in out


def test_weights_the_header_check_lets_through_are_refused_before_denoising(tmp_path):
    """A tensor whose other side (here the text width of a cross-attention key) does not fit: the
    model refuses it when the LoRA is attached, as InvalidRequest naming lora_url."""
    from lib.model import build_tiny
    from lib.validate.generate import attach_lora

    key = "diffusion_model.transformer_blocks.0.attn2.to_k"  # its input is the text width, not the stream's
    path = tmp_path / "lora.safetensors"
    save_file(
        {f"{key}.lora_A.weight": torch.zeros(4, 99), f"{key}.lora_B.weight": torch.zeros(16, 4)},
        str(path),
        metadata=lora_metadata(4, INFO | {"reference_downscale": 1}),
    )
    lora = inspect_lora(path, "lora.safetensors", "tiny", "abc")
    plan = plan_generation(_request(tmp_path), lora, "lora.safetensors")
    with pytest.raises(InvalidRequest, match="^lora_url: lora.safetensors does not fit tiny's transformer"):
        attach_lora(build_tiny().transformer, path, plan)


def test_lora_scale_scales_the_attached_lora(tmp_path):
    from lib.model import build_tiny
    from lib.validate.generate import attach_lora

    path = _lora(tmp_path / "lora.safetensors", info=INFO | {"reference_downscale": 1})
    lora = inspect_lora(path, "lora.safetensors", "tiny", "abc")
    for scale in (1.0, 0.25):
        transformer = build_tiny().transformer
        attach_lora(transformer, path, plan_generation(_request(tmp_path, lora_scale=scale), lora, "lora.safetensors"))
        layer = transformer.get_submodule("transformer_blocks.0.attn1.to_q")
        assert layer.scaling["default"] == scale  # alpha = rank: the scale is the multiplier
