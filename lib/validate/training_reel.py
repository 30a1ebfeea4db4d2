"""The validation reels of a training run: every `validation_every` steps while the LoRA trains
in this process, and once at the end (onto a transformer that may have trained elsewhere, under
torchrun). The plan says how to sample; the GPU-local files come beside it (ValidationInputs)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from lib.core.plan import RunPlan, ValidationInputs
from lib.core.progress import Progress
from lib.model import Components, acquire
from lib.model.encoding import load_prompt
from lib.model.lifetime import DECODE_PARTS, release
from lib.train.worker import TrainJob, attach_trained_lora
from lib.validate.preview import render_reel


def render(
    components: Components,
    plan: RunPlan,
    inputs: ValidationInputs,
    path: Path,
    log: Callable[[str], None] | None = None,
) -> Path:
    """One reel of every validation sample with the transformer as it is now."""
    negative_text = load_prompt(inputs.negative_text)
    with Progress(
        len(inputs.clips), f"validation samples for {path.name}", log=log, unit="sample", every_s=0
    ) as progress:
        return render_reel(
            components,
            inputs.clips,
            inputs.latents,
            negative_text,
            plan.validation.sampler,
            path,
            conditioning=plan.conditioning,
            on_sample=lambda done: progress.update(done),
        )


def periodic_reels(job: TrainJob, components: Components, log: Callable[[str], None]) -> Callable[[dict], None]:
    """A training step callback: `validation-step<N>.mp4` every `validation.every` steps (the final
    reel comes after training), then back to training's footprint."""
    plan = job.plan

    def maybe_render(event: dict) -> None:
        step = event["step"]
        if step % plan.validation.every or step == plan.train.steps:
            return
        path = Path(job.output_dir) / f"validation-step{step:06d}.mp4"
        render(components, plan, job.validation, path, log)
        release(components, *DECODE_PARTS)
        log(f"validation reel at step {step}: {path}")

    return maybe_render


def final_reel(
    components: Components,
    plan: RunPlan,
    inputs: ValidationInputs,
    path: Path,
    lora_path: Path,
    log: Callable[[str], None] | None = None,
) -> Path:
    """The reel after training, the trained LoRA attached (read from `lora_path` when the
    transformer trained in other processes)."""
    components = acquire(components, "transformer")
    attach_trained_lora(components.transformer, lora_path, plan.train.seed)
    return render(components, plan, inputs, path, log)
