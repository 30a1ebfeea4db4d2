"""The memory plan's per-block figures against one real-width LTX-2.3 block, on CPU.

One block of the real 2.3 transformer (width 4096 video / 2048 audio, from the shipped config with
`num_layers=1`) is loaded as training loads it (`lib.model.part_loaders.place`: norms fused, the base
quantized), gets the rank-32 LoRA of `lib.train.lora_io.add_lora`, and runs a training forward
and backward on random latents of the default request, under bf16 autocast with CUDA's policies
emulated where the CPU's differ (`cuda_emulation`): `rms_norm` is on CUDA autocast's fp32 list
(torch >= 2.12) and CUDA runs it as the fused kernel, which keeps its input and the per-row rstd.
Measured: the bytes autograd keeps for the block's backward (unique storages seen by
`saved_tensors_hooks`, the block's inputs and parameters excluded: gradient checkpointing keeps
those anyway), plus the block's base weights; planned: the same two figures from
`lib.train.memory_plan.block_bytes`.

    python bench/real_width_block.py                     # the default request: 8,640 video tokens
    python bench/real_width_block.py --frames 2 --precisions bf16   # a shorter sequence

Activations are linear in the tokens (attention runs as a fused kernel), so `--frames` (latent
frames, 12 at the default request) scales the check down. Each precision runs in its own process.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

GB = 1e9
RANK = 32
PRECISIONS = ("bf16", "int8", "nf4")


def default_shapes(frames: int | None = None):
    """(target, reference, audio latents) of the default request, with `frames` latent frames."""
    from lib.core.config import TrainRequest
    from lib.train.memory_plan import latent_shapes

    target, reference, audio = latent_shapes(TrainRequest(training_data_url="bench.zip"))
    if frames is None:
        return target, reference, audio
    return (frames, *target[1:]), (frames, *reference[1:]), audio


def default_layout():
    """The default request's reference layout, as lib/train/step_cost.py counts it."""
    from lib.core.config import TrainRequest
    from lib.core.settings import ConditioningSettings

    request = TrainRequest(training_data_url="bench.zip")
    return ConditioningSettings(
        reference_audio_positions=request.reference_audio_positions,
        reference_downscale=request.reference_downscale_factor,
    )


class _FusedRmsNorm(torch.autograd.Function):
    """torch.rms_norm as CUDA's `_fused_rms_norm` runs it: fp32 math, output in the input's
    dtype, and only the input and the fp32 per-row rstd kept for backward."""

    @staticmethod
    def forward(ctx, hidden, dims: int, weight, eps):
        reduce = tuple(range(-dims, 0))
        eps = torch.finfo(torch.float32).eps if eps is None else eps
        rstd = torch.rsqrt(hidden.float().pow(2).mean(reduce, keepdim=True) + eps)
        output = hidden.float() * rstd
        output = (output * weight.float() if weight is not None else output).to(hidden.dtype)
        ctx.save_for_backward(hidden, rstd, weight)
        ctx.reduce = reduce
        return output

    @staticmethod
    def backward(ctx, grad):
        hidden, rstd, weight = ctx.saved_tensors
        with torch.enable_grad():  # the composite's gradient, from what the kernel kept
            again = hidden.detach().float().requires_grad_()
            output = again * rstd
            output = output * weight.float() if weight is not None else output
            (grad_input,) = torch.autograd.grad(output, again, grad.float())
        return grad_input.to(hidden.dtype), None, None, None


