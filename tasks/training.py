"""GPU-side tasks: latent pre-encoding (cached by content) and LoRA training (with progress)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from lib import encoding, worker
from lib.lora_io import add_lora, load_lora_state, read_lora
from lib.storage import FileRef
from tasks import model_cache

PROGRESS_EVERY = 10  # steps between progress updates (artifact + log line)


@task(task_run_name="encode-{clip.sha256:.12}", cache_policy=NO_CACHE)
def encode_latents(clip: FileRef, model_name: str, model_source: str | None, cache_root: Path) -> FileRef:
    """Latents of one conformed clip. Not Prefect-cached on purpose: the on-disk cache keys on the
    loaded model's identity (weights source, configs, dtype), which the task's inputs cannot see."""
    return encoding.encode_clip(model_cache.components(model_name, model_source), clip, cache_root)


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


class ValidationPlan(BaseModel):
    """What periodic validation renders during training (validation_every)."""

    clips: list[FileRef]
    latents: list[FileRef]
    negative_prompt: str
    stg_scale: float
    seed: int
    every: int


def _periodic_validation(plan: ValidationPlan, job: worker.TrainJob, components):
    logger = get_run_logger()

    def maybe_render(event: dict) -> None:
        step = event["step"]
        if step % plan.every or step == job.settings["steps"]:  # the final reel is rendered after training
            return
        path = Path(job.output_dir) / f"validation-step{step:06d}.mp4"
        _render(components, plan.clips, plan.latents, plan.negative_prompt, plan.stg_scale, plan.seed,
                job.model, path)
        logger.info("validation reel at step %d: %s", step, path)
    return maybe_render


@task(cache_policy=NO_CACHE)
def train_lora_task(job: worker.TrainJob, gpus: int = 1, validation: ValidationPlan | None = None) -> list[float]:
    """Train in this process (one device), or under torchrun with one process per GPU."""
    if gpus > 1:
        if validation is not None:
            get_run_logger().warning("validation_every is not rendered during multi-GPU training; "
                                     "the final reel is.")
        model_cache.forget()  # free this process's copy: every rank loads its own
        return _train_distributed(job, gpus)
    components = model_cache.components(job.model, job.model_source)
    callbacks = [_progress_reporter(job.settings["steps"])]
    if validation is not None:
        callbacks.append(_periodic_validation(validation, job, components))

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
def render_validation(model_name: str, model_source: str | None, clips: list[FileRef], latents_files: list[FileRef],
                      negative_prompt: str, stg_scale: float, seed: int, path: Path, lora_path: Path) -> Path:
    components = model_cache.components(model_name, model_source)
    if not getattr(components.transformer, "peft_config", None):  # trained in other processes (torchrun)
        state, info = read_lora(lora_path)
        add_lora(components.transformer, info["rank"], seed)
        load_lora_state(components.transformer, state)
    return _render(components, clips, latents_files, negative_prompt, stg_scale, seed, model_name, path)


def _render(components, clips, latents_files, negative_prompt, stg_scale, seed, model_name, path) -> Path:
    from lib.preview import render_reel
    from lib.sampling import SamplerSettings

    settings = SamplerSettings(steps=sampler_steps(model_name), seed=seed, stg_scale=stg_scale)
    return render_reel(components, [c.path for c in clips], [f.path for f in latents_files],
                       negative_prompt, settings, path)


def sampler_steps(model_name: str) -> int:
    # The tiny preset is random: a few steps show the plumbing; the real model needs ~30.
    return 30 if model_name == "ltx-2.3" else 4
