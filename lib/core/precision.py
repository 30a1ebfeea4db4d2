"""Precision: the one place that decides dtypes.

- compute dtype: what the frozen base runs in — bf16 on CUDA (the real model is trained and served
  in bf16), fp32 on CPU unless `AV2AV_COMPUTE_DTYPE` asks otherwise (tests run the tiny preset in
  bf16 on CPU to exercise the real model's code path);
- LoRA parameters and their optimizer state: always fp32, so small updates are not rounded away
  (a 2e-4 step on a 0.1 weight is below bf16's resolution);
- the saved LoRA file: `lora_dtype` of the request (bf16 by default, as Lightricks ships LoRAs).
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
COMPUTE_DTYPE_ENV = "AV2AV_COMPUTE_DTYPE"


def dtype_named(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


def compute_dtype(device: torch.device | str, requested: str | None = None) -> torch.dtype:
    """bf16 on CUDA, fp32 on CPU; `requested` (or $AV2AV_COMPUTE_DTYPE) overrides either."""
    requested = requested or os.environ.get(COMPUTE_DTYPE_ENV)
    if requested:
        return dtype_named(requested)
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision for a bf16 base with fp32 adapters: matmuls in `dtype`, master weights fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)
