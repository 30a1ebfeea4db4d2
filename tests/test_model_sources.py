"""Where the real weights come from: Lightricks' single-file checkpoint (written from the tiny
preset in Lightricks' key layout), the shipped 2.3 configs, and the early availability check."""

from __future__ import annotations

import json
import time

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lib.core.errors import ModelUnavailable
from lib.model import LTX23_CONFIG_DIR, build_tiny, check_model_source, load_model, save_pretrained, save_single_file
from lib.model.single_file import split_checkpoint, to_diffusers_key


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


@pytest.fixture(scope="module")
def checkpoints(tiny, tmp_path_factory):
    """The same tiny weights as a diffusers folder, and as one Lightricks file + a Gemma folder."""
    folder = tmp_path_factory.mktemp("checkpoints")
    save_pretrained(tiny, folder / "diffusers")
    single = save_single_file(tiny, folder / "ltx-2.3-tiny.safetensors")
    gemma = folder / "gemma"
    tiny.text_encoder.save_pretrained(gemma)
    tiny.tokenizer.save_pretrained(gemma)
    return {"diffusers": folder / "diffusers", "single": single, "gemma": gemma}


def test_single_file_uses_lightricks_names(checkpoints):
    with safe_open(str(checkpoints["single"]), framework="pt") as handle:
        keys = list(handle.keys())
    parts = split_checkpoint(keys)
    assert parts["unknown"] == [] and all(parts[name] for name in ("transformer", "connectors", "vae", "vocoder"))
    # names that differ between the two layouts appear in their original spelling
    for original in (
        "model.diffusion_model.adaln_single.",
        "model.diffusion_model.prompt_adaln_single.",
        "model.diffusion_model.patchify_proj.",
        "model.diffusion_model.video_embeddings_connector.",
        "text_embedding_projection.video_aggregate_embed",
        "vae.per_channel_statistics.mean-of-means",
        "vae.decoder.up_blocks.8.",
        "vae.encoder.down_blocks.8.",
        "vocoder.vocoder.ups.0.",
    ):
        assert any(key.startswith(original) for key in keys), original
    assert not any(".norm_q." in key or "time_embed" in key for key in keys if key.startswith("model."))
    assert to_diffusers_key("vae", "vae.per_channel_statistics.channel") is None  # dropped, as the script does


def test_single_file_loads_like_the_diffusers_folder(checkpoints, offline):
    from lib.model.conditioning import build_inputs
    from tests.training_fixtures import SAME_SIZE_ALIGNED, synthetic_example

    from_folder = load_model("ltx-2.3", source=checkpoints["diffusers"], device="cpu", dtype=torch.float32)
    from_file = load_model(
        "ltx-2.3",
        source=str(checkpoints["single"]),
        text_encoder_source=str(checkpoints["gemma"]),
        device="cpu",
        dtype=torch.float32,
    )
    for name in ("transformer", "connectors", "vae", "audio_vae", "vocoder", "text_encoder"):
        left, right = getattr(from_folder, name).state_dict(), getattr(from_file, name).state_dict()
        assert left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left), name
    example = synthetic_example(from_folder)
    inputs = build_inputs(
        from_folder.transformer,
        example,
        torch.tensor(0.6),
        torch.tensor(0.5),
        torch.randn(example.video_mask.numel(), 8),
        torch.randn(example.target_audio.shape[1], 16),
        conditioning=SAME_SIZE_ALIGNED,
    )
    with torch.no_grad():
        expected = from_folder.transformer(**inputs.kwargs)
        got = from_file.transformer(**inputs.kwargs)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    assert from_file.tokenizer("a cat").input_ids == from_folder.tokenizer("a cat").input_ids


