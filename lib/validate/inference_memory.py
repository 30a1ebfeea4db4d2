"""The memory plan of a generation: what `generate` needs on the GPU, before a GPU is asked for.

Generation goes through three stages, each with only its parts resident (lib/model/lifetime.py):
text (text encoder + connectors encode the prompt and the negative prompt, then are released),
encode (the two VAEs encode source and references, one clip) and sample (the transformer with the
LoRA attached in fp32, the decoders, the guidance passes' activations and a tiled decode). The
numbers are lib/train/memory_plan.py's, asked through its public `plan_memory` for a training
request of the same size whose validation bucket is this one: its part rows, its encode and text
estimates and its sampling + tiled-decode estimate; the training rows are left out.
"""

from __future__ import annotations

from dataclasses import replace

from lib.core.config import TrainRequest
from lib.core.errors import InvalidRequest
from lib.core.generate import GenerateRequest
from lib.model.lifetime import STAGE_PARTS
from lib.train.memory_plan import FP32, GB, RESERVE, MemoryPlan, Row, format_rows, plan_memory

# generation's stages are training's text, encode and validate stages (the parts each keeps resident)
STAGES = {"text": STAGE_PARTS["text"], "encode": STAGE_PARTS["encode"], "sample": STAGE_PARTS["validate"]}
ACTIVATIONS = {
    "text encoder activations": "text",
    "VAE encode activations": "encode",
    "sampling + tiled decode activations": "sample",
}
PLANNED_RANKS = (8, 16, 32, 64, 128)  # what a training request accepts


def as_training_request(request: GenerateRequest, rank: int, reference_downscale: int) -> TrainRequest:
    """A training request of the same model, size and precision, validated at this request's bucket."""
    return TrainRequest(
        training_data_url="generate",
        model=request.model,
        base_precision=request.base_precision,
        rank=min(PLANNED_RANKS, key=lambda r: abs(r - rank)),
        resolution=request.resolution,
        aspect_ratio=request.aspect_ratio,
        number_of_frames=request.number_of_frames,
        frame_rate=request.frame_rate,
        validation_resolution=request.resolution,
        validation_aspect_ratio=request.aspect_ratio,
        validation_number_of_frames=request.number_of_frames,
        validation_frame_rate=request.frame_rate,
        reference_downscale=reference_downscale,
        offload_activations="off",
    )


def plan_generate_memory(
    request: GenerateRequest, rank: int, reference_downscale: int, device: str = "cuda", gpu_memory: float | None = None
) -> MemoryPlan:
    """Per part and stage, the bytes a generation with a LoRA of `rank` needs on `device`."""
    from lib.train.step_cost import lora_parameters

    training = plan_memory(as_training_request(request, rank, reference_downscale), device, None, suggest=False)
    rows = [
        replace(row, stages=tuple(s for s, parts in STAGES.items() if row.name in parts))
        for row in training.rows
        if any(row.name in parts for parts in STAGES.values())
    ]
    rows += [replace(row, stages=(ACTIVATIONS[row.name],)) for row in training.rows if row.name in ACTIVATIONS]
    lora = lora_parameters(request.model, rank)
    rows.append(Row(f"LoRA rank {rank} (fp32, no gradients)", lora, lora * FP32, ("sample",)))
    stages = {stage: sum(r.bytes for r in rows if stage in r.stages) for stage in STAGES}
    peak_stage = max(stages, key=stages.get)
    return MemoryPlan(tuple(rows), stages, stages[peak_stage], peak_stage, gpu_memory)


def format_generate_plan(plan: MemoryPlan, request: GenerateRequest, rank: int, reference_downscale: int) -> str:
    width, height = request.bucket
    lines = [
        f"Memory plan (generate): {request.model}, {request.base_precision} base, LoRA rank {rank}, "
        f"{width}x{height}, {request.number_of_frames} frames, reference 1/{reference_downscale}",
        "",
        *format_rows(plan),
    ]
    if plan.gpu_memory is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        lines.append(
            f"{verdict} in {plan.gpu_memory:g} GB (keeping {RESERVE:.0%} for the CUDA context and fragmentation)"
        )
    return "\n".join(lines)


def check_generate_fits(
    request: GenerateRequest, rank: int, reference_downscale: int, gpu_memory: float | None
) -> MemoryPlan | None:
    """Refuse (InvalidRequest) a generation whose plan exceeds `gpu_memory` GB, naming what to change."""
    if gpu_memory is None or request.model == "tiny":  # the tiny preset runs on any CPU
        return None
    plan = plan_generate_memory(request, rank, reference_downscale, "cuda", gpu_memory)
    if plan.fits:
        return plan
    fixes = []
    for update in (
        {"base_precision": "int8"},
        {"base_precision": "nf4"},
        {"resolution": "medium"},
        {"resolution": "low"},
    ):
        candidate = request.model_copy(update=update)
        if candidate != request and plan_generate_memory(candidate, rank, reference_downscale, "cuda", gpu_memory).fits:
            fixes.append(", ".join(f"{k}={v}" for k, v in update.items()))
    raise InvalidRequest(
        f"base_precision/resolution/number_of_frames: this generation needs about {plan.peak / GB:.1f} GB of GPU "
        f"memory (peak while {plan.peak_stage} stage runs: base_precision={request.base_precision}, resolution="
        f"{request.resolution}, number_of_frames={request.number_of_frames}), more than the {gpu_memory:g} GB "
        f"the GPU pool declares allows ({1 - RESERVE:.0%} of it). Settings that fit: "
        f"{'; '.join(fixes) or 'none of the nearby settings; use a GPU with more memory'}. "
        "`av2av plan --config generate.json` shows the whole plan."
    )
