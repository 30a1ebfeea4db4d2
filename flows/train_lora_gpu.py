"""`train-lora-gpu`: the heavy half, on a GPU work pool. One flow run holds the GPU for latent
encoding, training and validation, so the model is loaded once. Every setting comes in the run
plan the CPU flow derived from the request (lib/core/plan.py); the data comes through the cache
(lib/core/cache.py): the conformed clips by name and hash, read from the cache location into this
worker's local copy, so the two pools need no shared filesystem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from prefect import flow, get_run_logger, unmapped
from prefect.states import Failed

from lib.core.cache import Cache
from lib.core.errors import TrainingDiverged
from lib.core.housekeeping import GPU_RESULT, gpu_entry, mark_owner
from lib.core.plan import RunPlan
from lib.core.progress import Progress, listening
from lib.core.storage import FileRef, work_dir
from lib.publish.outputs import loss_curve
from lib.train.worker import TrainJob
from lib.validate.reel import animated_previews
from tasks import model_cache
from tasks.housekeeping import sweep_stale_runs
from tasks.parent_run import ParentRun
from tasks.training import encode_latents, encode_texts, render_validation, run_and_parent_logger, train_lora_task


def checkpoint_folder(run_id: str) -> Path:
    """Where checkpoints are kept on the GPU worker: outside the run's staging folder, which is
    removed after upload, so a run can be resumed from them (README, "Checkpoints")."""
    return work_dir() / "checkpoints" / run_id


def files_to_upload(output: Path, checkpoints: list[Path], upload_checkpoints: bool) -> dict[str, Path]:
    """The LoRA, loss curve and reels; checkpoints (optimizer state included) only when asked."""
    names = ["lora.safetensors", "loss.png", "validation.mp4"]
    files = {name: output / name for name in names if (output / name).is_file()}
    files |= {path.name: path for path in sorted(output.glob("validation-step*.mp4"))}
    if upload_checkpoints:
        files |= {f"checkpoints/{path.name}": path for path in checkpoints}
    return files


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
) -> dict:
    """Encode (cached) → train → validate; the LoRA, loss curve and reels go to the cache's
    `runs/<run_id>/`, where the CPU flow picks them up.

    `clips`: conformed clips, by cache entry and hash. `cache_url`: the cache location the CPU flow
    wrote them to (a folder on one machine, an object-store URL across machines). `gpus` None uses
    every GPU this worker sees (CUDA_VISIBLE_DEVICES); more than one trains under torchrun (DDP).
    `parent_run_id`: the `train-lora` run that started this one, which gets a link here and a
    copy of the progress. A diverged run ends Failed, named TrainingDiverged, handing nothing back.
    """
    try:
        return _train_gpu(plan, clips, run_id, cache_url, gpus, parent_run_id)
    except TrainingDiverged as error:
        get_run_logger().error("TrainingDiverged: %s", error.message)
        return Failed(name="TrainingDiverged", message=error.message)


def _train_gpu(
    plan: RunPlan, clips: list[FileRef], run_id: str, cache_url: str, gpus: int | None, parent_run_id: str | None
) -> dict:
    cache = Cache.current(cache_url)
    sweep_stale_runs(cache, location=False)  # the CPU flow sweeps the location
    output = cache.path(gpu_entry(run_id))
    mark_owner(output, run_id)
    gpus = gpus or max(1, torch.cuda.device_count())
    parent = ParentRun(parent_run_id)
    parent.link_child()
    log = run_and_parent_logger(parent)
    try:
        with listening(log):  # model loads and cache warnings reach this run and the parent
            # Text first, then the VAEs, then the transformer: each part is resident only while needed.
            negative_text = encode_texts([*clips, *plan.validation.clips], plan, cache)
            latents = _encode(clips, plan, cache, "encoding training clips", log)
            validation_latents = _encode(plan.validation.clips, plan, cache, "encoding validation samples", log)
            local_clips = [ref.model_copy(update={"path": str(cache.open(ref))}) for ref in plan.validation.clips]
            if negative_text is not None:
                negative_text = negative_text.model_copy(update={"path": str(cache.open(negative_text))})
            validation = plan.validation.model_copy(
                update={"latents": validation_latents, "clips": local_clips, "negative_text": negative_text}
            )
            plan = plan.model_copy(update={"validation": validation})
            job = TrainJob(
                plan=plan,
                latents=[ref.path for ref in latents],
                output_dir=str(output),
                checkpoint_dir=str(checkpoint_folder(run_id)),
            )
            losses = train_lora_task(job, gpus, parent_run_id)
            if validation.clips:
                render_validation(plan, output / "validation.mp4", output / "lora.safetensors", parent_run_id)
    finally:
        model_cache.forget()  # the cached transformer now carries this run's LoRA
    loss_curve(losses, output / "loss.png")
    checkpoints = sorted(Path(job.checkpoint_dir).glob("*.safetensors"))
    files = files_to_upload(output, checkpoints, plan.upload_checkpoints)
    previews = []
    if "validation.mp4" in files:
        previews = animated_previews(files["validation.mp4"], plan.validation_conform.number_of_frames, output)
    return _hand_back(cache, run_id, files, previews, losses, job.checkpoint_dir if checkpoints else None)


def _hand_back(
    cache: Cache,
    run_id: str,
    files: dict[str, Path],
    previews: list[Path],
    losses: list[float],
    checkpoints_kept_in: str | None,
) -> dict:
    """Publish the outputs (and this result, for a CPU flow in another process) to the cache."""
    folder = gpu_entry(run_id)
    shared = {name: cache.share(path, f"{folder}/{name}") for name, path in files.items()}
    result = {
        "files": {name: ref.model_dump() for name, ref in shared.items()},
        "final_loss": losses[-1],
        "steps": len(losses),
        "checkpoints_kept_in": checkpoints_kept_in,
        "previews": [cache.share(path, f"{folder}/{path.name}").model_dump() for path in previews],
    }
    with cache.writing(f"{folder}/{GPU_RESULT}") as partial:
        Path(partial).write_text(json.dumps(result))
    if cache.shared:  # everything is at the location now; this worker keeps only its checkpoints
        shutil.rmtree(cache.path(folder), ignore_errors=True)
        try:
            cache.path(folder).parent.rmdir()  # runs/<id>, unless the CPU flow stages there too
        except OSError:
            pass
    return result
