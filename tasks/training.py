"""GPU-side tasks: latent pre-encoding (cached by content) and LoRA training (with progress)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from lib import encoding, worker
from lib.lora_io import add_lora, load_lora_state, read_lora
from lib.plan import RunPlan, ValidationPlan
from lib.storage import FileRef
from tasks import model_cache

PROGRESS_EVERY = 10  # steps between progress updates (artifact + log line)


@task(task_run_name="encode-{clip.sha256:.12}", cache_policy=NO_CACHE)
def encode_latents(clip: FileRef, plan: RunPlan, cache_root: Path) -> FileRef:
    """Latents of one conformed clip. Not Prefect-cached on purpose: the on-disk cache keys on the
    loaded model's identity (weights source, configs, dtype), which the task's inputs cannot see."""
    return encoding.encode_clip(model_cache.for_plan(plan), clip, cache_root, plan.conditioning.reference_downscale)


def _progress_reporter(total_steps: int):
    logger = get_run_logger()
    artifact_id = create_progress_artifact(progress=0.0, key="training-progress",
                                           description="LoRA training progress")

    def report(event: dict) -> None:
        step = event["step"]
        if step % PROGRESS_EVERY and step != total_steps:
            return
        update_progress_artifact(artifact_id=artifact_id, progress=100.0 * step / total_steps)
        logger.info("step %d/%d loss %.4f (video %.4f, audio %.4f) %.2f it/s ETA %.0f s",
                    step, total_steps, event["loss"], event["video_loss"], event["audio_loss"],
                    event["it_per_s"], event["eta_s"])
    return report


def _periodic_validation(job: worker.TrainJob, components):
    logger = get_run_logger()
    plan = job.plan

    def maybe_render(event: dict) -> None:
        step = event["step"]
        if step % plan.validation.every or step == plan.train.steps:  # the final reel comes after training
            return
        path = Path(job.output_dir) / f"validation-step{step:06d}.mp4"
        _render(components, plan, path)
        logger.info("validation reel at step %d: %s", step, path)
    return maybe_render


@task(cache_policy=NO_CACHE)
def train_lora_task(job: worker.TrainJob, gpus: int = 1) -> list[float]:
    """Train in this process (one device), or under torchrun with one process per GPU."""
    periodic = bool(job.plan.validation.every and job.plan.validation.latents)
    if gpus > 1:
        if periodic:
            get_run_logger().warning("validation_every is not rendered during multi-GPU training; "
                                     "the final reel is.")
        model_cache.forget()  # free this process's copy: every rank loads its own
        return _train_distributed(job, gpus)
    components = model_cache.for_plan(job.plan)
    callbacks = [_progress_reporter(job.plan.train.steps)]
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
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               "-m", "lib.worker", str(job_file)]
    subprocess.run(command, check=True, env=os.environ.copy())
    import json

    return json.loads((output / "losses.json").read_text())


@task(cache_policy=NO_CACHE)
def render_validation(plan: RunPlan, path: Path, lora_path: Path) -> Path:
    components = model_cache.for_plan(plan)
    if not getattr(components.transformer, "peft_config", None):  # trained in other processes (torchrun)
        state, info = read_lora(lora_path)
        add_lora(components.transformer, info["rank"], plan.train.seed)
        load_lora_state(components.transformer, state)
    return _render(components, plan, path)


def _render(components, plan: RunPlan, path: Path) -> Path:
    from lib.preview import render_reel

    validation: ValidationPlan = plan.validation
    return render_reel(components, [c.path for c in validation.clips], [f.path for f in validation.latents],
                       validation.negative_prompt, validation.sampler, path, plan.conditioning)
