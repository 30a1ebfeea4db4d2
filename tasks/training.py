"""GPU-side tasks of `train-lora-gpu`: the text stage, latent pre-encoding, LoRA training (with
progress on this run and the parent) and the final validation reel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.plan import RunPlan, ValidationInputs
from lib.core.progress import Progress
from lib.core.storage import FileRef
from lib.model import encoding, keep_only, process_cache, prompts
from lib.train import worker
from lib.validate import training_reel
from tasks.parent_run import PROGRESS_KEY, ParentRun, progress_artifacts, run_and_parent_logger

PROGRESS_EVERY = 10  # steps between progress updates (artifact + log line)


@task(task_run_name="encode-{clip.sha256:.12}", cache_policy=NO_CACHE)
def encode_latents(clip: FileRef, plan: RunPlan, cache: Cache) -> FileRef:
    """Latents of one conformed clip. Not Prefect-cached on purpose: the content-addressed cache
    (lib.core.cache) is the authority, and its key holds the loaded model's identity (weights source,
    configs, dtype), which the task's inputs cannot see."""
    return encoding.encode_clip(process_cache.for_plan(plan), clip, cache, plan.conditioning.reference_downscale)


@task(cache_policy=NO_CACHE)
def encode_texts(clips: list[FileRef], plan: RunPlan, cache: Cache) -> FileRef | None:
    """Every caption not encoded yet, and the negative prompt when there are validation samples,
    into the prompt cache; then the text encoder and connectors are released for good."""
    logger = get_run_logger()
    return prompts.encode_texts(
        process_cache.for_plan(plan),
        clips,
        cache,
        plan.conditioning.reference_downscale,
        plan.validation.negative_prompt if plan.validation.clips else None,
        lambda pending: logger.info(
            "%d of %d clip(s) need latents: their captions are encoded first", pending, len(clips)
        ),
    )


def _progress_reporter(total_steps: int, parent: ParentRun) -> Callable[[dict], None]:
    """Step, loss, it/s and ETA: a bar on the CLI's terminal, else log lines here and on the parent
    run; the progress artifact on both runs."""
    artifacts = progress_artifacts(parent, "LoRA training progress", PROGRESS_KEY)
    progress = Progress(total_steps, "training", log=run_and_parent_logger(parent), unit="step")

    def report(event: dict) -> None:
        step = event["step"]
        progress.update(step, loss=event["loss"], video=event["video_loss"], audio=event["audio_loss"])
        if step % PROGRESS_EVERY == 0 or step == total_steps:
            artifacts(100.0 * step / total_steps)
        if step == total_steps:
            progress.close()

    return report


@task(cache_policy=NO_CACHE)
def train_lora_task(job: worker.TrainJob, gpus: int = 1, parent_run_id: str | None = None) -> list[float]:
    """Train in this process (one device), or under torchrun with one process per GPU."""
    periodic = bool(job.plan.validation.every and job.validation.latents)
    if gpus > 1:
        if periodic:
            get_run_logger().warning("validation_every is not rendered during multi-GPU training; the final reel is.")
        return worker.launch(job, gpus)
    components = keep_only(process_cache.for_plan(job.plan), "transformer")
    callbacks = [_progress_reporter(job.plan.train.steps, ParentRun(parent_run_id))]
    if periodic:
        callbacks.append(training_reel.periodic_reels(job, components, get_run_logger().info))

    def on_step(event: dict) -> None:
        for callback in callbacks:
            callback(event)

    return worker.run_job(job, components, on_step).losses


@task(cache_policy=NO_CACHE)
def render_validation(
    plan: RunPlan, inputs: ValidationInputs, path: Path, lora_path: Path, parent_run_id: str | None = None
) -> Path:
    """The final reel, the trained LoRA attached (from its file when torchrun trained it)."""
    log = run_and_parent_logger(ParentRun(parent_run_id))
    return training_reel.final_reel(process_cache.for_plan(plan), plan, inputs, path, lora_path, log)
