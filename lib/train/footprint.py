"""What a training step costs, counted on the meta device: the LoRA's size, the bytes autograd
keeps for one step at a request's token counts, and the step's model FLOPs.

Activations are counted, not guessed: one- and two-block transformers with the real widths
(lib.model.footprint.build_on_meta) run a training forward on meta tensors under
`saved_tensors_hooks`, which sees every tensor autograd keeps for backward. Three differences to
the GPU are modelled: attention is counted as a fused kernel keeps it (q, k, v, output and the
per-row log-sum-exp, never the N x N matrix); on CUDA, torch.rms_norm runs the fused kernel, which
keeps its input and the fp32 per-row rstd rather than an fp32 copy of the input (the CPU's
composite keeps that copy); and an fp32 LoRA under autocast computes in the base's dtype, so the
pass runs entirely in that dtype.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from lib.model.footprint import architecture_configs, build_on_meta
from lib.train.lora_io import TARGET_MODULES, add_lora


def lora_parameters(model: str, rank: int) -> int:
    """Parameters of a rank-`rank` LoRA on the project's target modules."""
    layers = architecture_configs(model)["transformer"]["num_layers"]
    one, two = (_lora_on(build_on_meta(model, "transformer", num_layers=n), rank) for n in (1, 2))
    return one + (layers - 1) * (two - one)


def _lora_on(module: torch.nn.Module, rank: int) -> int:
    return sum(rank * (child.in_features + child.out_features) for qualified, child in module.named_modules()
               if type(child) is torch.nn.Linear
               and any(qualified == t or qualified.endswith(f".{t}") for t in TARGET_MODULES))


@dataclass(frozen=True)
class ActivationCount:
    outside_blocks: int     # bytes saved around the block stack (embeddings, projections, loss)
    per_layer: int          # bytes one block saves for its backward
    block_output: int       # bytes of one block's outputs (what checkpointing keeps per block)
    largest: int            # the largest single saved tensor (a backward's working gradients)
    layers: int


def count_activations(model: str, video_shape: tuple[int, int, int], reference_shape: tuple[int, int, int],
                      audio_latents: int, rank: int, dtype: torch.dtype, device: str = "cuda") -> ActivationCount:
    """Bytes autograd keeps in one training step on `device` for these latent shapes ((F, h, w)
    target and reference; audio latents per track), counted on one- and two-block models."""
    one, two = (_saved_bytes(model, layers, video_shape, reference_shape, audio_latents, rank, dtype, device)
                for layers in (1, 2))
    per_layer = two[0] - one[0]
    config = architecture_configs(model)["transformer"]
    video_tokens = _numel(video_shape) + _numel(reference_shape)
    width = config["num_attention_heads"] * config["attention_head_dim"]
    audio_width = config["audio_num_attention_heads"] * config["audio_attention_head_dim"]
    block_output = (video_tokens * width + 2 * audio_latents * audio_width) * _itemsize(dtype)
    return ActivationCount(outside_blocks=one[0] - per_layer, per_layer=per_layer, block_output=block_output,
                           largest=max(one[1], two[1]), layers=config["num_layers"])


def count_step_flops(model: str, video_shape, reference_shape, audio_latents: int, rank: int) -> int:
    """Model FLOPs of one LoRA training step (forward, then backward to the inputs and the LoRA;
    a checkpoint's recomputation is not counted, as MFU conventions have it), from one- and
    two-block meta passes under torch's FLOP counter."""
    one, two = (_step_flops(model, n, video_shape, reference_shape, audio_latents, rank) for n in (1, 2))
    return one + (architecture_configs(model)["transformer"]["num_layers"] - 1) * (two - one)


def _step_flops(model: str, layers: int, video_shape, reference_shape, audio_latents: int, rank: int) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    from lib.model.conditioning import build_inputs, predict

    transformer = build_on_meta(model, "transformer", num_layers=layers)
    with torch.device("meta"):
        add_lora(transformer, rank, 0)
    transformer.to(torch.bfloat16).train()
    example, draws = _meta_example(model, transformer, video_shape, reference_shape, audio_latents)
    with FlopCounterMode(display=False) as counter:
        inputs = build_inputs(transformer, example, *draws, dtype=torch.bfloat16)
        video, audio = predict(transformer, inputs)
        ((video - inputs.video_velocity).pow(2).mean() + (audio - inputs.audio_velocity).pow(2).mean()).backward()
    return counter.get_total_flops()


