"""The memory plan: how much GPU memory a request needs, before a GPU is rented.

A run goes through four stages and each keeps only its parts resident (lib/model/lifetime.py):
text (text encoder + connectors encode the captions), encode (the two VAEs encode the clips),
train (the transformer, the LoRA with its gradients and optimizer state, the activations) and
validate (the transformer with the LoRA, the decoders, sampling). The peak is the largest stage.
Parameter counts come from the real architecture built on the meta device and training
activations from a meta-device training pass at the request's token counts, run as CUDA runs it
(autocast's casts, peft's, the quantized kernels' dequantized weights; lib/model/meta_model.py,
lib/train/step_cost.py); bench/real_width_block.py holds its per-block figures against one real
block. The smaller stages' activations are estimated from the widths.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from functools import lru_cache

from lib.core.config import BUCKETS, TrainRequest
from lib.core.errors import InvalidRequest
from lib.model.configs import max_sequence_length, part_config
from lib.model.lifetime import STAGE_PARTS
from lib.model.quantize import NF4_BLOCK, NF4_SECOND_BLOCK, text_encoder_precision

GB = 1e9
GPU_MEMORY_ENV = "AV2AV_GPU_MEMORY_GB"
BACKWARD_WORKING = 0.8
RESERVE = 0.08  # CUDA context, allocator fragmentation: a plan fits in 92 % of the card
FP32, LORA_BYTES = 4, {"adamw": 4 + 4 + 8, "adamw8bit": 4 + 4 + 2}  # weights, grads, moments


@dataclass(frozen=True)
class Row:
    name: str
    parameters: int
    bytes: int
    stages: tuple[str, ...]


@dataclass(frozen=True)
class MemoryPlan:
    rows: tuple[Row, ...]
    stages: dict[str, int]
    peak: int
    peak_stage: str
    gpu_memory: float | None = None
    suggestions: tuple[str, ...] = ()
    offload_activations: bool = False  # checkpointed block inputs wait in host memory (lib/train/offload.py)
    host_bytes: int = 0  # what that offloading keeps in host memory
    offloaded_peak: int | None = None  # the peak if "auto" did offload (shown when it did not need to)

    @property
    def fits(self) -> bool:
        return self.gpu_memory is None or self.peak <= self.gpu_memory * GB * (1 - RESERVE)

    def as_dict(self) -> dict:
        return {
            "rows": [
                {"name": r.name, "parameters": r.parameters, "gb": round(r.bytes / GB, 2), "stages": list(r.stages)}
                for r in self.rows
            ],
            "stages_gb": {name: round(size / GB, 2) for name, size in self.stages.items()},
            "peak_gb": round(self.peak / GB, 2),
            "peak_stage": self.peak_stage,
            "gpu_memory_gb": self.gpu_memory,
            "fits": self.fits,
            "suggestions": list(self.suggestions),
            "offload_activations": self.offload_activations,
            "host_offload_gb": round(self.host_bytes / GB, 2),
            "offloaded_peak_gb": None if self.offloaded_peak is None else round(self.offloaded_peak / GB, 2),
        }


def latent_shapes(request: TrainRequest) -> tuple[tuple[int, int, int], tuple[int, int, int], int]:
    """(F, h, w) of the target and the reference, and audio latents per track, for a request: the
    video VAE's strides, and the audio VAE's mel frames grouped as the transformer's config says
    (`audio_scale_factor` mel frames per latent; the audio VAE's class fixes it, not its config)."""
    vae, audio_vae = part_config(request.model, "vae"), part_config(request.model, "audio_vae")
    spatial, temporal = vae["spatial_compression_ratio"], vae["temporal_compression_ratio"]
    width, height = request.bucket
    frames = (request.number_of_frames - 1) // temporal + 1
    target = (frames, height // spatial, width // spatial)
    scale = request.reference_downscale_factor  # 1 where the bucket has no exact 1/2
    reference = (frames, max(1, height // scale // spatial), max(1, width // scale // spatial))
    samples = request.number_of_frames / request.frame_rate * audio_vae["sample_rate"]
    mel_frames = int(samples) // audio_vae["mel_hop_length"] + 1
    return target, reference, math.ceil(mel_frames / part_config(request.model, "transformer")["audio_scale_factor"])


def quantized_bytes(weights: int, rows: int, precision: str, base: int) -> int:
    """Bytes of `weights` Linear weights with `rows` output rows at `precision` (base: bf16/fp32 bytes)."""
    if precision == "int8":
        return weights + rows * base  # torchao: int8 values + a per-row scale in the base dtype
    if precision == "fp8":
        return weights + rows * FP32  # float8 values + an fp32 per-row scale
    if precision == "nf4":
        # 4 bits, an int8 absmax per block, an fp32 scale per block of those (double quantization)
        return weights // 2 + weights // NF4_BLOCK + weights // (NF4_BLOCK * NF4_SECOND_BLOCK) * FP32
    return weights * base


@lru_cache(maxsize=4)
def _counts(model: str):
    from lib.model.meta_model import count_parts

    return count_parts(model)


@lru_cache(maxsize=64)
def _activations(model: str, target, reference, audio: int, rank: int, device: str, base_precision: str):
    import torch

    from lib.train.step_cost import count_activations

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # fp8 keeps what int8 keeps (torchao dequantizes either for the matmul): one count for both
    precision = "int8" if base_precision == "fp8" else base_precision
    return count_activations(model, target, reference, audio, rank, dtype, device, precision)


def _weight_bytes(count, precision: str | None, base: int) -> int:
    """Bytes of a part (or block) whose quantizable Linears are stored at `precision`."""
    size = count.parameters * base
    if precision is None:
        return size
    return size + quantized_bytes(count.quantizable, count.quantizable_rows, precision, base) - count.quantizable * base


def block_bytes(model: str, target, reference, audio: int, rank: int, base_precision: str) -> tuple[int, int]:
    """(base weights, activations kept for its backward) of one transformer block on CUDA, as the
    plan counts them: what bench/real_width_block.py measures on a real-width block."""
    from lib.model.meta_model import count_block

    counted = _activations(model, tuple(target), tuple(reference), audio, rank, "cuda", base_precision)
    return _weight_bytes(count_block(model), base_precision, 2), counted.per_layer


@lru_cache(maxsize=8)
def _lora(model: str, rank: int) -> int:
    from lib.train.step_cost import lora_parameters

    return lora_parameters(model, rank)


def plan_memory(
    request: TrainRequest, device: str = "cuda", gpu_memory: float | None = None, suggest: bool = True
) -> MemoryPlan:
    """The plan for `request` on a `device` ("cuda": bf16 with gradient checkpointing; "cpu": fp32
    without, as this project trains there). `gpu_memory` in GB, when known, decides `fits`, and
    whether the request's offload_activations="auto" offloads."""
    offload = device == "cuda" and request.offload_activations == "on"
    plan = _plan(request, device, gpu_memory, offload)
    if device == "cuda" and request.offload_activations == "auto":
        offloaded = _plan(request, device, gpu_memory, offload=True)
        plan = offloaded if not plan.fits else replace(plan, offloaded_peak=offloaded.peak)
    if suggest and not plan.fits:
        plan = replace(plan, suggestions=tuple(settings_that_fit(request, device, gpu_memory)))
    return plan


def _plan(request: TrainRequest, device: str, gpu_memory: float | None, offload: bool) -> MemoryPlan:
    base = 2 if device == "cuda" else 4
    counts = _counts(request.model)
    precisions = {"transformer": request.base_precision, "text_encoder": text_encoder_precision(request.base_precision)}
    rows = []
    for name, count in counts.items():
        size = _weight_bytes(count, precisions.get(name), base)
        rows.append(Row(name, count.parameters, size, tuple(s for s, parts in STAGE_PARTS.items() if name in parts)))
    lora = _lora(request.model, request.rank)
    rows.append(
        Row(
            f"LoRA rank {request.rank}: weights + grads + {request.optimizer}",
            lora,
            lora * LORA_BYTES[request.optimizer],
            ("train",),
        )
    )
    target, reference, audio = latent_shapes(request)
    counted = _activations(request.model, target, reference, audio, request.rank, device, request.base_precision)
    activations, host = _training_activations(counted, checkpointed=device == "cuda", offload=offload)
    label = {(True, False): " (gradient checkpointing)", (True, True): " (checkpointed, inputs on host)"}
    rows.append(Row("activations" + label.get((device == "cuda", offload), ""), 0, activations, ("train",)))
    rows.extend(_stage_activations(request, counts, base, counted.largest))
    stages = {stage: sum(r.bytes for r in rows if stage in r.stages) for stage in STAGE_PARTS}
    stages["validate"] += lora * FP32 * (1 if not request.validation_every else LORA_BYTES[request.optimizer] // FP32)
    peak_stage = max(stages, key=stages.get)
    return MemoryPlan(
        tuple(rows), stages, stages[peak_stage], peak_stage, gpu_memory, offload_activations=offload, host_bytes=host
    )


def _training_activations(counted, checkpointed: bool, offload: bool) -> tuple[int, int]:
    """(GPU bytes, host bytes) of a training step's activations. Checkpointing keeps each block's
    inputs and recomputes one block at a time; offloading moves those inputs to the host, leaving
    the first block's and the one being brought back. While a block runs backward its input
    gradients are alive beside what it saved: about 0.8 of its saved bytes (measured with
    bench/gpu.py --preset tiny against peak RSS growth)."""
    working = int(BACKWARD_WORKING * counted.per_layer)
    if not checkpointed:  # each block keeps what it saves, its inputs included
        return counted.outside_blocks + counted.layers * (counted.per_layer + counted.inputs_saved) + working, 0
    if offload:
        host = (counted.layers - 1) * counted.block_output
        return counted.outside_blocks + 2 * counted.block_output + counted.per_layer + working, host
    return counted.outside_blocks + counted.layers * counted.block_output + counted.per_layer + working, 0


def offload_decision(plan: MemoryPlan | None) -> bool:
    """Whether the request's offload_activations="auto" offloads: when its plan needed it to fit."""
    return plan is not None and plan.offload_activations


def _stage_activations(request: TrainRequest, counts, base: int, largest_training: int) -> list[Row]:
    """Estimates for the no-gradient stages: the text encoder's hidden states (every layer is
    kept: the connectors read them all), the VAE encoder's widest feature maps (three alive at
    once), and sampling (the widest tensors of one block per guidance pass) plus a tiled decode."""
    text_config = part_config(request.model, "text_encoder").text_config
    hidden, layers = text_config.hidden_size, text_config.num_hidden_layers
    text = (layers + 1) * max_sequence_length(request.model) * hidden * base * 2
    vae = part_config(request.model, "vae")
    width, height = request.bucket
    first = vae["block_out_channels"][0]
    encode = 3 * request.number_of_frames * (height // vae["patch_size"]) * (width // vae["patch_size"]) * first * base
    tile = 3 * 16 * (512 // vae["patch_size"]) ** 2 * first * base  # 16 frames of 512x512 px per tile
    vwidth, vheight = request.validation_bucket
    scale = (vwidth * vheight * request.validation_number_of_frames) / (width * height * request.number_of_frames)
    sampling = int(4 * largest_training * scale)
    return [
        Row("text encoder activations", 0, text, ("text",)),
        Row("VAE encode activations", 0, encode, ("encode",)),
        Row("sampling + tiled decode activations", 0, sampling + tile, ("validate",)),
    ]


def settings_that_fit(request: TrainRequest, device: str, gpu_memory: float) -> list[str]:
    """Up to three nearby requests that fit: a lower base precision or the 8-bit optimizer first,
    then a smaller resolution, then fewer frames."""
    order = ["bf16", "int8", "nf4"]
    start = order.index(request.base_precision) if request.base_precision in order else 1
    optimizers = list(dict.fromkeys([request.optimizer, "adamw8bit"]))
    resolutions = [r for r in BUCKETS if list(BUCKETS).index(r) <= list(BUCKETS).index(request.resolution)][::-1]
    frames = [f for f in dict.fromkeys((request.number_of_frames, 49, 25)) if f <= request.number_of_frames]
    found = []
    for frame_count in frames:
        for resolution in resolutions:
            for precision, optimizer in ((p, o) for p in order[start:] for o in optimizers):
                candidate = request.model_copy(
                    update={
                        "base_precision": precision,
                        "optimizer": optimizer,
                        "resolution": resolution,
                        "number_of_frames": frame_count,
                        "offload_activations": "on" if request.offload_activations == "on" else "auto",
                    }
                )
                plan = plan_memory(candidate, device, gpu_memory, suggest=False)
                if plan.fits:
                    found.append(_describe_change(request, candidate, plan))
                    break
            if len(found) == 3:
                return found
    return found


def _describe_change(request: TrainRequest, candidate: TrainRequest, plan: MemoryPlan) -> str:
    names = ("offload_activations", "base_precision", "optimizer", "resolution", "number_of_frames")
    changed = [
        f"{name}={getattr(candidate, name)}" for name in names if getattr(candidate, name) != getattr(request, name)
    ]
    return f"{', '.join(changed)} (peak {plan.peak / GB:.1f} GB)"


def format_rows(plan: MemoryPlan) -> list[str]:
    """The table of parts with their bytes and stages, then the stage peaks and the peak."""
    lines = [f"{'part':<48} {'parameters':>12} {'GB':>8}  resident in", "-" * 90]
    for row in plan.rows:
        params = (
            f"{row.parameters / 1e9:.2f} B"
            if row.parameters >= 1e7
            else f"{row.parameters:,}"
            if row.parameters
            else ""
        )
        lines.append(f"{row.name:<48} {params:>12} {row.bytes / GB:>8.2f}  {', '.join(row.stages)}")
    return lines + [
        "",
        "stage peaks: " + ", ".join(f"{name} {size / GB:.1f} GB" for name, size in plan.stages.items()),
        f"peak: {plan.peak / GB:.1f} GB ({plan.peak_stage})",
    ]


def format_plan(plan: MemoryPlan, request: TrainRequest) -> str:
    """The plan as a table, for people."""
    width, height, factor = *request.bucket, request.reference_downscale_factor
    lines = [
        f"Memory plan: {request.model}, {request.base_precision} base, {request.optimizer}, rank {request.rank}, "
        f"{width}x{height}, {request.number_of_frames} frames, reference 1/{factor}",
        "",
        *format_rows(plan),
    ]
    if plan.offload_activations:
        lines.append(f"activation offloading on: {plan.host_bytes / GB:.1f} GB of block inputs wait in host memory")
    elif plan.offloaded_peak is not None:
        lines.append(
            f"with activation offloading: {plan.offloaded_peak / GB:.1f} GB "
            "(offload_activations=auto turns it on where the GPU's memory needs it)"
        )
    if plan.gpu_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"{verdict} in {plan.gpu_memory:g} GB (keeping {RESERVE:.0%} for the CUDA context and fragmentation)"
        )
    lines += [f"  would fit: {suggestion}" for suggestion in plan.suggestions]
    return "\n".join(lines)


def declared_gpu_memory() -> float | None:
    """GB of GPU memory this worker declares ($AV2AV_GPU_MEMORY_GB), else its first GPU's, else None."""
    declared = os.environ.get(GPU_MEMORY_ENV)
    if declared:
        try:
            return float(declared)
        except ValueError as error:
            raise InvalidRequest(f"{GPU_MEMORY_ENV}: {declared!r} is not a number of GB.") from error
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory / GB
    return None


def check_fits(request: TrainRequest, gpu_memory: float | None) -> MemoryPlan | None:
    """Refuse (InvalidRequest) a request whose plan exceeds `gpu_memory` GB, naming settings that fit."""
    if gpu_memory is None or request.model == "tiny":  # the tiny preset trains on any CPU
        return None
    plan = plan_memory(request, "cuda", gpu_memory)
    if not plan.fits:
        fixes = "; ".join(plan.suggestions) or "none of the nearby settings; use a GPU with more memory"
        raise InvalidRequest(
            f"base_precision/resolution/number_of_frames: this request needs about {plan.peak / GB:.1f} GB of GPU "
            f"memory (peak while {plan.peak_stage}ing: base_precision={request.base_precision}, "
            f"resolution={request.resolution}, number_of_frames={request.number_of_frames}, rank={request.rank}, "
            f"offload_activations={request.offload_activations}), "
            f"more than the {gpu_memory:g} GB the GPU pool declares allows ({1 - RESERVE:.0%} of it). "
            f"Settings that fit: {fixes}. `av2av plan --config request.json` shows the whole plan."
        )
    return plan
