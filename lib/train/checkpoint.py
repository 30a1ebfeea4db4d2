"""Training checkpoints: LoRA + optimizer + LR schedule + RNG + step in one `.safetensors`
(tensors) with its JSON metadata (the rest), written atomically. Resuming from one continues
bit-for-bit on CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lib.core.errors import InvalidRequest
from lib.train.lora_io import load_lora_state, lora_state_dict, write_atomic


def save_checkpoint(
    path: Path, transformer, optimizer, scheduler, generator: torch.Generator, step: int, losses: list[float]
) -> Path:
    tensors = {f"lora.{k}": v for k, v in lora_state_dict(transformer).items()}
    optimizer_state = optimizer.state_dict()
    for param_id, state in optimizer_state["state"].items():
        for name, value in _flatten(state):
            tensors[f"optim.{param_id}.{name}"] = torch.as_tensor(value).detach().cpu().clone().contiguous()
    tensors["rng.generator"] = generator.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    metadata = {
        "step": str(step),
        "losses": json.dumps(losses),
        "param_groups": json.dumps(optimizer_state["param_groups"]),
        "scheduler": json.dumps(scheduler.state_dict()),
    }
    return write_atomic(path, tensors, metadata)


def _flatten(state: dict, prefix: str = ""):
    """(name, value) pairs; nested dicts (bitsandbytes' 8-bit state) get `outer/inner` names, and
    plain numbers (its step counter) become tensors."""
    for name, value in state.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{name}/")
        else:
            yield f"{prefix}{name}", value


def _nest(state: dict, name: str, value: torch.Tensor) -> None:
    *outer, last = name.split("/")
    for key in outer:
        state = state.setdefault(key, {})
    state[last] = value.item() if last == "step" and value.dtype == torch.int64 else value


def check_checkpoint(path: str | Path, rank: int) -> int:
    """Refuse, before any download, a resume_from that cannot work; returns its step."""
    if not Path(path).is_file():
        raise InvalidRequest(f"resume_from: no checkpoint file at {path}.")
    try:
        with safe_open(str(path), framework="pt") as handle:
            step = int((handle.metadata() or {})["step"])
            lora_a = next(k for k in handle.keys() if k.startswith("lora.") and ".lora_A." in k)
            saved_rank = handle.get_slice(lora_a).get_shape()[0]
    except (KeyError, StopIteration, ValueError, OSError) as error:
        raise InvalidRequest(f"resume_from: {path} is not a training checkpoint ({error}).") from error
    if saved_rank != rank:
        raise InvalidRequest(
            f"resume_from: {path} holds a rank-{saved_rank} LoRA but the request has "
            f"rank={rank}; resume with the rank it was trained with."
        )
    return step


def load_checkpoint(
    path: str | Path, transformer, optimizer, scheduler, generator: torch.Generator
) -> tuple[int, list[float]]:
    """Restore everything `save_checkpoint` wrote; returns (step, losses so far)."""
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    load_lora_state(transformer, {k.removeprefix("lora."): v for k, v in tensors.items() if k.startswith("lora.")})
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, param_id, name = key.split(".", 2)
            _nest(state.setdefault(int(param_id), {}), name, value)
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    scheduler.load_state_dict(json.loads(metadata["scheduler"]))
    generator.set_state(tensors["rng.generator"])
    torch.set_rng_state(tensors["rng.torch"])
    return int(metadata["step"]), json.loads(metadata["losses"])
