"""Activation offloading (docs/architecture.md, "Memory"): with gradient checkpointing a block keeps
only its inputs for the backward pass, but 48 blocks' residual streams (video + audio hidden
states) still add up to about 3.4 GB at the default request. `BlockInputOffload` is the
checkpoint function handed to diffusers (`enable_gradient_checkpointing`): it checkpoints each
block as diffusers does (non-reentrant) and moves the residual stream a block received from the
block before it to host memory; each block's backward brings its own back.

Why this is safe: the inputs a non-reentrant checkpoint keeps go through the saved-tensor hooks
active around the call, while the tensors saved inside the block go through the checkpoint's own.
Copies run on the current stream (ordered with the kernels around them), from and to pinned
memory on CUDA; the values are bit-identical, so a run is the same with or without offloading.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils.checkpoint import checkpoint


class BlockInputOffload:
    """A `gradient_checkpointing_func` for diffusers models; counts what it moved."""

    def __init__(self, pin_memory: bool | None = None):
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self.offloaded_tensors = 0
        self.offloaded_bytes = 0
        self._carried: tuple = ()  # weak references to the previous block's outputs: the next block's residual stream

    def __call__(self, block, *args, **kwargs):
        with torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack):
            outputs = checkpoint(block, *args, use_reentrant=False, **kwargs)
        self._carried = tuple(
            weakref.ref(o)
            for o in (outputs if isinstance(outputs, tuple) else (outputs,))
            if isinstance(o, torch.Tensor)
        )
        return outputs

    def _pack(self, tensor: torch.Tensor):
        # Only the residual stream moves: the other inputs (timestep tables, rotary embeddings, text
        # states) are the same tensors for every block and stay resident for the whole forward anyway.
        if not any(tensor is carried() for carried in self._carried):
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=self.pin_memory)
        host.copy_(tensor, non_blocking=self.pin_memory)
        self.offloaded_tensors += 1
        self.offloaded_bytes += tensor.numel() * tensor.element_size()
        return _OnHost(host, tensor.device)


class _OnHost:
    __slots__ = ("host", "device")

    def __init__(self, host: torch.Tensor, device: torch.device):
        self.host, self.device = host, device


def _unpack(packed):
    if isinstance(packed, _OnHost):
        return packed.host.to(packed.device, non_blocking=packed.host.is_pinned())
    return packed
