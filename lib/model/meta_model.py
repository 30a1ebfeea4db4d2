"""The model built on the meta device from its configs (no weights, no download, seconds), and
its parameters counted per part with the share the base precision quantizes (what
lib/train/memory_plan.py turns into bytes). `build_on_meta` is also what lib/train/step_cost.py
counts a training step's activations and FLOPs on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.model.configs import part_config
from lib.model.fused_norm import fuse_rms_norms
from lib.model.parts import MODULE_NAMES, TEXT_ENCODER, build
from lib.model.quantize import TEXT_ENCODER_QUANTIZED, TRANSFORMER_QUANTIZED


@dataclass(frozen=True)
class PartCount:
    parameters: int
    quantizable: int = 0  # weights of the Linear layers base_precision quantizes
    quantizable_rows: int = 0  # their output rows (one scale each for int8 / fp8)


def build_on_meta(model: str, name: str, **overrides) -> torch.nn.Module:
    """Part `name` of `model` ("tiny" or "ltx-2.3") on the meta device, its config changed by
    `overrides` (e.g. num_layers=1); the transformer's norms fused, as `place` trains it."""
    config = part_config(model, name)
    with torch.device("meta"):
        module = build(name, config if name == TEXT_ENCODER else {**config, **overrides})
    return fuse_rms_norms(module) if name == "transformer" else module


def count_parts(model: str) -> dict[str, PartCount]:
    """Parameters of every part of `model` ("tiny" or "ltx-2.3")."""
    return {name: _count(model, name) for name in MODULE_NAMES}


def _count(model: str, name: str) -> PartCount:
    if name != "transformer":
        return _count_module(build_on_meta(model, name), name)
    # 48 identical blocks: count one and two and extrapolate (building all 48 on meta takes ~10 s)
    layers = part_config(model, "transformer")["num_layers"]
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
