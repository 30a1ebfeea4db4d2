"""The transformer blocks' weight-less RMSNorm as torch's fused kernel (`FusedRMSNorm`), swapped in
wherever a transformer is built to train (lib/model/part_loaders.py, lib/model/meta_model.py)."""

from __future__ import annotations

import torch


class FusedRMSNorm(torch.nn.Module):
    """Diffusers' weight-less RMSNorm as torch's fused `rms_norm`, run with autocast off.

    Same output as diffusers' (both normalize in fp32 and return the input's dtype), but
    diffusers' Python version keeps an fp32 copy of its input for backward where CUDA's fused
    kernel keeps only the per-row rstd. Autocast must be off around it: torch >= 2.12 puts
    `rms_norm` on CUDA autocast's fp32 list (pytorch#174824), which would cast a bf16 input to fp32
    (a kept fp32 copy again) and return fp32, unlike diffusers. Casting the result back instead
    would give the same values but keep that fp32 copy."""

    def __init__(self, dim: torch.Size, eps: float):
        super().__init__()
        self.dim, self.eps = torch.Size(dim), eps

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        device = hidden.device.type
        if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return torch.nn.functional.rms_norm(hidden, self.dim, eps=self.eps)
        return torch.nn.functional.rms_norm(hidden, self.dim, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{tuple(self.dim)}, eps={self.eps}"


def fuse_rms_norms(module: torch.nn.Module) -> torch.nn.Module:
    """Swap diffusers' weight-less RMSNorm (the blocks' norm1/2/3 and cross-modal norms) for
    `FusedRMSNorm`, in place: the same output in the input's dtype, with or without autocast,
    and about 0.5 GB less kept per recomputed block at the default request. Parameter-free, so
    state dicts and LoRA keys are unchanged."""
    from diffusers.models.normalization import RMSNorm

    for parent in list(module.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is RMSNorm and child.weight is None and child.bias is None:
                setattr(parent, child_name, FusedRMSNorm(child.dim, child.eps))
    return module
