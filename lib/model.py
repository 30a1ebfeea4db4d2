"""LTX-2.3 components: the only module that builds or loads them (tests/test_layering.py checks).

Two presets share every class and code path: `ltx-2.3` loads a diffusers-format folder or hub id,
`tiny` builds the same classes with random weights small enough for CPU tests. Everything else
in lib/ takes a `Components` and reads the numbers it needs from `model_spec`.
Verified facts behind the tiny configs: shared/notes/ltx23-diffusers-facts.md.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

PRESETS = ("tiny", "ltx-2.3")
DEFAULT_LTX23_SOURCE = "diffusers/LTX-2.3-Diffusers"
SOURCE_ENV = "AV2AV_LTX23_PATH"
MAX_SEQUENCE_LENGTH = 1024          # LTX2Pipeline's default prompt length
TINY_MAX_SEQUENCE_LENGTH = 32       # a multiple of the tiny connectors' 8 registers; keeps tests cheap
MODULE_NAMES = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder")
# What makes a transformer 2.3 rather than 2.0 (facts note); checked when loading a folder.
LTX23_FLAGS = dict(gated_attn=True, audio_gated_attn=True, cross_attn_mod=True, audio_cross_attn_mod=True,
                   use_prompt_embeddings=False, perturbed_attn=True, rope_type="split")

# --- tiny configs: the facts note's, which satisfy its shape rules (widths, registers, BWE) ---
TINY_TRANSFORMER = dict(
    in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
    num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16,
    vae_scale_factors=(8, 32, 32), pos_embed_max_pos=20, base_height=2048, base_width=2048,
    audio_in_channels=16, audio_out_channels=16, audio_patch_size=1, audio_patch_size_t=1,
    audio_num_attention_heads=2, audio_attention_head_dim=8, audio_cross_attention_dim=16,
    audio_scale_factor=4, audio_pos_embed_max_pos=20, audio_sampling_rate=16000, audio_hop_length=160,
    num_layers=2, activation_fn="gelu-approximate", qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False, norm_eps=1e-6, caption_channels=32, attention_bias=True,
    attention_out_bias=True, rope_theta=10000.0, rope_double_precision=True, causal_offset=1,
    timestep_scale_multiplier=1000, cross_attn_timestep_scale_multiplier=1000, **LTX23_FLAGS)
TINY_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 16, 32, 32),
    down_block_types=("LTX2VideoDownBlock3D",) * 4, decoder_block_out_channels=(8, 16, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True,) * 4, decoder_spatio_temporal_scaling=(True,) * 4,
    decoder_inject_noise=(False,) * 5,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
    upsample_residual=(False,) * 4, upsample_factor=(2, 2, 1, 2), timestep_conditioning=False,
    patch_size=4, patch_size_t=1, resnet_norm_eps=1e-6, encoder_causal=True, decoder_causal=False,
    encoder_spatial_padding_mode="zeros", decoder_spatial_padding_mode="zeros",
    # Must be explicit: the class would derive 64/16 from the scaling flags (facts note, gotcha 1).
    spatial_compression_ratio=32, temporal_compression_ratio=8)
TINY_AUDIO_VAE = dict(
    base_channels=16, output_channels=2, ch_mult=(1, 2, 4), num_res_blocks=1, attn_resolutions=None,
    in_channels=2, resolution=256, latent_channels=4, norm_type="pixel", causality_axis="height",
    dropout=0.0, mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True,
    mel_bins=16, double_z=True)
TINY_VOCODER = dict(
    in_channels=32, hidden_channels=64, out_channels=2, upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
    upsample_factors=[5, 2, 2, 2, 2, 2], resnet_kernel_sizes=[3], resnet_dilations=[[1]],
    act_fn="snakebeta", antialias=True, antialias_ratio=2, antialias_kernel_size=12, final_act_fn=None,
    final_bias=False, bwe_in_channels=32, bwe_hidden_channels=32, bwe_out_channels=2,
    bwe_upsample_kernel_sizes=[12, 11, 4, 4, 4], bwe_upsample_factors=[6, 5, 2, 2, 2],
    bwe_resnet_kernel_sizes=[3], bwe_resnet_dilations=[[1]], bwe_act_fn="snakebeta", bwe_antialias=True,
    bwe_final_act_fn=None, bwe_final_bias=False, filter_length=512, hop_length=80, window_length=512,
    num_mel_channels=16, input_sampling_rate=16000, output_sampling_rate=48000)
TINY_CONNECTORS = dict(
    caption_channels=32, text_proj_in_factor=3,   # Gemma hidden_size, num_hidden_layers + 1
    video_connector_num_attention_heads=2, video_connector_attention_head_dim=8,
    video_connector_num_layers=1, video_connector_num_learnable_registers=8, video_gated_attn=True,
    audio_connector_num_attention_heads=2, audio_connector_attention_head_dim=8,
    audio_connector_num_layers=1, audio_connector_num_learnable_registers=8, audio_gated_attn=True,
    connector_rope_base_seq_len=4096, rope_theta=10000.0, rope_double_precision=True,
    causal_temporal_positioning=False, rope_type="split", per_modality_projections=True,
    video_hidden_dim=16, audio_hidden_dim=16, proj_bias=True)
TINY_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
    base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1, time_shift_type="exponential")
TINY_GEMMA_TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=16, max_position_embeddings=256, sliding_window=16,
                       pad_token_id=0)
# Gemma3ForConditionalGeneration insists on a vision tower even for text (gotcha 12).
TINY_GEMMA_VISION = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         image_size=28, patch_size=14)
TINY_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
                 "<start_of_image>", "<end_of_image>", "<image_soft_token>")


@dataclass
class Components:
    transformer: Any
    vae: Any
    audio_vae: Any
    vocoder: Any
    connectors: Any
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    identity: str   # "<preset>|<seed or source>|<dtype>|cfg-<hash>": stable cache-key material
    device: torch.device
    dtype: torch.dtype


def build_tiny(seed: int = 0) -> Components:
    """Every 2.3 class with tiny random weights (fp32, CPU, eval). Same seed, same weights."""
    from diffusers import (AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video,
                           FlowMatchEulerDiscreteScheduler, LTX2VideoTransformer3DModel)
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    builders = dict(
        transformer=lambda: LTX2VideoTransformer3DModel(**TINY_TRANSFORMER),
        vae=lambda: AutoencoderKLLTX2Video(**TINY_VAE),
        audio_vae=lambda: AutoencoderKLLTX2Audio(**TINY_AUDIO_VAE),
        vocoder=lambda: LTX2VocoderWithBWE(**TINY_VOCODER),
        connectors=lambda: LTX2TextConnectors(**TINY_CONNECTORS),
        text_encoder=_tiny_text_encoder)
    parts = {}
    # Each part gets its own seed so one part's weights don't depend on how the others were built;
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        for index, (name, build) in enumerate(builders.items()):
            torch.manual_seed(seed * 1000 + index)
            parts[name] = build().eval()
        _randomize_latent_stats(parts["vae"], parts["audio_vae"])
    parts["tokenizer"] = _tiny_tokenizer()
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(**TINY_SCHEDULER)
    return _with_identity(parts, "tiny", f"seed{seed}", torch.device("cpu"), torch.float32)


def _tiny_text_encoder():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    config = Gemma3Config(text_config=dict(vocab_size=len(_tiny_vocab()), **TINY_GEMMA_TEXT),
                          vision_config=TINY_GEMMA_VISION, mm_tokens_per_image=4,
                          boi_token_index=5, eoi_token_index=6, image_token_index=7)
    return Gemma3ForConditionalGeneration(config)


def _tiny_vocab() -> dict[str, int]:
    # Specials, then byte fallback for anything, then "▁" and a-z so plain words stay short.
    tokens = [*TINY_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), "▁",
              *"abcdefghijklmnopqrstuvwxyz"]
    return {token: index for index, token in enumerate(tokens)}


def _tiny_tokenizer():
    from transformers import GemmaTokenizer

    tokenizer = GemmaTokenizer(vocab=_tiny_vocab(), merges=[])
    # model_max_length travels with the saved tokenizer; model_spec reads it for the prompt length.
    tokenizer.model_max_length = TINY_MAX_SEQUENCE_LENGTH
    return tokenizer


def _randomize_latent_stats(vae, audio_vae) -> None:
    # Real checkpoints carry dataset statistics; the classes default to mean 0 / std 1, which would
    # let a missing or misplaced normalization pass every test. Make them non-trivial.
    for module in (vae, audio_vae):
        size = module.latents_mean.shape
        module.latents_mean.copy_(0.1 * torch.randn(size))
        module.latents_std.copy_(0.75 + 0.5 * torch.rand(size))


def load_pretrained(source: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.bfloat16) -> Components:
    """Load a diffusers-format LTX-2.3 folder or hub id: the path the real weights take."""
    from diffusers import LTX2Pipeline, LTX2VideoTransformer3DModel

    source = str(Path(source).resolve()) if Path(source).is_dir() else str(source)
    # Read the small config first: a 2.0 checkpoint should fail before tens of GB are loaded.
    _check_is_23(LTX2VideoTransformer3DModel.load_config(source, subfolder="transformer"), source)
    pipe = LTX2Pipeline.from_pretrained(source, dtype=dtype)
    parts = {name: getattr(pipe, name) for name in (*MODULE_NAMES, "tokenizer", "scheduler")}
    for name in MODULE_NAMES:
        parts[name].to(device=device).eval()
    return _with_identity(parts, "ltx-2.3", source, torch.device(device), dtype)


def _check_is_23(config, source: str) -> None:
    # A 2.0 checkpoint loads into the same classes but trains and samples differently.
    wrong = {k: config.get(k) for k, v in LTX23_FLAGS.items() if config.get(k) != v}
    if wrong:
        raise ValueError(f"{source} is not an LTX-2.3 transformer; these flags differ: {wrong}")


def save_pretrained(components: Components, folder: str | Path) -> None:
    """Write the diffusers folder layout (model_index.json + one folder per component)."""
    to_pipeline(components).save_pretrained(str(folder))


def load_model(model: str, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               source: str | Path | None = None) -> Components:
    """Preset name -> components on `device` (cuda if there is one) in `dtype` (bf16 on cuda, else fp32)."""
    if model not in PRESETS:
        raise ValueError(f"unknown model {model!r}; choose one of {PRESETS}")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if model == "ltx-2.3":
        return load_pretrained(source or os.environ.get(SOURCE_ENV) or DEFAULT_LTX23_SOURCE, device, dtype)
    tiny = build_tiny()
    if (device, dtype) == (tiny.device, tiny.dtype):
        return tiny
    for name in MODULE_NAMES:
        getattr(tiny, name).to(device=device, dtype=dtype)
    identity = _identity("tiny", tiny.identity.split("|")[1], dtype, config_hash(tiny))
    return dataclasses.replace(tiny, device=device, dtype=dtype, identity=identity)


def to_pipeline(components: Components):
    """An LTX2Pipeline over the same modules (no copies), for sampling and LoRA loading."""
    from diffusers import LTX2Pipeline

    parts = {name: getattr(components, name) for name in (*MODULE_NAMES, "tokenizer")}
    # The pipeline mutates its scheduler's timesteps while sampling; keep the components' pristine.
    return LTX2Pipeline(scheduler=copy.deepcopy(components.scheduler), **parts)


def model_spec(components: Components) -> dict:
    """Numbers the rest of the code needs, so it never has to touch the model classes."""
    vae, audio_vae = components.vae, components.audio_vae
    sample_rate, hop = audio_vae.config.sample_rate, audio_vae.config.mel_hop_length
    audio_temporal = audio_vae.temporal_compression_ratio   # hard-coded 4 in the class
    mel_bins = audio_vae.config.mel_bins
    return dict(
        video_latent_channels=vae.config.latent_channels,
        spatial_compression=vae.spatial_compression_ratio,
        temporal_compression=vae.temporal_compression_ratio,
        audio_latent_channels=audio_vae.config.latent_channels,
        mel_bins=mel_bins,
        audio_latent_mel_bins=mel_bins // audio_vae.mel_compression_ratio,
        audio_temporal_compression=audio_temporal,
        audio_sample_rate=sample_rate,
        audio_hop_length=hop,
        audio_latents_per_second=sample_rate / hop / audio_temporal,
        vocoder_sample_rate=components.vocoder.config.output_sampling_rate,
        num_layers=components.transformer.config.num_layers,
        max_sequence_length=_max_sequence_length(components),
    )


def _max_sequence_length(components: Components) -> int:
    # The connectors replace padding with learnable registers and need length % registers == 0.
    config = components.connectors.config
    registers = math.lcm(config.video_connector_num_learnable_registers or 1,
                         config.audio_connector_num_learnable_registers or 1)
    length = min(MAX_SEQUENCE_LENGTH, components.tokenizer.model_max_length)
    return max(registers, length // registers * registers)


# --- identity: what a cache key needs to know about the model ---

_VOLATILE_KEYS = {"dtype", "torch_dtype", "transformers_version", "name_or_path", "architectures"}


def _with_identity(parts: dict, preset: str, origin: str, device: torch.device,
                   dtype: torch.dtype) -> Components:
    identity = _identity(preset, origin, dtype, config_hash(parts))
    return Components(**parts, identity=identity, device=device, dtype=dtype)


def _identity(preset: str, origin: str, dtype: torch.dtype, config_hash: str) -> str:
    # dtype is in it because bf16 and fp32 encodings of the same clip differ.
    return f"{preset}|{origin}|{str(dtype).removeprefix('torch.')}|cfg-{config_hash}"


def config_hash(parts) -> str:
    """sha256 (16 hex) over every component's config, minus fields that vary with how it was loaded."""
    if isinstance(parts, Components):
        parts = {name: getattr(parts, name) for name in (*MODULE_NAMES, "tokenizer", "scheduler")}
    payload = {name: _describe(part) for name, part in sorted(parts.items())}
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _describe(part) -> dict:
    if hasattr(part, "get_vocab"):   # tokenizer: its vocabulary decides the prompt embeddings
        vocab = json.dumps(sorted(part.get_vocab().items()))
        return {"class": type(part).__name__, "vocab": hashlib.sha256(vocab.encode()).hexdigest(),
                "model_max_length": part.model_max_length}
    config = part.config.to_dict() if hasattr(part.config, "to_dict") else dict(part.config)
    return {"class": type(part).__name__, "config": _stable(config)}


def _stable(value):
    # Private ("_name_or_path", "_diffusers_version") and dtype keys change on save/load, not the model.
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()
                if not str(k).startswith("_") and k not in _VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value
