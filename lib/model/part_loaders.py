"""Opening a model part by part: shells on the meta device give the spec and cache identity at
once, and each source (tiny preset, diffusers folder or hub id, Lightricks single file + Gemma)
supplies a loader that brings one part onto the device in the compute dtype, quantizing the frozen
transformer and text encoder when `base_precision` asks (lib/model/quantize.py)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from lib.core.errors import ModelUnavailable
from lib.model.components import Components, assemble
from lib.model.configs import LTX23_CONFIG_DIR, part_config
from lib.model.fused_norm import fuse_rms_norms
from lib.model.parts import CHECKPOINT_PARTS, MODULE_NAMES, TEXT_ENCODER, build, diffusers_classes, text_encoder_class
from lib.model.quantize import TEXT_ENCODER_QUANTIZED, TRANSFORMER_QUANTIZED, place_quantized, text_encoder_precision
from lib.model.single_file import diffusers_configs, split_checkpoint, to_diffusers_key
from lib.model.tiny import build_tiny


def shell(name: str, config) -> torch.nn.Module:
    """A part built from its config with its weights on the meta device (exact shapes, no memory);
    buffers the config computes (rope tables, statistics) stay real, as `from_pretrained` leaves them."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        return build(name, config)


def place(
    name: str, module: torch.nn.Module, device: torch.device, dtype: torch.dtype, base_precision: str
) -> torch.nn.Module:
    """Onto the device, quantized where the base precision asks, the transformer's norms fused;
    eval mode."""
    if name == "transformer":
        fuse_rms_norms(module)
    if name == "transformer" and base_precision != "bf16":
        place_quantized(module, device, base_precision, TRANSFORMER_QUANTIZED, dtype)
    elif name == TEXT_ENCODER and base_precision != "bf16":
        place_quantized(module, device, text_encoder_precision(base_precision), TEXT_ENCODER_QUANTIZED, dtype)
    else:
        module.to(device)
    return module.eval()


def _lazy(
    shells: dict,
    extras: dict,
    preset: str,
    origin: str,
    device: torch.device,
    dtype: torch.dtype,
    base_precision: str,
    load: Callable[[str], torch.nn.Module],
) -> Components:
    components = assemble({**shells, **extras}, preset, origin, device, dtype, base_precision)
    for name in MODULE_NAMES:
        setattr(components, name, None)
    components.loader = lambda name: place(name, load(name), device, dtype, base_precision)
    return components


def open_tiny(device: torch.device, dtype: torch.dtype, base_precision: str) -> Components:
    tiny = build_tiny()
    modules = {name: getattr(tiny, name) for name in MODULE_NAMES}
    extras = {"tokenizer": tiny.tokenizer, "scheduler": tiny.scheduler}
    # Each load is a fresh copy of the seeded build, as a reload from disk would be.
    return _lazy(
        modules,
        extras,
        "tiny",
        "seed0",
        device,
        dtype,
        base_precision,
        lambda name: copy.deepcopy(modules[name]).to(dtype=dtype),
    )


def open_pretrained(source: str, device: torch.device, dtype: torch.dtype, base_precision: str) -> Components:
    """A diffusers folder or hub id: one subfolder per part."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from transformers import AutoConfig, AutoTokenizer

    shells = {name: shell(name, cls.load_config(source, subfolder=name)) for name, cls in diffusers_classes().items()}
    shells[TEXT_ENCODER] = shell(TEXT_ENCODER, AutoConfig.from_pretrained(source, subfolder=TEXT_ENCODER))
    extras = {
        "tokenizer": AutoTokenizer.from_pretrained(source, subfolder="tokenizer"),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(source, subfolder="scheduler"),
    }

    def load(name: str) -> torch.nn.Module:
        if name == TEXT_ENCODER:
            return text_encoder_class().from_pretrained(source, subfolder=name, dtype=dtype)
        return diffusers_classes()[name].from_pretrained(source, subfolder=name, torch_dtype=dtype)

    return _lazy(shells, extras, "ltx-2.3", source, device, dtype, base_precision, load)


def open_single_file(
    path: str,
    text_encoder_source: str,
    device: torch.device,
    dtype: torch.dtype,
    base_precision: str,
) -> Components:
    """Lightricks' one-file checkpoint (transformer, connectors, VAEs, vocoder) + a Gemma 3 folder.

    Each part's tensors are read one by one into its meta shell (`assign`), so host memory never
    holds a second copy of the 19 B transformer.
    """
    from pathlib import Path

    from diffusers import FlowMatchEulerDiscreteScheduler
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    with safe_open(path, framework="pt") as handle:
        configs = diffusers_configs(handle.metadata() or {})
    shells = {name: shell(name, configs[name]) for name in CHECKPOINT_PARTS}
    shells[TEXT_ENCODER] = shell(TEXT_ENCODER, AutoConfig.from_pretrained(text_encoder_source))
    extras = {
        "tokenizer": AutoTokenizer.from_pretrained(text_encoder_source),
        "scheduler": FlowMatchEulerDiscreteScheduler.from_pretrained(str(LTX23_CONFIG_DIR / "scheduler")),
    }
    # Quantized parts are read on the CPU and quantized block by block on the device.
    read_on = "cpu" if base_precision != "bf16" else str(device)

    def load(name: str) -> torch.nn.Module:
        if name == TEXT_ENCODER:
            return text_encoder_class().from_pretrained(text_encoder_source, dtype=dtype)
        module = shell(name, configs[name])
        with safe_open(path, framework="pt", device=read_on) as handle:
            keys = split_checkpoint(handle.keys())[name]
            # On CPU, get_tensor returns views into the mapped file at arbitrary offsets; owned
            # (aligned) copies compute bit-identically to a diffusers-folder load.
            state = {
                new: handle.get_tensor(key).to(dtype=dtype, copy=read_on == "cpu")
                for key in keys
                if (new := to_diffusers_key(name, key)) is not None
            }
        load_strict(module, state, name, path)
        return module

    return _lazy(
        shells, extras, "ltx-2.3", f"{Path(path).resolve()}+{text_encoder_source}", device, dtype, base_precision, load
    )


def load_strict(module: torch.nn.Module, state: dict, name: str, path: str) -> None:
    expected = set(module.state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ModelUnavailable(
            f"model_source: {path} does not match LTX-2.3's {name}: {len(missing)} weights "
            f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})."
        )
    module.load_state_dict(state, strict=True, assign=True)


def random_transformer(model: str, device: torch.device, dtype: torch.dtype, base_precision: str = "bf16"):
    """The transformer with random weights built directly on `device` in `dtype` (no download, no
    host copy): the real 2.3 architecture from its shipped config, or the tiny preset's."""
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # a 19 B transformer would not fit in fp32 first
        try:
            module = build("transformer", part_config(model, "transformer"))
        finally:
            torch.set_default_dtype(previous)
    return place("transformer", module, torch.device(device), dtype, base_precision)
