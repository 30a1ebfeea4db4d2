"""A quantized frozen base (`base_precision`): the transformer's block Linear weights, and the text
encoder's decoder Linear weights, stored in 8 or 4 bits while the LoRA on top trains in fp32.

- int8: torchao's weight-only int8 (per-row scales); peft wraps it in its torchao LoRA layer.
- fp8:  torchao's weight-only float8 (e4m3, per-row scales). Its fast path needs compute
        capability 8.9 (Ada, Hopper); older GPUs are refused before anything is loaded.
- nf4:  bitsandbytes' 4-bit NormalFloat `Linear4bit` with double-quantized block statistics.
Embeddings, norms, the patchify/output projections and the timestep/AdaLN layers stay in the
compute dtype: they are a small share of the bytes and the most sensitive to rounding.
Quantization happens block by block on the target device, so the GPU never holds the whole model
in bf16 and in the quantized form at once.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from lib.core.errors import InvalidRequest

BASE_PRECISIONS = ("bf16", "int8", "fp8", "nf4")
CPU_PACK_ROWS = 32  # bitsandbytes' block_n for its AVX512-BF16 CPU kernel
FP8_CAPABILITY = (8, 9)
NF4_BLOCK = 64  # the 4-bit block size (bitsandbytes' default): one absmax per 64 weights
NF4_SECOND_BLOCK = 256  # bitsandbytes' double quantization: the absmaxes in int8, one fp32 scale per 256
TRANSFORMER_QUANTIZED = "transformer_blocks."
TEXT_ENCODER_QUANTIZED = "language_model.layers."


def text_encoder_precision(base_precision: str) -> str:
    """The text encoder follows the base, but never below 8 bits: int8 for fp8 and nf4. Lightricks
    offers Gemma in 8 bits at most (ltx-trainer gemma_8bit.py), and its embeddings are cached once
    and the whole LoRA trains on them, so 4-bit error there would bias every step."""
    return {"fp8": "int8", "nf4": "int8"}.get(base_precision, base_precision)


def check_base_precision(base_precision: str, device: torch.device | str, optimizer: str = "adamw") -> None:
    """Refuse (InvalidRequest) a precision or optimizer this worker cannot run, before loading."""
    device = torch.device(device)
    if base_precision not in BASE_PRECISIONS:
        raise InvalidRequest(f"base_precision: {base_precision!r} is not one of {BASE_PRECISIONS}.")
    needs = {"int8": "torchao", "fp8": "torchao", "nf4": "bitsandbytes"}.get(base_precision)
    for package, field in (
        (needs, "base_precision"),
        ("bitsandbytes" if optimizer == "adamw8bit" else None, "optimizer"),
    ):
        if package and importlib.util.find_spec(package) is None:
            raise InvalidRequest(
                f"{field}: {base_precision if field == 'base_precision' else optimizer} needs "
                f"the {package} package on the GPU worker (pip install -e .); it is not installed."
            )
    if base_precision == "fp8" and device.type == "cuda":
        capability = torch.cuda.get_device_capability(device)
        if capability < FP8_CAPABILITY:
            raise InvalidRequest(
                f"base_precision: fp8 needs an NVIDIA GPU with compute capability 8.9 or newer (Ada or Hopper: "
                f"L4, L40S, RTX 4090, H100, H200); this worker has {torch.cuda.get_device_name(device)} "
                f"(capability {capability[0]}.{capability[1]}). Use int8 or nf4 on this GPU."
            )


def quantize_frozen(module: torch.nn.Module, precision: str, prefix: str, compute_dtype: torch.dtype) -> int:
    """Quantize, in place, every nn.Linear whose qualified name contains `prefix`; returns how many."""
    if precision == "bf16":
        return 0
    selected = _linears(module, prefix)
    if precision == "nf4":
        for parent, name, linear in selected:
            setattr(parent, name, _nf4(linear, compute_dtype))
    else:
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

        config = Int8WeightOnlyConfig() if precision == "int8" else Float8WeightOnlyConfig()
        chosen = {id(linear) for _, _, linear in selected}
        quantize_(module, config, filter_fn=lambda child, _: id(child) in chosen)
    return len(selected)


def place_quantized(
    module: torch.nn.Module, device: torch.device, precision: str, prefix: str, compute_dtype: torch.dtype
) -> None:
    """Move `module` to `device`, quantizing the blocks under `prefix` one at a time once there
    (peak: the quantized model plus one unquantized block)."""
    for name, blocks in module.named_modules():
        if isinstance(blocks, torch.nn.ModuleList) and f"{name}.".endswith(prefix):
            for block in blocks:
                block.to(device)
                quantize_frozen(block, precision, "", compute_dtype)
    module.to(device)  # the rest: embeddings, norms, projections


def _linears(module: torch.nn.Module, prefix: str) -> list[tuple[torch.nn.Module, str, torch.nn.Linear]]:
    found = []
    for parent_name, parent in module.named_modules():
        for name, child in parent.named_children():
            qualified = f"{parent_name}.{name}" if parent_name else name
            if type(child) is torch.nn.Linear and (prefix in f"{qualified}." or not prefix):
                found.append((parent, name, child))
    return found


def _nf4(linear: torch.nn.Linear, compute_dtype: torch.dtype) -> torch.nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    quantized = bnb.nn.Linear4bit(
        linear.in_features,
        linear.out_features,
        bias=linear.bias is not None,
        compute_dtype=compute_dtype,
        quant_type="nf4",
        device="meta",
    )
    quantized.weight = bnb.nn.Params4bit(
        linear.weight.data.to("cpu", compute_dtype),
        requires_grad=False,
        blocksize=NF4_BLOCK,
        quant_type="nf4",
        compress_statistics=True,
    )
    if linear.bias is not None:
        quantized.bias = torch.nn.Parameter(linear.bias.data, requires_grad=False)
    # On a CPU with AVX512-BF16, bitsandbytes repacks the weight for inference in blocks of 32 output
    # rows and whole quantization blocks per row, and fails on other shapes ("N must be divisible by
    # block_n"): such layers (the tiny preset's, none of the real model's) keep its generic path.
    quantized.support_avx512bf16_for_cpu &= (
        linear.out_features % CPU_PACK_ROWS == 0 and linear.in_features % quantized.weight.blocksize == 0
    )
    return quantized.to(device)  # Params4bit quantizes when it is moved


def tensor_bytes(tensor: torch.Tensor) -> int:
    """Bytes a (possibly quantized) tensor holds: a torchao subclass counts its inner tensors, a
    bitsandbytes 4-bit weight its packed data plus its block statistics."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        total += tensor_bytes(state.absmax)
        if getattr(state, "state2", None) is not None:
            total += tensor_bytes(state.state2.absmax) + tensor_bytes(state.offset)
    return total


def module_bytes(module: torch.nn.Module, where: Callable[[torch.Tensor], bool] = lambda t: True) -> int:
    """Parameter and buffer bytes of `module` (shared tensors once)."""
    seen, total = set(), 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen and where(tensor):
            seen.add(id(tensor))
            total += tensor_bytes(tensor)
    return total
