"""What a training step costs, counted on the meta device: the LoRA's size, the bytes autograd
keeps for one step at a request's token counts, and the step's model FLOPs.

Activations are counted, not guessed: a one-block transformer with the real widths
(lib.model.meta_model.build_on_meta) runs a training forward on meta tensors under
`saved_tensors_hooks`, which sees every tensor autograd keeps for backward: what the block keeps
(what each recomputed block keeps under gradient checkpointing), what is kept around it, and the
block's outputs (what checkpointing keeps per block). On CUDA the pass runs as the GPU trains
(`_Step`, a torch-function mode): a bf16 base with the fp32 LoRA under bf16 autocast, CUDA
autocast's policy emulated (autocast has no meta backend) so that its casts are recorded by
autograd and counted as the real ones are. Matmuls and attention cast to bf16: peft casts each
LoRA input to fp32 and autocast casts it back, one more bf16 copy kept per LoRA'd Linear.
`rms_norm` and `layer_norm` cast to fp32 (torch >= 2.12): the q/k norms keep fp32 copies and
return fp32, so the attention output is fp32; the blocks' weight-less norms are `FusedRMSNorm`,
which turns autocast off, and stay bf16. Attention is counted as a fused kernel keeps it (q, k,
v, output and the per-row log-sum-exp, never the N x N matrix); torch.rms_norm as CUDA's fused
kernel (its input and the fp32 per-row rstd; the CPU's composite keeps an fp32 copy of the
input). A quantized base's block Linears run as their kernels do: torchao's int8 and fp8
weight-only linears keep a dequantized bf16 copy of the weight (not the input), bitsandbytes' nf4
nothing but the packed weight, and both return their input's dtype, so the fp32 attention output
makes the residual stream fp32. bench/real_width_block.py checks the count against one real block.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from lib.core.settings import ConditioningSettings
from lib.model.conditioning import Example, build_inputs, predict
from lib.model.configs import max_sequence_length, part_config
from lib.model.fused_norm import FusedRMSNorm
from lib.model.meta_model import build_on_meta
from lib.model.quantize import TRANSFORMER_QUANTIZED
from lib.train.lora_io import TARGET_MODULES, add_lora


def lora_parameters(model: str, rank: int) -> int:
    """Parameters of a rank-`rank` LoRA on the project's target modules."""
    layers = part_config(model, "transformer")["num_layers"]
    one, two = (_lora_on(build_on_meta(model, "transformer", num_layers=n), rank) for n in (1, 2))
    return one + (layers - 1) * (two - one)


def _lora_on(module: torch.nn.Module, rank: int) -> int:
    return sum(
        rank * (child.in_features + child.out_features)
        for qualified, child in module.named_modules()
        if type(child) is torch.nn.Linear and any(qualified == t or qualified.endswith(f".{t}") for t in TARGET_MODULES)
    )


@dataclass(frozen=True)
class ActivationCount:
    outside_blocks: int  # bytes saved around the block stack (embeddings, projections, loss)
    per_layer: int  # bytes one block saves for its backward, its inputs aside
    block_output: int  # bytes of one block's outputs (what checkpointing keeps per block)
    largest: int  # the largest single saved tensor (a backward's working gradients)
    layers: int
    inputs_saved: int = 0  # bytes of its inputs a block saves (kept by it when nothing is checkpointed)


