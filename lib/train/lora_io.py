"""LoRA files (docs/architecture.md, "Formats"): only LoRA tensors, keys `diffusion_model.<module>.lora_A/B.weight`,
loadable by the diffusers LTX-2 pipeline's `load_lora_weights` and ComfyUI / the official LTX loaders.

Alpha = rank, so a plain state dict loads exactly; the peft adapter metadata is stored anyway.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lib.core.errors import TrainingDiverged
from lib.core.storage import atomic_file

PREFIX = "diffusion_model."
# Every attention projection (self, cross, audio<->video) and the video and audio FFNs: the
# FFNs carry much of what an in-context LoRA learns (on the tiny model: 55 % vs 45 % loss drop
# in 100 steps). Names match diffusers' and the original LTX checkpoints' alike.
TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
    "audio_ff.net.0.proj",
    "audio_ff.net.2",
)
TRAINING_TYPE = "av2av-masked"


ADAPTER_NAME = "default"  # diffusers' add_adapter default


def add_lora(transformer, rank: int, seed: int, target_modules=TARGET_MODULES) -> None:
    """Attach a fresh fp32 LoRA (alpha = rank) to every targeted projection; init depends on `seed` only.

    `add_adapter` creates the adapter in the base model's dtype; a bf16 adapter (and its AdamW
    state) would round small updates away, so it is upcast as peft's own `get_peft_model` does.
    """
    from peft import LoraConfig  # peft (and transformers under it) costs seconds: only where LoRA is built
    from peft.tuners.tuners_utils import cast_adapter_dtype

    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=list(target_modules), init_lora_weights=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer.add_adapter(config, adapter_name=ADAPTER_NAME)
    cast_adapter_dtype(transformer, ADAPTER_NAME)


def lora_state_dict(transformer, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the `diffusion_model.` prefix (unprefixed keys are ignored by diffusers)."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(transformer)
    return {f"{PREFIX}{key}": tensor.detach().to("cpu", dtype).contiguous() for key, tensor in state.items()}


def load_lora_state(transformer, state: dict[str, torch.Tensor]) -> None:
    """Put saved LoRA tensors back into an adapter attached with `add_lora` (resume)."""
    from peft import set_peft_model_state_dict

    unprefixed = {key.removeprefix(PREFIX): tensor for key, tensor in state.items()}
    result = set_peft_model_state_dict(transformer, unprefixed)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"LoRA keys do not match the model: {result.unexpected_keys[:3]} ...")


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    with atomic_file(path) as partial:
        save_file(tensors, partial, metadata=metadata)
        _sort_metadata(partial)
    return path


def _sort_metadata(path: str) -> None:
    """Put the header's `__metadata__` in key order, in place: safetensors writes it in hash-map
    order, which changes from process to process, so equal content would give unequal bytes."""
    with open(path, "r+b") as handle:
        size = int.from_bytes(handle.read(8), "little")
        header = json.loads(handle.read(size))
        if "__metadata__" not in header:
            return
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
        if len(text) <= size:  # same entries reordered: always fits; pad as safetensors does
            handle.seek(8)
            handle.write(text.ljust(size))


def save_lora(transformer, path: Path, rank: int, info: dict, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write the LoRA file in `dtype` (bf16 by default: half the bytes, as Lightricks ships LoRAs).

    `info` (base model, trigger phrase, reference conventions, ...) goes into the metadata as JSON
    under `av2av`; `reference_downscale_factor` is also a top-level key, the name Lightricks'
    IC-LoRA loaders read.
    """
    tensors = lora_state_dict(transformer, dtype)
    broken = [name for name, tensor in tensors.items() if not torch.isfinite(tensor).all()]
    if broken:
        raise TrainingDiverged(
            f"The trained LoRA holds non-finite weights ({len(broken)} of {len(tensors)} tensors, "
            f"e.g. {broken[0]}); it is not saved and nothing is uploaded. Try a lower "
            "learning_rate."
        )
    return write_atomic(path, tensors, lora_metadata(rank, info))


def lora_metadata(rank: int, info: dict) -> dict[str, str]:
    adapter = {
        "transformer.r": rank,
        "transformer.lora_alpha": rank,
        "transformer.target_modules": list(TARGET_MODULES),
    }
    metadata = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps(adapter),
        "av2av": json.dumps({"rank": rank, "alpha": rank, "training_type": TRAINING_TYPE, **info}),
    }
    if "reference_downscale" in info:
        metadata["reference_downscale_factor"] = str(info["reference_downscale"])
    return metadata


def read_lora(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return load_file(str(path)), json.loads(metadata.get("av2av", "{}"))