@pytest.mark.slow
def test_single_file_in_bf16_and_missing_weights_refused(checkpoints, tmp_path, offline):
    loaded = load_model(
        "ltx-2.3",
        source=str(checkpoints["single"]),
        text_encoder_source=str(checkpoints["gemma"]),
        device="cpu",
        dtype=torch.bfloat16,
    )
    assert {p.dtype for p in loaded.transformer.parameters()} == {torch.bfloat16}
    with safe_open(str(checkpoints["single"]), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if "prompt_adaln_single" not in k}
    save_file(tensors, str(tmp_path / "incomplete.safetensors"))
    with pytest.raises(ModelUnavailable, match="weights missing .*prompt_adaln"):
        load_model(
            "ltx-2.3",
            source=str(tmp_path / "incomplete.safetensors"),
            text_encoder_source=str(checkpoints["gemma"]),
            device="cpu",
        )


def test_shipped_real_configs_build_the_real_sizes():
    from accelerate import init_empty_weights
    from diffusers import LTX2VideoTransformer3DModel

    config = json.loads((LTX23_CONFIG_DIR / "transformer" / "config.json").read_text())
    with init_empty_weights():
        transformer = LTX2VideoTransformer3DModel.from_config(config)
    assert round(sum(p.numel() for p in transformer.parameters()) / 1e9, 2) == 18.99


@pytest.mark.parametrize(
    "case, match",
    [
        ("missing_file", "no file at"),
        ("not_safetensors", "not a readable .safetensors"),
        ("wrong_layout", "holds no weights for transformer"),
        ("missing_gemma", "text encoder .* neither a local folder"),
        ("hub_unreachable", "neither a local folder nor in the Hugging Face cache"),
    ],
)
def test_unavailable_sources_are_refused_quickly(case, match, checkpoints, tmp_path, monkeypatch):
    monkeypatch.delenv("AV2AV_MODEL_SOURCE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: nothing downloaded before
    gemma = str(checkpoints["gemma"])
    if case == "not_safetensors":
        (tmp_path / "x.safetensors").write_text("not a checkpoint")
    if case == "wrong_layout":
        save_file({"something.weight": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    source = {
        "missing_file": str(tmp_path / "nope.safetensors"),
        "hub_unreachable": None,
        "missing_gemma": str(checkpoints["single"]),
    }.get(case, str(tmp_path / "x.safetensors"))
    if case == "missing_gemma":
        gemma = "no-such-org/no-such-gemma"
    began = time.monotonic()
    with pytest.raises(ModelUnavailable, match=match) as refused:
        check_model_source("ltx-2.3", source, gemma)
    assert time.monotonic() - began < 30
    assert "model_source" in str(refused.value)  # says how to point it elsewhere


def test_tiny_and_good_sources_pass(checkpoints):
    assert check_model_source("tiny") == "tiny"
    assert check_model_source("ltx-2.3", str(checkpoints["diffusers"])) == str(checkpoints["diffusers"])
    assert check_model_source("ltx-2.3", str(checkpoints["single"]), str(checkpoints["gemma"])).endswith(".safetensors")


def test_the_default_gemma_is_the_one_lightricks_names_and_a_single_file_without_one_asks_for_it(
    checkpoints, tmp_path, monkeypatch
):
    monkeypatch.delenv("AV2AV_TEXT_ENCODER_SOURCE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelUnavailable, match="google/gemma-3-12b-it-qat-q4_0-unquantized"):
        check_model_source("ltx-2.3", str(checkpoints["single"]), None)


@pytest.mark.parametrize(
    "base, text_encoder_weight", [("nf4", "Int8Tensor"), ("fp8", "Int8Tensor"), ("int8", "Int8Tensor")]
)
def test_the_text_encoder_is_never_quantized_below_8_bits(base, text_encoder_weight):
    components = load_model("tiny", device="cpu", base_precision=base)
    linear = next(
        module
        for name, module in components.text_encoder.named_modules()
        if "language_model.layers." in name and isinstance(module, torch.nn.Linear)
    )
    assert type(linear.weight).__name__ == text_encoder_weight
