"""GPU-side tasks: latent pre-encoding (cached by content) and LoRA training (with progress)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.errors import TrainingDiverged
from lib.core.plan import RunPlan, ValidationPlan
from lib.core.progress import Progress
from lib.core.storage import FileRef
from lib.model import encoding
from lib.model.lifetime import DECODE_PARTS, TEXT_PARTS, acquire, free_device_memory, keep_only, release
from lib.train import worker
from lib.train.lora_io import add_lora, load_lora_state, read_lora
from tasks import model_cache
from tasks.parent_run import PROGRESS_KEY, ParentRun

PROGRESS_EVERY = 10  # steps between progress updates (artifact + log line)


@task(task_run_name="encode-{clip.sha256:.12}", cache_policy=NO_CACHE)
def encode_latents(clip: FileRef, plan: RunPlan, cache: Cache) -> FileRef:
    """Latents of one conformed clip. Not Prefect-cached on purpose: the content-addressed cache
    (lib.core.cache) is the authority, and its key holds the loaded model's identity (weights source,
    configs, dtype), which the task's inputs cannot see."""
    return encoding.encode_clip(model_cache.for_plan(plan), clip, cache, plan.conditioning.reference_downscale)


@task(cache_policy=NO_CACHE)
def encode_texts(clips: list[FileRef], plan: RunPlan, cache: Cache) -> FileRef | None:
    """Every caption not encoded yet, and the negative prompt when there are validation samples,
    into the prompt cache; then the text encoder and connectors are released for good."""
    components = model_cache.for_plan(plan)
    downscale = plan.conditioning.reference_downscale
    try:
        pending = encoding.encode_captions(components, clips, cache, downscale)
        get_run_logger().info("%d of %d clip(s) need latents: their captions are encoded first", pending, len(clips))
        if plan.validation.clips:
            return encoding.encode_prompt(components, plan.validation.negative_prompt, cache)
        return None
    finally:
        release(components, *TEXT_PARTS)


def run_and_parent_logger(parent: ParentRun):
    """Log to this run and mirror the line onto the run the user started."""
    logger = get_run_logger()

    def log(line: str) -> None:
        logger.info(line)
        parent.info(line)

    return log


def _progress_reporter(total_steps: int, parent: ParentRun):
    """Step, loss, it/s and ETA: a bar on the CLI's terminal, else log lines here and on the parent
    run; the progress artifact on both runs."""
    artifacts = [create_progress_artifact(progress=0.0, key=PROGRESS_KEY, description="LoRA training progress")]
    artifacts += [a for a in [parent.artifact("progress", 0.0, "LoRA training progress", key=PROGRESS_KEY)] if a]
    progress = Progress(total_steps, "training", log=run_and_parent_logger(parent), unit="step")

    def report(event: dict) -> None:
        step = event["step"]
        progress.update(step, loss=event["loss"], video=event["video_loss"], audio=event["audio_loss"])
        if step % PROGRESS_EVERY == 0 or step == total_steps:
            for artifact_id in artifacts:
                update_progress_artifact(artifact_id=artifact_id, progress=100.0 * step / total_steps)
        if step == total_steps:
            progress.close()

    return report


def _periodic_validation(job: worker.TrainJob, components):
    logger = get_run_logger()
    plan = job.plan

    def maybe_render(event: dict) -> None:
        step = event["step"]
        if step % plan.validation.every or step == plan.train.steps:  # the final reel comes after training
            return
        path = Path(job.output_dir) / f"validation-step{step:06d}.mp4"
        _render(components, plan, path, logger.info)
        release(components, *DECODE_PARTS)  # back to training's footprint
        logger.info("validation reel at step %d: %s", step, path)

    return maybe_render


@task(cache_policy=NO_CACHE)
def train_lora_task(job: worker.TrainJob, gpus: int = 1, parent_run_id: str | None = None) -> list[float]:
    """Train in this process (one device), or under torchrun with one process per GPU."""
    periodic = bool(job.plan.validation.every and job.plan.validation.latents)
    if gpus > 1:
        if periodic:
            get_run_logger().warning("validation_every is not rendered during multi-GPU training; the final reel is.")
        model_cache.forget()  # free this process's copy: every rank loads its own
        free_device_memory()  # and hand its cached CUDA blocks back before the ranks start
        return _train_distributed(job, gpus)
    components = keep_only(model_cache.for_plan(job.plan), "transformer")
    callbacks = [_progress_reporter(job.plan.train.steps, ParentRun(parent_run_id))]
    if periodic:
        callbacks.append(_periodic_validation(job, components))

    def on_step(event: dict) -> None:
        for callback in callbacks:
            callback(event)

    return worker.run_job(job, components, on_step).losses


def _train_distributed(job: worker.TrainJob, gpus: int) -> list[float]:
    output = Path(job.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    job_file = output / "train_job.json"
    job_file.write_text(job.model_dump_json())
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "lib.train.worker",
        str(job_file),
    ]
    completed = subprocess.run(command, env=os.environ.copy())
    if completed.returncode:
        note = output / worker.DIVERGED_NOTE
        if note.is_file():  # torchrun reports its own exit status, not the worker's
            raise TrainingDiverged(note.read_text())
        raise subprocess.CalledProcessError(completed.returncode, command)
    import json

    return json.loads((output / "losses.json").read_text())


@task(cache_policy=NO_CACHE)
def render_validation(plan: RunPlan, path: Path, lora_path: Path, parent_run_id: str | None = None) -> Path:
    components = acquire(model_cache.for_plan(plan), "transformer")
    if not getattr(components.transformer, "peft_config", None):  # trained in other processes (torchrun)
        state, info = read_lora(lora_path)
        add_lora(components.transformer, info["rank"], plan.train.seed)
        load_lora_state(components.transformer, state)
    return _render(components, plan, path, run_and_parent_logger(ParentRun(parent_run_id)))


def _render(components, plan: RunPlan, path: Path, log=None) -> Path:
    from lib.validate.preview import render_reel

    validation: ValidationPlan = plan.validation
    negative_text = encoding.load_prompt(validation.negative_text.path)
    with Progress(
        len(validation.clips), f"validation samples for {path.name}", log=log, unit="sample", every_s=0
    ) as progress:
        return render_reel(
            components,
            [c.path for c in validation.clips],
            [f.path for f in validation.latents],
            negative_text,
            validation.sampler,
            path,
            plan.conditioning,
            on_sample=lambda done: progress.update(done),
        )
