"""The loaded model as one value (`Components`), its cache identity, and what the rest of lib/ may
ask of a model (`model_spec`, `to_pipeline`) without touching its classes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lib.core.cache import content_key
from lib.model.configs import MAX_SEQUENCE_LENGTH
from lib.model.lifetime import Ledger
from lib.model.parts import EXTRAS, MODULE_NAMES


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
    identity: str  # "<preset>|<seed or source>|<dtype>|cfg-<hash>": stable cache-key material
    device: torch.device
    dtype: torch.dtype
    spec: dict = field(default_factory=dict)  # model_spec, computed while every part was known
    loader: Callable[[str], Any] | None = None  # loads a released part again (lib.model.lifetime)
    ledger: Ledger = field(default_factory=Ledger)
    base_precision: str = "bf16"


def save_pretrained(components: Components, folder: str | Path) -> None:
    """Write the diffusers folder layout (model_index.json + one folder per component)."""
    to_pipeline(components).save_pretrained(str(folder))


def to_pipeline(components: Components):
    """An LTX2Pipeline over the same modules (no copies), for sampling and LoRA loading."""
    from diffusers import LTX2Pipeline

    parts = {name: getattr(components, name) for name in (*MODULE_NAMES, "tokenizer")}
    # The pipeline mutates its scheduler's timesteps while sampling; keep the components' pristine.
    return LTX2Pipeline(scheduler=copy.deepcopy(components.scheduler), **parts)


def model_spec(components: Components) -> dict:
    """Numbers the rest of the code needs, so it never has to touch the model classes."""
    return components.spec or compute_spec(components)


def compute_spec(components) -> dict:
    """`model_spec` from the parts themselves (loaded, or shells on the meta device)."""
    vae, audio_vae = components.vae, components.audio_vae
    sample_rate, hop = audio_vae.config.sample_rate, audio_vae.config.mel_hop_length
    audio_temporal = audio_vae.temporal_compression_ratio  # hard-coded 4 in the class
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
    registers = math.lcm(
        config.video_connector_num_learnable_registers or 1, config.audio_connector_num_learnable_registers or 1
    )
    length = min(MAX_SEQUENCE_LENGTH, components.tokenizer.model_max_length)
    return max(registers, length // registers * registers)


# --- identity: what a cache key needs to know about the model ---

_VOLATILE_KEYS = {"dtype", "torch_dtype", "transformers_version", "name_or_path", "architectures"}


def assemble(
    parts: dict, preset: str, origin: str, device: torch.device, dtype: torch.dtype, base_precision: str = "bf16"
) -> Components:
    """`Components` over `parts` (every part and extra, loaded or a meta shell), with its cache
    identity and `model_spec` computed from them."""
    identity = _identity(preset, origin, dtype, config_hash(parts), base_precision)
    components = Components(**parts, identity=identity, device=device, dtype=dtype, base_precision=base_precision)
    components.spec = compute_spec(components)
    return components


def _identity(preset: str, origin: str, dtype: torch.dtype, config_hash: str, base_precision: str = "bf16") -> str:
    # dtype is in it because bf16 and fp32 encodings of the same clip differ; so is a quantized
    # text encoder's precision (its prompt embeddings differ).
    quantized = "" if base_precision == "bf16" else f"|base-{base_precision}"
    return f"{preset}|{origin}|{str(dtype).removeprefix('torch.')}{quantized}|cfg-{config_hash}"


def config_hash(parts) -> str:
    """sha256 (16 hex) over every component's config, minus fields that vary with how it was loaded."""
    if isinstance(parts, Components):
        parts = {name: getattr(parts, name) for name in (*MODULE_NAMES, *EXTRAS)}
    return content_key("model-configs", "1", **{name: _describe(part) for name, part in sorted(parts.items())})[:16]


def _describe(part) -> dict:
    if hasattr(part, "get_vocab"):  # tokenizer: its vocabulary decides the prompt embeddings
        vocabulary = content_key("vocabulary", "1", tokens=sorted(part.get_vocab().items()))
        return {"class": type(part).__name__, "vocab": vocabulary, "model_max_length": part.model_max_length}
    config = part.config.to_dict() if hasattr(part.config, "to_dict") else dict(part.config)
    return {"class": type(part).__name__, "config": _stable(config)}


def _stable(value):
    # Private ("_name_or_path", "_diffusers_version") and dtype keys change on save/load, not the model.
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if not str(k).startswith("_") and k not in _VOLATILE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_stable(v) for v in value]
    return value