def count_activations(
    model: str,
    video_shape: tuple[int, int, int],
    reference_shape: tuple[int, int, int],
    audio_latents: int,
    rank: int,
    dtype: torch.dtype,
    device: str = "cuda",
    base_precision: str = "bf16",
) -> ActivationCount:
    """Bytes autograd keeps in one training step on `device` for these latent shapes ((F, h, w)
    target and reference; audio latents per track), counted on a one-block model: what its block
    saves (a recomputed block keeps the same), what is saved around it, and its outputs (the next
    block's inputs: bf16, or fp32 where a quantized base returns fp32, see `_Step`)."""
    transformer = build_on_meta(model, "transformer", num_layers=1).to(dtype)
    quantized = {id(linear.weight) for linear in _quantized_linears(transformer)} if base_precision != "bf16" else set()
    with torch.device("meta"):
        add_lora(transformer, rank, 0)  # fp32 on the base's dtype, as training attaches it
    transformer.train()
    saved = _Saved(transformer, transformer.transformer_blocks[0])
    example, draws = _meta_example(model, transformer, video_shape, reference_shape, audio_latents)
    step = _Step(
        dtype if device == "cuda" and dtype != torch.float32 else None, device == "cuda", quantized, base_precision
    )
    layout = _counted_layout(video_shape, reference_shape)
    with saved, step.around(transformer):
        inputs = build_inputs(transformer, example, *draws, conditioning=layout, dtype=dtype)
        video, audio = predict(transformer, inputs)
        # masked_loss's ops without its .item() calls (meta tensors hold no values)
        (video - inputs.video_velocity).pow(2).mean(dim=1).mul(inputs.video_mask).sum()
        (audio - inputs.audio_velocity).pow(2).mean()
    block, inputs_saved, outside = saved.totals()
    return ActivationCount(
        outside_blocks=outside,
        per_layer=block,
        block_output=saved.output_bytes,
        largest=max(saved.bytes.values()),
        inputs_saved=inputs_saved,
        layers=part_config(model, "transformer")["num_layers"],
    )


class _Saved:
    """Unique storages autograd keeps (views of one storage count once; parameters never), split
    into what `block` saves while it runs forward, the part of that which is its own inputs, and
    everything else; and the bytes of the block's outputs."""

    def __init__(self, module: torch.nn.Module, block: torch.nn.Module):
        self.parameters = {_storage(p) for p in module.parameters()}
        self.bytes: dict[int, int] = {}
        self.block: set[int] = set()
        self.inputs: set[int] = set()
        self.inside = False
        self.output_bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        block.register_forward_pre_hook(self._enter, with_kwargs=True)
        block.register_forward_hook(self._exit)

    def __enter__(self):
        self._hooks.__enter__()

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)

    def _enter(self, module, args, kwargs):
        self.inputs |= {_storage(t) for t in _tensors((args, kwargs))}
        self.inside = True

    def _exit(self, module, args, output):
        self.inside = False
        self.output_bytes = sum(t.untyped_storage().nbytes() for t in _tensors(output))

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = _storage(tensor)
        if storage not in self.parameters:
            self.bytes[storage] = max(self.bytes.get(storage, 0), tensor.untyped_storage().nbytes())
            if self.inside:
                self.block.add(storage)
        return tensor

    def totals(self) -> tuple[int, int, int]:
        """(the block's own saved bytes, its saved inputs' bytes, everything else)."""

        def total(storages) -> int:
            return sum(self.bytes[s] for s in storages)

        own, inputs = self.block - self.inputs, self.block & self.inputs
        return total(own), total(inputs), total(set(self.bytes) - own - inputs)


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def count_step_flops(model: str, video_shape, reference_shape, audio_latents: int, rank: int) -> int:
    """Model FLOPs of one LoRA training step (forward, then backward to the inputs and the LoRA;
    a checkpoint's recomputation is not counted, as MFU conventions have it), from one- and
    two-block meta passes under torch's FLOP counter."""
    one, two = (_step_flops(model, n, video_shape, reference_shape, audio_latents, rank) for n in (1, 2))
    return one + (part_config(model, "transformer")["num_layers"] - 1) * (two - one)


