"""`train-lora-gpu`: the heavy half, on a GPU work pool. One flow run holds the GPU for latent
encoding, training and validation, so the model is loaded once. Every setting comes in the run
plan the CPU flow derived from the request (lib/plan.py)."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from prefect import flow, unmapped

from lib.outputs import loss_curve
from lib.plan import RunPlan
from lib.progress import Progress
from lib.reel import animated_previews
from lib.storage import FileRef, work_dir
from lib.worker import TrainJob
from tasks import model_cache
from tasks.parent_run import ParentRun
from tasks.training import encode_latents, render_validation, run_and_parent_logger, train_lora_task

GPU_RESULT = "gpu_result.json"


def checkpoint_folder(output_dir: str) -> Path:
    """Where checkpoints are kept on the GPU worker: outside the run's staging folder, which is
    removed after upload, so a run can be resumed from them (README, "Checkpoints")."""
    return work_dir() / "checkpoints" / Path(output_dir).name


def files_to_upload(output: Path, checkpoints: list[Path], upload_checkpoints: bool) -> dict[str, Path]:
    """The LoRA, loss curve and reels; checkpoints (optimizer state included) only when asked."""
    names = ["lora.safetensors", "loss.png", "validation.mp4"]
    files = {name: output / name for name in names if (output / name).is_file()}
    files |= {path.name: path for path in sorted(output.glob("validation-step*.mp4"))}
    if upload_checkpoints:
        files |= {f"checkpoints/{path.name}": path for path in checkpoints}
    return files


def _encode(clips: list[FileRef], plan: RunPlan, label: str, log) -> list[FileRef]:
    if not clips:
        return []
    futures = encode_latents.map(clips, unmapped(plan), unmapped(work_dir()))
    with Progress(len(futures), label, log=log, unit="clip") as progress:
        for done, future in enumerate(futures, 1):
            future.wait()
            progress.update(done)
    return [future.result() for future in futures]


@flow(name="train-lora-gpu", log_prints=True)
def train_lora_gpu(plan: RunPlan, clips: list[FileRef], output_dir: str, gpus: int | None = None,
                   parent_run_id: str | None = None) -> dict:
    """Encode (cached) → train → validate; writes the LoRA, loss curve and reels to `output_dir`.

    `gpus` None uses every GPU this worker sees (CUDA_VISIBLE_DEVICES); more than one trains
    under torchrun (DDP). `parent_run_id`: the `train-lora` run that started this one, which gets
    a link here and a copy of the progress.
    """
    output = Path(output_dir)
    gpus = gpus or max(1, torch.cuda.device_count())
    parent = ParentRun(parent_run_id)
    parent.link_child()
    log = run_and_parent_logger(parent)
    try:
        latents = _encode(clips, plan, "encoding training clips", log)
        validation_latents = _encode(plan.validation.clips, plan, "encoding validation samples", log)
        validation = plan.validation.model_copy(update={"latents": validation_latents})
        plan = plan.model_copy(update={"validation": validation})
        job = TrainJob(plan=plan, latents=[ref.path for ref in latents], output_dir=str(output),
                       checkpoint_dir=str(checkpoint_folder(output_dir)))
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
    result = {"files": {name: str(path) for name, path in files.items()}, "final_loss": losses[-1],
              "steps": len(losses), "checkpoints_kept_in": job.checkpoint_dir if checkpoints else None,
              "previews": [str(path) for path in previews]}
    (output / GPU_RESULT).write_text(json.dumps(result))  # read by the CPU flow across processes
    return result