@contextmanager
def cuda_emulation(fused_kernel: bool = True):
    """CPU autocast made to act as CUDA's where the block can tell: rms_norm follows CUDA
    autocast's fp32 policy (torch >= 2.12: input and weight cast to fp32, fp32 output) and, with
    `fused_kernel`, keeps only what CUDA's fused kernel keeps (without: the CPU's own kernel, for
    its numerics); `torch.is_autocast_enabled()` without a device, which asks about CUDA, answers
    for the CPU. Everything else the block calls has the same autocast policy on both devices
    (linear, sdpa: bf16; elementwise ops: type promotion)."""
    original, enabled = torch.rms_norm, torch.is_autocast_enabled

    def kernel(hidden, normalized_shape, weight, eps):
        if fused_kernel:
            return _FusedRmsNorm.apply(hidden, len(normalized_shape), weight, eps)
        return original(hidden, normalized_shape, weight, eps)

    def rms_norm(hidden, normalized_shape, weight=None, eps=None):
        if enabled("cpu"):
            hidden, weight = hidden.float(), None if weight is None else weight.float()
            with torch.autocast("cpu", enabled=False):
                return kernel(hidden, normalized_shape, weight, eps)
        return kernel(hidden, normalized_shape, weight, eps)

    torch.rms_norm = rms_norm
    torch.is_autocast_enabled = lambda device_type="cpu": enabled(device_type)
    try:
        yield
    finally:
        torch.rms_norm, torch.is_autocast_enabled = original, enabled


def build_block(precision: str):
    """A one-block real-width transformer, placed and given its LoRA as training does."""
    from lib.model.configs import part_config
    from lib.model.part_loaders import place
    from lib.model.parts import build
    from lib.train.lora_io import add_lora

    config = {**part_config("ltx-2.3", "transformer"), "num_layers": 1}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            transformer = build("transformer", config)
        finally:
            torch.set_default_dtype(previous)
    place("transformer", transformer, torch.device("cpu"), torch.bfloat16, precision)
    add_lora(transformer, RANK, 0)
    return transformer.train()


