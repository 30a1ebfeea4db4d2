"""Parity with Lightricks' reference implementation, ltx-core 1.0.0 (`make install` puts it in the
venv with --no-deps: its torchaudio requirement would pull a CUDA build): weights cross between
its models and ours in both directions, under the single-file layout, with equal outputs, and a
LoRA trained here fuses with its own LoRA loader. All on tiny models (seconds each).

ltx-core builds from a file's `config` metadata and loads non-strictly, so the key counts are
asserted here. Two of its sizes are not in the config and are patched down for the tiny preset:
the Gemma 3 widths of the text projection (`GEMMA3_CONFIG_FOR_LTX`) and the connectors' register
count (always 128). Its connectors' padding replacement only works at batch size 1.

Call conventions: ltx-core takes one `Modality` per stream with timesteps and sigma in 0..1 and
[start, end) positions; our diffusers transformer takes the same tokens and coordinates with
timesteps and sigma on 0..1000 (lib/model/conditioning.py builds them).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from lib.core.errors import ModelUnavailable
from lib.core.settings import TrainSettings
from lib.model import LTX23_CONFIG_DIR, build_tiny, check_model_source, load_model, save_single_file
from lib.model.conditioning import TIMESTEP_SCALE, build_inputs
from lib.model.configs import TINY_CONNECTORS, TINY_GEMMA_TEXT
from lib.model.single_file import (
    CONFIGS_METADATA_KEY,
    TRANSFORMER_PREFIX,
    checkpoint_version,
    config_differences,
    lightricks_config,
    to_diffusers_key,
    to_lightricks_key,
)
from lib.train.lora_io import add_lora, load_lora_state, read_lora, save_lora
from tests.training_fixtures import (
    SAME_SIZE_ALIGNED,
    fixed_draw,
    single_thread,
    synthetic_example,
    train_fresh,
    training_data,
)

__all__ = ["single_thread", "training_data"]  # fixtures, imported so pytest finds them here

LTX_CORE_MISSING = "ltx-core is not installed: `make install` installs it (pip install --no-deps ltx-core==1.0.0)"
PARTS = ("transformer", "connectors")
OTHER_PARTS = ("vae", "audio_vae", "vocoder")  # built here from our own configs only (see the report)
# The transformer section of the `config` in Lightricks' released LTX-2.3 single file.
RELEASED_23 = {
    "_class_name": "AVTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 128,
    "attention_type": "default",
    "caption_channels": 3840,
    "cross_attention_dim": 4096,
    "double_self_attention": False,
    "dropout": 0.0,
    "in_channels": 128,
    "norm_elementwise_affine": False,
    "norm_eps": 1e-06,
    "norm_num_groups": 32,
    "num_attention_heads": 32,
    "num_embeds_ada_norm": 1000,
    "num_layers": 48,
    "num_vector_embeds": None,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "out_channels": 128,
    "upcast_attention": False,
    "use_linear_projection": False,
    "qk_norm": "rms_norm",
    "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "positional_embedding_theta": 10000.0,
    "positional_embedding_max_pos": [20, 2048, 2048],
    "timestep_scale_multiplier": 1000,
    "av_ca_timestep_scale_multiplier": 1000.0,
    "causal_temporal_positioning": True,
    "audio_num_attention_heads": 32,
    "audio_attention_head_dim": 64,
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "audio_out_channels": 128,
    "audio_cross_attention_dim": 2048,
    "audio_positional_embedding_max_pos": [20],
    "av_cross_ada_norm": True,
    "use_embeddings_connector": True,
    "connector_attention_head_dim": 128,
    "connector_num_attention_heads": 32,
    "connector_num_layers": 8,
    "connector_positional_embedding_max_pos": [4096],
    "connector_num_learnable_registers": 128,
    "connector_norm_output": True,
    "use_middle_indices_grid": True,
    "apply_gated_attention": True,
    "connector_apply_gated_attention": True,
    "caption_projection_first_linear": False,
    "caption_projection_second_linear": False,
    "caption_proj_input_norm": False,
    "connector_learnable_registers_std": 1,
    "caption_proj_before_connector": True,
    "audio_connector_attention_head_dim": 64,
    "audio_connector_num_attention_heads": 32,
    "cross_attention_adaln": True,
    "text_encoder_norm_type": "per_token_rms",
    "rope_type": "split",
    "frequencies_precision": "float64",
}


@pytest.fixture(scope="module")
def ltx():
    """ltx-core's modules, its hard-coded sizes patched to the tiny preset's for this module."""
    try:  # installed by `make install`; a missing ltx-core must fail the parity tier, not skip it
        import ltx_core  # noqa: F401
    except ImportError as error:
        pytest.fail(LTX_CORE_MISSING + f" ({error})")
    from types import SimpleNamespace

    from ltx_core.guidance.perturbations import BatchedPerturbationConfig
    from ltx_core.loader.sd_ops import LTXV_LORA_COMFY_RENAMING_MAP
    from ltx_core.loader.sft_loader import SafetensorsModelStateDictLoader
    from ltx_core.loader.single_gpu_model_builder import SingleGPUModelBuilder
    from ltx_core.model.transformer.modality import Modality
    from ltx_core.model.transformer.model_configurator import LTXV_MODEL_COMFY_RENAMING_MAP, LTXModelConfigurator
    from ltx_core.text_encoders.gemma import embeddings_connector
    from ltx_core.text_encoders.gemma.config import GEMMA3_CONFIG_FOR_LTX
    from ltx_core.text_encoders.gemma.encoders import encoder_configurator

    connector_class = embeddings_connector.Embeddings1DConnector

    class TinyConnector(connector_class):
        def __init__(self, **kwargs):
            super().__init__(
                num_learnable_registers=TINY_CONNECTORS["video_connector_num_learnable_registers"], **kwargs
            )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(GEMMA3_CONFIG_FOR_LTX.text_config, "hidden_size", TINY_GEMMA_TEXT["hidden_size"])
        patch.setattr(GEMMA3_CONFIG_FOR_LTX.text_config, "num_hidden_layers", TINY_GEMMA_TEXT["num_hidden_layers"])
        patch.setattr(embeddings_connector, "Embeddings1DConnector", TinyConnector)
        yield SimpleNamespace(
            Modality=Modality,
            no_perturbations=BatchedPerturbationConfig.empty(1),
            Builder=SingleGPUModelBuilder,
            loader=SafetensorsModelStateDictLoader(),
            lora_ops=LTXV_LORA_COMFY_RENAMING_MAP,
            transformer=(LTXModelConfigurator, LTXV_MODEL_COMFY_RENAMING_MAP),
            processor=(
                encoder_configurator.EmbeddingsProcessorConfigurator,
                encoder_configurator.EMBEDDINGS_PROCESSOR_KEY_OPS,
            ),
        )


@pytest.fixture(scope="module")
def tiny():
    return build_tiny()


@pytest.fixture(scope="module")
def gemma(tiny, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma")
    tiny.text_encoder.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    return str(folder)


def _configs(components) -> dict[str, dict]:
    return {name: dict(getattr(components, name).config) for name in ("transformer", "connectors", *OTHER_PARTS)}


def _seeded(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter drawn from one seeded generator (ltx-core leaves some `torch.empty`)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, parameter in sorted(module.named_parameters()):
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return module.float().eval()


def _processor_key_in_file(key: str) -> str:
    """ltx-core's EmbeddingsProcessor key -> its name in a Lightricks file (EMBEDDINGS_PROCESSOR_KEY_OPS reversed)."""
    for inner, outer in (
        ("feature_extractor.", "text_embedding_projection."),
        ("video_connector.", f"{TRANSFORMER_PREFIX}video_embeddings_connector."),
        ("audio_connector.", f"{TRANSFORMER_PREFIX}audio_embeddings_connector."),
    ):
        if key.startswith(inner):
            return outer + key.removeprefix(inner)
    raise AssertionError(f"unexpected EmbeddingsProcessor key {key}")