def _step_flops(model: str, layers: int, video_shape, reference_shape, audio_latents: int, rank: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    transformer = build_on_meta(model, "transformer", num_layers=layers)
    with torch.device("meta"):
        add_lora(transformer, rank, 0)
    transformer.to(torch.bfloat16).train()
    example, draws = _meta_example(model, transformer, video_shape, reference_shape, audio_latents)
    layout = _counted_layout(video_shape, reference_shape)
    with FlopCounterMode(display=False) as counter:
        inputs = build_inputs(transformer, example, *draws, conditioning=layout, dtype=torch.bfloat16)
        video, audio = predict(transformer, inputs)
        ((video - inputs.video_velocity).pow(2).mean() + (audio - inputs.audio_velocity).pow(2).mean()).backward()
    return counter.get_total_flops()


def _counted_layout(video_shape, reference_shape) -> ConditioningSettings:
    """The layout a count is taken in: the reference's downscale is its shape's (the request's);
    its audio is counted "aligned" for every request, as it always has been, although "before"
    keeps one more small tensor of shifted positions (about 48 kB at the default request)."""
    downscale = video_shape[2] // reference_shape[2]
    return ConditioningSettings(reference_audio_positions="aligned", reference_downscale=downscale)


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _quantized_linears(transformer: torch.nn.Module) -> list[torch.nn.Linear]:
    """The Linears `base_precision` quantizes (lib/model/quantize.py: every one in the blocks)."""
    return [
        child
        for qualified, child in transformer.named_modules()
        if type(child) is torch.nn.Linear and TRANSFORMER_QUANTIZED in f"{qualified}."
    ]


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _meta_example(model: str, transformer, video_shape, reference_shape, audio_latents: int):
    meta = torch.device("meta")
    config = transformer.config
    channels, audio_channels = config.in_channels, config.audio_in_channels
    # An audio token packs the audio VAE's latent channels x its latent mel bins (pack_audio).
    latent_channels = part_config(model, "audio_vae")["latent_channels"]
    mel_bins = audio_channels // latent_channels
    text_length = max_sequence_length(model)
    example = Example(
        target_video=torch.empty(channels, *video_shape, device=meta),
        reference_video=torch.empty(channels, *reference_shape, device=meta),
        target_audio=torch.empty(latent_channels, audio_latents, mel_bins, device=meta),
        reference_audio=torch.empty(latent_channels, audio_latents, mel_bins, device=meta),
        video_mask=torch.ones(video_shape, dtype=torch.bool, device=meta),
        text={
            "encoder_hidden_states": torch.empty(1, text_length, config.cross_attention_dim, device=meta),
            "audio_encoder_hidden_states": torch.empty(1, text_length, config.audio_cross_attention_dim, device=meta),
            "encoder_attention_mask": torch.ones(1, text_length, dtype=torch.int64, device=meta),
        },
        frame_rate=24.0,
    )
    tokens = _numel(video_shape)
    draws = (
        torch.tensor(0.5, device=meta),
        torch.tensor(0.5, device=meta),
        torch.empty(tokens, channels, device=meta),
        torch.empty(audio_latents, audio_channels, device=meta),
    )
    return example, draws


class _FusedAttention(torch.autograd.Function):
    """Stands in for scaled_dot_product_attention on meta tensors, keeping what a fused kernel
    keeps for backward."""

    @staticmethod
    def forward(ctx, query, key, value):
        output = torch.empty_like(query)
        log_sum_exp = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, output, log_sum_exp)
        return output

    @staticmethod
    def backward(ctx, grad):
        query, key, value, *_ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


class _FusedRmsNorm(torch.autograd.Function):
    """Stands in for torch.rms_norm on meta tensors, keeping what CUDA's `_fused_rms_norm` keeps for
    backward: the input and the fp32 rstd per normalized row (torch's derivatives.yaml)."""

    @staticmethod
    def forward(ctx, hidden, normalized_dims: int):
        rstd = hidden.new_empty(hidden.shape[:-normalized_dims] + (1,) * normalized_dims, dtype=torch.float32)
        ctx.save_for_backward(hidden, rstd)
        return torch.empty_like(hidden)

    @staticmethod
    def backward(ctx, grad):
        return torch.empty_like(grad), None


class _PackedLinear(torch.autograd.Function):
    """Stands in for bitsandbytes' 4-bit matmul: it keeps only the packed weight (a parameter),
    dequantizing it again for the input's gradient."""

    @staticmethod
    def forward(ctx, hidden, weight):
        ctx.input_shape = hidden.shape
        return hidden.new_empty(hidden.shape[:-1] + weight.shape[:1])

    @staticmethod
    def backward(ctx, grad):
        return grad.new_empty(ctx.input_shape), None


