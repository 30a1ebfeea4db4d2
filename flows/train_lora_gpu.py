"""`train-lora-gpu`: the heavy half, on a GPU work pool. One flow run holds the GPU for latent
encoding, training and validation, so the model is loaded once. Every setting comes in the run
plan the CPU flow derived from the request (lib/core/plan.py); the data comes through the cache
(lib/core/cache.py): the conformed clips by name and hash, read from the cache location into this
worker's local copy, so the two pools need no shared filesystem."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import flow, unmapped

from flows.refusals import refused
from lib.core.cache import Cache
from lib.core.errors import TrainingDiverged
from lib.core.handback import TrainingGpuResult
from lib.core.housekeeping import gpu_entry, mark_owner
from lib.core.plan import RunPlan, ValidationInputs
from lib.core.progress import Progress, listening
from lib.core.storage import FileRef
from lib.model import process_cache
from lib.publish.outputs import hand_back_training
from lib.train.worker import TrainJob, checkpoint_folder
from tasks.housekeeping import sweep_stale_runs
from tasks.parent_run import ParentRun, run_and_parent_logger
from tasks.training import encode_latents, encode_texts, render_validation, train_lora_task


def _encode(clips: list[FileRef], plan: RunPlan, cache: Cache, label: str, log) -> list[FileRef]:
    if not clips:
        return []
    futures = encode_latents.map(clips, unmapped(plan), unmapped(cache))
    with Progress(len(futures), label, log=log, unit="clip") as progress:
        for done, future in enumerate(futures, 1):
            future.wait()
            progress.update(done)
    return [future.result() for future in futures]


@flow(name="train-lora-gpu", log_prints=True)
def train_lora_gpu(
    plan: RunPlan,
    clips: list[FileRef],
    run_id: str,
    cache_url: str,
    gpus: int | None = None,
    parent_run_id: str | None = None,
) -> TrainingGpuResult:
    """Encode (cached) → train → validate; the LoRA, loss curve and reels go to the cache's
    `runs/<run_id>/gpu/`, where the CPU flow picks them up; returns what it handed back there.

    `clips`: conformed clips, by cache entry and hash. `cache_url`: the cache location the CPU flow
    wrote them to (a folder on one machine, an object-store URL across machines). `gpus` None uses
    every GPU this worker sees (CUDA_VISIBLE_DEVICES); more than one trains under torchrun (DDP).
    `parent_run_id`: the `train-lora` run that started this one, which gets a link here and a
    copy of the progress. A diverged run ends Failed, named TrainingDiverged, handing nothing back.
    """
    try:
        return _train_gpu(plan, clips, run_id, cache_url, gpus, parent_run_id)
    except TrainingDiverged as error:
        return refused(error)


def _train_gpu(
    plan: RunPlan, clips: list[FileRef], run_id: str, cache_url: str, gpus: int | None, parent_run_id: str | None
) -> TrainingGpuResult:
    cache = Cache.current(cache_url)
    sweep_stale_runs(cache, location=False)  # the CPU flow sweeps the location
    output = cache.path(gpu_entry(run_id))
    mark_owner(output, run_id)
    gpus = gpus or max(1, torch.cuda.device_count())
    parent = ParentRun(parent_run_id)
    parent.link_child(
        "Training runs on the GPU pool as {link}: encoding, training and validation logs are there; "
        "progress is mirrored here."
    )
    log = run_and_parent_logger(parent)
    try:
        with listening(log):  # model loads and cache warnings reach this run and the parent
            # Text first, then the VAEs, then the transformer: each part is resident only while needed.
            negative_text = encode_texts([*clips, *plan.validation.clips], plan, cache)
            latents = _encode(clips, plan, cache, "encoding training clips", log)
            validation_latents = _encode(plan.validation.clips, plan, cache, "encoding validation samples", log)
            # The plan stays as derived; what only this worker knows travels beside it in the job.
            validation = ValidationInputs.on_this_worker(
                cache, plan.validation.clips, validation_latents, negative_text
            )
            job = TrainJob(
                plan=plan,
                latents=[ref.path for ref in latents],
                validation=validation,
                output_dir=str(output),
                checkpoint_dir=str(checkpoint_folder(run_id)),
            )
            losses = train_lora_task(job, gpus, parent_run_id)
            if validation.clips:
                render_validation(
                    plan, validation, output / "validation.mp4", output / "lora.safetensors", parent_run_id
                )
    finally:
        process_cache.forget()  # the cached transformer now carries this run's LoRA
    return hand_back_training(cache, run_id, plan, losses, output, Path(job.checkpoint_dir))