def example_inputs(transformer, target, reference, audio: int):
    from lib.model.conditioning import Example, build_inputs
    from lib.model.configs import MAX_SEQUENCE_LENGTH

    config, generator = transformer.config, torch.Generator().manual_seed(0)
    mel = 16

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    example = Example(
        target_video=rand(config.in_channels, *target),
        reference_video=rand(config.in_channels, *reference),
        target_audio=rand(config.audio_in_channels // mel, audio, mel),
        reference_audio=rand(config.audio_in_channels // mel, audio, mel),
        video_mask=torch.rand(target, generator=generator) < 0.5,
        text={
            "encoder_hidden_states": rand(1, MAX_SEQUENCE_LENGTH, config.cross_attention_dim),
            "audio_encoder_hidden_states": rand(1, MAX_SEQUENCE_LENGTH, config.audio_cross_attention_dim),
            "encoder_attention_mask": torch.ones(1, MAX_SEQUENCE_LENGTH, dtype=torch.int64),
        },
        frame_rate=24.0,
    )
    tokens = target[0] * target[1] * target[2]
    return build_inputs(
        transformer,
        example,
        torch.tensor(0.5),
        torch.tensor(0.5),
        rand(tokens, config.in_channels),
        rand(audio, config.audio_in_channels),
        conditioning=default_layout(),
        dtype=torch.bfloat16,
    )


def _storages(tensor, into: set) -> None:
    """Storage ids behind `tensor`: a quantized subclass's inner tensors, else its own."""
    if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            _storages(getattr(tensor, name), into)
    elif isinstance(tensor, torch.Tensor):
        into.add(tensor.untyped_storage()._cdata)


def _flatten(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _flatten(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _flatten(item)


class SavedByBlock:
    """Bytes autograd keeps while `block` runs forward: unique storages, without the block's
    parameters and buffers or the tensors it was called with."""

    def __init__(self, module: torch.nn.Module, block: torch.nn.Module):
        self.excluded: set = set()
        for tensor in [*module.parameters(), *module.buffers()]:
            _storages(tensor, self.excluded)
        self.saved: dict[int, int] = {}
        self.kinds: dict[int, tuple] = {}  # storage -> (shape, dtype) of a tensor saved from it
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        block.register_forward_pre_hook(self._enter, with_kwargs=True)
        block.register_forward_hook(lambda *_: self._hooks.__exit__(None, None, None))

    def _enter(self, module, args, kwargs):
        for tensor in _flatten((args, kwargs)):
            _storages(tensor, self.excluded)
        self._hooks.__enter__()

    def _pack(self, tensor):
        if hasattr(tensor, "__tensor_flatten__") and type(tensor) not in (torch.Tensor, torch.nn.Parameter):
            for name in tensor.__tensor_flatten__()[0]:
                self._pack(getattr(tensor, name))
            return tensor
        storage = tensor.untyped_storage()
        if storage._cdata not in self.excluded:
            self.saved[storage._cdata] = max(self.saved.get(storage._cdata, 0), storage.nbytes())
            self.kinds[storage._cdata] = (tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        return tensor

    @property
    def bytes(self) -> int:
        return sum(self.saved.values())


def measure(precision: str, frames: int | None, backward: bool = True) -> dict:
    """One block's kept activations and base weights at `precision`, after a forward (and backward)."""
    from lib.model.conditioning import masked_loss, predict
    from lib.model.quantize import module_bytes

    target, reference, audio = default_shapes(frames)
    transformer = build_block(precision)
    block = transformer.transformer_blocks[0]
    weights = module_bytes(block, where=lambda tensor: not getattr(tensor, "requires_grad", False))
    inputs = example_inputs(transformer, target, reference, audio)
    saved = SavedByBlock(transformer, block)
    began = time.perf_counter()
    with cuda_emulation(), torch.autocast("cpu", dtype=torch.bfloat16):
        video, audio_out = predict(transformer, inputs)
    loss, _ = masked_loss(video, audio_out, inputs)
    forward_s = time.perf_counter() - began
    if backward:
        loss.backward()
        lora_grads = [p.grad for n, p in transformer.named_parameters() if "lora_B" in n]
        assert all(grad is not None and torch.isfinite(grad).all() for grad in lora_grads)
    return {
        "activations": saved.bytes,
        "weights": weights,
        "forward_s": round(forward_s, 1),
        "backward_s": round(time.perf_counter() - began - forward_s, 1) if backward else None,
        "video_tokens": inputs.kwargs["hidden_states"].shape[1],
    }


def planned(precision: str, frames: int | None) -> dict:
    from lib.train.memory_plan import block_bytes

    target, reference, audio = default_shapes(frames)
    weights, activations = block_bytes("ltx-2.3", target, reference, audio, RANK, precision)
    return {"activations": activations, "weights": weights}


def compare(measured: dict, plan: dict) -> dict:
    total, total_plan = measured["activations"] + measured["weights"], plan["activations"] + plan["weights"]
    return {
        "measured_gb": round(total / GB, 3),
        "planned_gb": round(total_plan / GB, 3),
        "measured_over_planned": round(total / total_plan, 3),
        "activations_gb": round(measured["activations"] / GB, 3),
        "planned_activations_gb": round(plan["activations"] / GB, 3),
        "activations_ratio": round(measured["activations"] / plan["activations"], 3),
        "weights_gb": round(measured["weights"] / GB, 3),
        "planned_weights_gb": round(plan["weights"] / GB, 3),
        "video_tokens": measured["video_tokens"],
        "forward_s": measured["forward_s"],
        "backward_s": measured["backward_s"],
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=None, help="latent frames (default: the request's, 12)")
    parser.add_argument("--precisions", nargs="*", default=list(PRECISIONS))
    parser.add_argument("--no-backward", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one precision, print JSON
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.frames, backward=not args.no_backward)))
        return 0
    results = {}
    for precision in args.precisions:
        command = [
            sys.executable,
            __file__,
            "--one",
            precision,
            *(["--no-backward"] if args.no_backward else []),
            *(["--frames", str(args.frames)] if args.frames else []),
        ]
        child = subprocess.run(command, capture_output=True, text=True)
        if child.returncode:
            results[precision] = {"error": (child.stderr or child.stdout).strip().splitlines()[-3:]}
            continue
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        results[precision] = compare(measured, planned(precision, args.frames))
    print(json.dumps({"frames": args.frames or default_shapes()[0][0], "rank": RANK, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