def _ltx_forward(ltx, model, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Our transformer's keyword arguments as ltx-core's two Modalities."""

    def modality(prefix: str, sigma: str, coords: str) -> object:
        latent = kwargs[f"{prefix}hidden_states"]
        return ltx.Modality(
            latent=latent,
            timesteps=kwargs[f"{prefix}timestep"] / TIMESTEP_SCALE,
            sigma=kwargs[sigma] / TIMESTEP_SCALE,
            positions=kwargs[coords],
            context=kwargs[f"{prefix}encoder_hidden_states"].to(latent.dtype),
            context_mask=kwargs[f"{prefix}encoder_attention_mask"],
        )

    video = modality("", "sigma", "video_coords")
    audio = modality("audio_", "audio_sigma", "audio_coords")
    with torch.no_grad():
        return model(video, audio, ltx.no_perturbations)


def _inputs(components, seed: int = 0) -> dict:
    # Sigmas 0.5 / 0.25: exact in binary, so 0..1 and 0..1000 are the same timesteps on both sides.
    example = synthetic_example(components, seed=seed)
    _, _, video_noise, audio_noise = fixed_draw(example, seed)
    return build_inputs(
        components.transformer,
        example,
        torch.tensor(0.5),
        torch.tensor(0.25),
        video_noise,
        audio_noise,
        conditioning=SAME_SIZE_ALIGNED,
    ).kwargs


def _relative(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.float() - expected.float()).norm() / expected.float().norm()).item()


def _text_inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Gemma-like hidden states (1, T, D, layers) and a left-padded mask (batch 1: see the docstring)."""
    generator = torch.Generator().manual_seed(seed)
    length = TINY_CONNECTORS["video_connector_num_learnable_registers"] * 4
    hidden = torch.randn(
        1, length, TINY_GEMMA_TEXT["hidden_size"], TINY_GEMMA_TEXT["num_hidden_layers"] + 1, generator=generator
    )
    mask = torch.ones(1, length, dtype=torch.int64)
    mask[:, : length // 3] = 0
    return hidden, mask


# --- (i) ltx-core -> here --------------------------------------------------------------------


@pytest.mark.parity
def test_a_tiny_23_built_by_ltx_core_loads_here_strictly_with_equal_outputs(ltx, tiny, gemma, tmp_path, offline):
    configs = _configs(tiny)
    lightricks = lightricks_config(configs)
    model = _seeded(ltx.transformer[0].from_config(lightricks), seed=1)
    processor = _seeded(ltx.processor[0].from_config(lightricks), seed=2)
    tensors = {TRANSFORMER_PREFIX + key: value for key, value in model.state_dict().items()}
    tensors |= {_processor_key_in_file(key): value for key, value in processor.state_dict().items()}
    tensors |= {
        to_lightricks_key(name, key): value
        for name in OTHER_PARTS
        for key, value in getattr(tiny, name).state_dict().items()
    }
    path = tmp_path / "ltx-core-tiny.safetensors"
    save_file(
        {key: value.contiguous() for key, value in tensors.items()},
        str(path),
        metadata={
            "config": json.dumps(lightricks),
            "model_version": "2.3.0",
            CONFIGS_METADATA_KEY: json.dumps(configs, default=list),
        },
    )

    loaded = load_model("ltx-2.3", source=str(path), text_encoder_source=gemma, device="cpu", dtype=torch.float32)
    for name, module in (("transformer", model), ("connectors", processor)):
        ours = getattr(loaded, name).state_dict()
        theirs = {
            to_diffusers_key(
                name, TRANSFORMER_PREFIX + key if name == "transformer" else _processor_key_in_file(key)
            ): value
            for key, value in module.state_dict().items()
        }
        assert ours.keys() == theirs.keys(), name  # (load_strict has refused any missing or unexpected key)
        assert all(torch.equal(ours[key], theirs[key]) for key in ours), name
    assert (len(loaded.transformer.state_dict()), len(loaded.connectors.state_dict())) == (230, 38)

    kwargs = _inputs(loaded)
    with torch.no_grad():
        expected = loaded.transformer(**kwargs)
    got = _ltx_forward(ltx, model, kwargs)
    for ours, theirs in zip(expected, got):
        torch.testing.assert_close(theirs, ours, rtol=1e-6, atol=1e-6)
    hidden, mask = _text_inputs()
    with torch.no_grad():
        ours = loaded.connectors(hidden, mask)
        theirs = processor.process_hidden_states(hidden, mask)
    for mine, reference in zip(ours, theirs):
        torch.testing.assert_close(reference, mine, rtol=1e-6, atol=1e-6)


# --- (ii) here -> ltx-core --------------------------------------------------------------------


@pytest.mark.parity
def test_a_single_file_written_here_builds_completely_in_ltx_core(ltx, tiny, tmp_path):
    path = str(save_single_file(tiny, tmp_path / "tiny.safetensors"))
    with safe_open(path, framework="pt") as handle:
        keys = set(handle.keys())
    assert sum(key.startswith("text_embedding_projection.") for key in keys) == 4  # top level, as ltx-core reads it
    assert not any(key.startswith(f"{TRANSFORMER_PREFIX}text_embedding_projection") for key in keys)

    built, consumed = {}, set()
    for name, (configurator, sd_ops) in (("transformer", ltx.transformer), ("processor", ltx.processor)):
        builder = ltx.Builder(model_class_configurator=configurator, model_path=path, model_sd_ops=sd_ops)
        expected = set(builder.meta_model(builder.model_config(), ()).state_dict())
        offered = set(ltx.loader.load(path, sd_ops=sd_ops).sd)
        assert expected <= offered, f"{name}: {sorted(expected - offered)[:3]} missing"
        consumed |= {key for key in keys if sd_ops.apply_to_key(key) in expected}
        built[name] = builder.build(device=torch.device("cpu"), dtype=torch.float32).eval()
        assert not any(p.is_meta for p in built[name].parameters()), name
    ours = {key for key in keys if not key.startswith(tuple(f"{part}." for part in OTHER_PARTS))}
    assert consumed == ours and len(ours) == 230 + 38  # every transformer/connector/projection tensor, once

    kwargs = _inputs(tiny)
    with torch.no_grad():
        expected = tiny.transformer(**kwargs)
    got = _ltx_forward(ltx, built["transformer"], kwargs)
    for ours_out, theirs in zip(expected, got):
        torch.testing.assert_close(theirs, ours_out, rtol=1e-6, atol=1e-6)
    hidden, mask = _text_inputs(seed=1)
    with torch.no_grad():
        mine = tiny.connectors(hidden, mask)
        reference = built["processor"].process_hidden_states(hidden, mask)
    for left, right in zip(reference, mine):
        torch.testing.assert_close(left, right, rtol=1e-6, atol=1e-6)


def test_the_config_written_for_the_real_23_is_lightricks_own():
    shipped = {name: json.loads((LTX23_CONFIG_DIR / name / "config.json").read_text()) for name in PARTS}
    written = lightricks_config(shipped)["transformer"]
    shared = written.keys() & RELEASED_23.keys()
    assert len(shared) >= 45 and {key: written[key] for key in shared} == {key: RELEASED_23[key] for key in shared}
    assert config_differences(RELEASED_23, shipped) == {}
    assert checkpoint_version({"config": json.dumps({"transformer": RELEASED_23})})[0] == "2.3"
    resized = {**RELEASED_23, "num_layers": 40}
    assert config_differences(resized, shipped) == {"num_layers": (40, 48)}


# --- (iii) a LoRA trained here, fused by ltx-core ------------------------------------------------


@pytest.mark.parity
@pytest.mark.slow
def test_a_lora_trained_here_fuses_in_ltx_core_on_every_module(ltx, training_data, gemma, tmp_path, offline):
    rank = 8
    trained, _ = train_fresh(training_data, TrainSettings(rank=rank, steps=4, learning_rate=1e-2, seed=0))
    # ltx-core fuses into bf16 (or fp8) bases only: the base file is bf16, read by both sides.
    base = str(save_single_file(load_model("tiny", device="cpu", dtype=torch.bfloat16), tmp_path / "base.safetensors"))
    configurator, sd_ops = ltx.transformer
    plain = ltx.Builder(model_class_configurator=configurator, model_path=base, model_sd_ops=sd_ops)
    base_weights = plain.build(device=torch.device("cpu"), dtype=torch.float32).state_dict()
    kwargs = _inputs(training_data.components)
    ours_base = load_model("ltx-2.3", source=base, text_encoder_source=gemma, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        base_video = ours_base.transformer(**kwargs)[0]

    # ltx-core multiplies B @ A in the LoRA file's dtype: a bf16 file's product is rounded to bf16.
    for dtype, fused_tolerance in ((torch.float32, 1e-5), (torch.bfloat16, 2e-3)):
        lora = save_lora(trained, tmp_path / f"lora-{dtype}.safetensors", rank, {"base_model": "tiny"}, dtype=dtype)
        tensors, _ = read_lora(lora)
        modules = {
            key.removeprefix("diffusion_model.").removesuffix(".lora_A.weight")
            for key in tensors
            if key.endswith(".lora_A.weight")
        }
        # With a LoRA, ltx-core casts only the fused weights to `dtype`; the rest stay bf16 (exact in fp32).
        fused_model = plain.lora(str(lora), 1.0, ltx.lora_ops).build(device=torch.device("cpu"), dtype=torch.float32)
        fused = fused_model.float().state_dict()
        changed = {key.removesuffix(".weight") for key in fused if not torch.equal(fused[key], base_weights[key])}
        assert len(modules) == 56 and changed == modules  # every LoRA module fused, nothing else touched

        peft = copy.deepcopy(ours_base.transformer)
        add_lora(peft, rank=rank, seed=0)
        load_lora_state(peft, tensors)
        with torch.no_grad():
            expected = peft(**kwargs)
        got = _ltx_forward(ltx, fused_model.eval(), kwargs)
        for ours, theirs in zip(expected, got):
            assert _relative(theirs, ours) < fused_tolerance
        lora_effect = _relative(expected[0], base_video)
        assert lora_effect > 1e-2  # the LoRA changes the output: a fusion that dropped it would fail above

    # As an inference pipeline runs it: fused and computed in bf16, against the same LoRA computed in fp32 here.
    bf16_model = plain.lora(str(lora), 1.0, ltx.lora_ops).build(device=torch.device("cpu"), dtype=torch.bfloat16)
    bf16_kwargs = {
        key: value.to(torch.bfloat16) if key.endswith("hidden_states") else value for key, value in kwargs.items()
    }
    got = _ltx_forward(ltx, bf16_model.eval(), bf16_kwargs)
    for ours, theirs in zip(expected, got):
        assert _relative(theirs, ours) < 2e-2


# --- (iv) other LTX versions are refused by name ------------------------------------------------


def _rewritten(source: str, path, metadata: dict, keep=lambda key: True) -> str:
    with safe_open(source, framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys() if keep(key)}
    save_file(
        tensors,
        str(path),
        metadata={key: json.dumps(value) if isinstance(value, dict) else value for key, value in metadata.items()},
    )
    return str(path)


@pytest.mark.parametrize("version", ["2.0", "2.5"])
def test_a_single_file_of_another_ltx_version_is_refused_in_one_line(version, tiny, gemma, tmp_path, offline):
    single = str(save_single_file(tiny, tmp_path / "tiny.safetensors"))
    section = lightricks_config(_configs(tiny))["transformer"]
    if version == "2.0":  # no model_version; 2.0's config lacks what 2.3 added
        old = {
            key: value
            for key, value in section.items()
            if key not in ("caption_proj_before_connector", "cross_attention_adaln")
        }
        path = _rewritten(single, tmp_path / "ltx-2.safetensors", {"config": {"transformer": old}})
    else:  # 2.5 ships one file per component: this is its transformer
        metadata = {
            "config": {"transformer": {**section, "ff_bias": False}},
            "model_version": "2.5.0",
            "gemma_source_checkpoint": {"ltx_version": "2.5.0", "gemma_version": "gemma4-12b-ltx-v1"},
        }
        path = _rewritten(
            single,
            tmp_path / "ltx-2.5-transformer.safetensors",
            metadata,
            keep=lambda key: key.startswith(TRANSFORMER_PREFIX),
        )
    for attempt in (
        lambda: check_model_source("ltx-2.3", path, gemma),
        lambda: load_model("ltx-2.3", source=path, text_encoder_source=gemma, device="cpu"),
    ):
        with pytest.raises(ModelUnavailable, match=rf"is an LTX-{version} checkpoint .*needs LTX-2\.3") as refused:
            attempt()
        assert "\n" not in str(refused.value) and path in str(refused.value)


def test_a_single_file_resized_under_a_23_config_is_refused_by_key(tiny, gemma, tmp_path):
    single = str(save_single_file(tiny, tmp_path / "tiny.safetensors"))
    with safe_open(single, framework="pt") as handle:
        metadata = handle.metadata()
    config = json.loads(metadata["config"])
    config["transformer"]["num_layers"] = 3
    path = _rewritten(single, tmp_path / "resized.safetensors", {**metadata, "config": config})
    with pytest.raises(ModelUnavailable, match=r"num_layers=3 \(LTX-2.3: 2\)"):
        check_model_source("ltx-2.3", path, gemma)


def test_a_single_file_written_by_an_earlier_version_still_loads(tiny, gemma, tmp_path, offline):
    """Earlier versions wrote the text projection under model.diffusion_model. and no Lightricks metadata."""
    single = str(save_single_file(tiny, tmp_path / "tiny.safetensors"))
    with safe_open(single, framework="pt") as handle:
        tensors = {
            (TRANSFORMER_PREFIX + key if key.startswith("text_embedding_projection.") else key): handle.get_tensor(key)
            for key in handle.keys()
        }
        metadata = {CONFIGS_METADATA_KEY: handle.metadata()[CONFIGS_METADATA_KEY]}
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    loaded = load_model(
        "ltx-2.3",
        source=str(tmp_path / "old.safetensors"),
        text_encoder_source=gemma,
        device="cpu",
        dtype=torch.float32,
    )
    expected, got = tiny.connectors.state_dict(), loaded.connectors.state_dict()
    assert expected.keys() == got.keys() and all(torch.equal(expected[key], got[key]) for key in expected)
