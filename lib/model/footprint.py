"""What the model weighs, counted on the meta device (no weights, no download, seconds):
parameters per part and the share the base precision quantizes. `build_on_meta` is also what
lib.train.footprint counts a training step's activations and FLOPs on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from lib.model.configs import LTX23_CONFIG_DIR
from lib.model.quantize import TEXT_ENCODER_QUANTIZED, TRANSFORMER_QUANTIZED

PARTS = ("transformer", "connectors", "text_encoder", "vae", "audio_vae", "vocoder")


@dataclass(frozen=True)
class PartCount:
    parameters: int
    quantizable: int = 0  # weights of the Linear layers base_precision quantizes
    quantizable_rows: int = 0  # their output rows (one scale each for int8 / fp8)


def architecture_configs(model: str) -> dict:
    from transformers import Gemma3Config

    from lib.model import configs as tiny

    if model == "tiny":
        return {
            "transformer": tiny.TINY_TRANSFORMER,
            "connectors": tiny.TINY_CONNECTORS,
            "vae": tiny.TINY_VAE,
            "audio_vae": tiny.TINY_AUDIO_VAE,
            "vocoder": tiny.TINY_VOCODER,
            "text_encoder": None,
        }
    found = {name: json.loads((LTX23_CONFIG_DIR / name / "config.json").read_text()) for name in PARTS}
    gemma = {k: v for k, v in found["text_encoder"].items() if k not in ("architectures", "model_type")}
    found["text_encoder"] = Gemma3Config(**gemma)
    return found


def build_on_meta(model: str, name: str, **overrides) -> torch.nn.Module:
    from lib.model.components import _tiny_text_encoder
    from lib.model.parts import classes, fuse_rms_norms

    config = architecture_configs(model)[name]
    with torch.device("meta"):
        if name == "text_encoder":
            from transformers import Gemma3ForConditionalGeneration

            return _tiny_text_encoder() if config is None else Gemma3ForConditionalGeneration(config)
        module = classes()[name].from_config({**config, **overrides})
    return fuse_rms_norms(module) if name == "transformer" else module  # as `place` trains it


def count_parts(model: str) -> dict[str, PartCount]:
    """Parameters of every part of `model` ("tiny" or "ltx-2.3")."""
    return {name: _count(model, name) for name in PARTS}


def _count(model: str, name: str) -> PartCount:
    if name != "transformer":
        return _count_module(build_on_meta(model, name), name)
    # 48 identical blocks: count one and two and extrapolate (building all 48 on meta takes ~10 s)
    layers = architecture_configs(model)["transformer"]["num_layers"]
    one = _count_module(build_on_meta(model, name, num_layers=1), name)
    return PartCount(*(a + (layers - 1) * b for a, b in zip(_fields(one), _fields(count_block(model)))))


def count_block(model: str) -> PartCount:
    """One transformer block: a two-block model's count less a one-block model's."""
    one, two = (_count_module(build_on_meta(model, "transformer", num_layers=n), "transformer") for n in (1, 2))
    return PartCount(*(b - a for a, b in zip(_fields(one), _fields(two))))


def _fields(count: PartCount) -> tuple[int, int, int]:
    return count.parameters, count.quantizable, count.quantizable_rows


def _count_module(module: torch.nn.Module, name: str) -> PartCount:
    prefix = {"transformer": TRANSFORMER_QUANTIZED, "text_encoder": TEXT_ENCODER_QUANTIZED}.get(name)
    linears = [
        child
        for qualified, child in module.named_modules()
        if prefix and type(child) is torch.nn.Linear and prefix in f"{qualified}."
    ]
    return PartCount(
        parameters=sum(p.numel() for p in module.parameters()),
        quantizable=sum(child.weight.numel() for child in linears),
        quantizable_rows=sum(child.out_features for child in linears),
    )