def _numel(shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _saved_bytes(model: str, layers: int, video_shape, reference_shape, audio_latents: int, rank: int,
                 dtype: torch.dtype, device: str) -> tuple[int, int]:
    from lib.model.conditioning import build_inputs, predict

    transformer = build_on_meta(model, "transformer", num_layers=layers)
    with torch.device("meta"):
        add_lora(transformer, rank, 0)
    transformer.to(dtype).train()
    parameters = {_storage(p) for p in transformer.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Views (heads split, slices of the modulation table) share their base's storage: count it once.
        storage = _storage(tensor)
        if storage not in parameters:
            saved[storage] = max(saved.get(storage, 0), tensor.untyped_storage().nbytes())
        return tensor
    example, draws = _meta_example(model, transformer, video_shape, reference_shape, audio_latents)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), _fused_attention(), \
            _fused_rms_norm(device == "cuda"):
        inputs = build_inputs(transformer, example, *draws, dtype=dtype)
        video, audio = predict(transformer, inputs)
        # masked_loss's ops without its .item() calls (meta tensors hold no values)
        (video - inputs.video_velocity).pow(2).mean(dim=1).mul(inputs.video_mask).sum()
        (audio - inputs.audio_velocity).pow(2).mean()
    return sum(saved.values()), max(saved.values())


def _storage(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata


def _meta_example(model: str, transformer, video_shape, reference_shape, audio_latents: int):
    from lib.model.conditioning import Example
    from lib.model.components import MAX_SEQUENCE_LENGTH
    from lib.model.configs import TINY_MAX_SEQUENCE_LENGTH

    meta = torch.device("meta")
    config = transformer.config
    channels, audio_channels = config.in_channels, config.audio_in_channels
    mel_bins = architecture_configs(model)["audio_vae"]["mel_bins"] // 4   # the audio VAE halves mel bins twice
    text_length = TINY_MAX_SEQUENCE_LENGTH if model == "tiny" else MAX_SEQUENCE_LENGTH
    example = Example(
        target_video=torch.empty(channels, *video_shape, device=meta),
        reference_video=torch.empty(channels, *reference_shape, device=meta),
        target_audio=torch.empty(audio_channels // mel_bins, audio_latents, mel_bins, device=meta),
        reference_audio=torch.empty(audio_channels // mel_bins, audio_latents, mel_bins, device=meta),
        video_mask=torch.ones(video_shape, dtype=torch.bool, device=meta),
        text={"encoder_hidden_states": torch.empty(1, text_length, config.cross_attention_dim, device=meta),
              "audio_encoder_hidden_states": torch.empty(1, text_length, config.audio_cross_attention_dim,
                                                         device=meta),
              "encoder_attention_mask": torch.ones(1, text_length, dtype=torch.int64, device=meta)},
        frame_rate=24.0)
    tokens = _numel(video_shape)
    draws = (torch.tensor(0.5, device=meta), torch.tensor(0.5, device=meta),
             torch.empty(tokens, channels, device=meta), torch.empty(audio_latents, audio_channels, device=meta))
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


@contextmanager
def _fused_attention():
    original = torch.nn.functional.scaled_dot_product_attention

    def attention(query, key, value, *args, **kwargs):
        return _FusedAttention.apply(query, key, value)
    torch.nn.functional.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        torch.nn.functional.scaled_dot_product_attention = original


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


@contextmanager
def _fused_rms_norm(enabled: bool):
    original = torch.nn.functional.rms_norm

    def rms_norm(hidden, normalized_shape, weight=None, eps=None):
        output = _FusedRmsNorm.apply(hidden, len(normalized_shape))
        return output * weight if weight is not None else output
    if enabled:
        torch.nn.functional.rms_norm = rms_norm
    try:
        yield
    finally:
        torch.nn.functional.rms_norm = original