_MATMULS = {
    F.linear,
    torch.matmul,
    torch.mm,
    torch.bmm,
    torch.addmm,
    torch.baddbmm,
    torch.einsum,
    torch.Tensor.matmul,
    torch.Tensor.__matmul__,
}
_NORMS = {F.rms_norm, torch.rms_norm, F.layer_norm}  # on CUDA autocast's fp32 list (rms_norm: torch >= 2.12)


class _Step(TorchFunctionMode):
    """The meta pass as the device runs it. `autocast` (bf16, or None: the CPU trains in fp32)
    emulates CUDA autocast's policy for the ops the transformer calls; `fused_norm` runs
    torch.rms_norm as CUDA's kernel; `quantized` (weight ids) are the base's quantized Linears,
    run as `precision`'s kernel."""

    def __init__(self, autocast: torch.dtype | None, fused_norm: bool, quantized: set[int], precision: str):
        super().__init__()
        self.autocast, self.fused_norm, self.quantized, self.precision = autocast, fused_norm, quantized, precision
        self.paused = 0  # inside a FusedRMSNorm, which turns autocast off

    @contextmanager
    def around(self, transformer: torch.nn.Module):
        handles = []
        for module in transformer.modules():
            if isinstance(module, FusedRMSNorm):
                handles.append(module.register_forward_pre_hook(lambda *_: self._pause(1)))
                handles.append(module.register_forward_hook(lambda *_: self._pause(-1)))
        try:
            with self:
                yield
        finally:
            for handle in handles:
                handle.remove()

    def _pause(self, step: int) -> None:
        self.paused += step

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        autocast = self.autocast if not self.paused else None
        if func is F.linear and id(args[1]) in self.quantized:
            return self._quantized_linear(*args, **kwargs)
        if func in _MATMULS and autocast:
            return func(*_cast(args, autocast), **_cast(kwargs, autocast))
        if func is F.scaled_dot_product_attention:
            qkv = (*args, *(kwargs[name] for name in ("query", "key", "value") if name in kwargs))[:3]
            return _FusedAttention.apply(*(_cast(qkv, autocast) if autocast else qkv))
        if func in _NORMS and autocast:
            args, kwargs = _cast(args, torch.float32), _cast(kwargs, torch.float32)
        if func in (F.rms_norm, torch.rms_norm) and self.fused_norm:
            return _fused_rms_norm(*args, **kwargs)
        return func(*args, **kwargs)

    def _quantized_linear(self, hidden, weight, bias=None):
        """Both kernels compute in the compute dtype and return the input's dtype: an fp32 input
        (the attention's output under autocast) gives an fp32 output, unlike autocast's linear."""
        dtype, compute = hidden.dtype, self.autocast or hidden.dtype
        hidden = hidden.to(compute)
        if self.precision == "nf4":
            output = _PackedLinear.apply(hidden, weight)
        else:  # torchao: mm(input, the weight dequantized to the compute dtype)
            dequantized = torch.empty(weight.shape[::-1], dtype=compute, device=weight.device)
            output = torch.mm(hidden.reshape(-1, hidden.shape[-1]), dequantized).reshape(
                *hidden.shape[:-1], weight.shape[0]
            )
        return (output + bias if bias is not None else output).to(dtype)


def _cast(values, dtype: torch.dtype):
    """Floating tensors in `values` (a tuple or dict) cast to `dtype`, as autocast casts them."""

    def cast(value):
        return value.to(dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    if isinstance(values, dict):
        return {key: cast(value) for key, value in values.items()}
    return tuple(cast(value) for value in values)


def _fused_rms_norm(hidden, normalized_shape, weight=None, eps=None):
    output = _FusedRmsNorm.apply(hidden, len(normalized_shape))
    return output * weight if weight is not None else output
