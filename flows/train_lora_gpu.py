"""`train-lora-gpu`: the heavy half, on a GPU work pool. One flow run holds the GPU for latent
encoding, training and validation, so the model is loaded once."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped

from lib.config import TrainRequest
from lib.outputs import lora_info, loss_curve, write_config
from lib.storage import FileRef, work_dir
from lib.training import TrainSettings
from lib.worker import TrainJob
from tasks import model_cache
from tasks.training import encode_latents, train_lora_task


def train_settings(request: TrainRequest) -> dict:
    settings = TrainSettings(rank=request.rank, steps=request.number_of_steps, learning_rate=request.learning_rate,
                             seed=request.seed, warmup_steps=min(100, request.number_of_steps // 10),
                             checkpoint_every=request.checkpoint_every)
    return settings.__dict__


@flow(name="train-lora-gpu", log_prints=True)
def train_lora_gpu(request: TrainRequest, clips: list[FileRef], output_dir: str,
                   model_source: str | None = None, gpus: int = 1) -> dict:
    """Encode (cached) → train → write LoRA, config and loss curve into `output_dir`."""
    output = Path(output_dir)
    try:
        latents = encode_latents.map(clips, unmapped(request.model), unmapped(model_source),
                                     unmapped(work_dir())).result()
        job = TrainJob(model=request.model, model_source=model_source, latents=[ref.path for ref in latents],
                       settings=train_settings(request), output_dir=str(output),
                       resume_from=request.resume_from, lora_info=lora_info(request))
        losses = train_lora_task(job, gpus)
    finally:
        model_cache.forget()  # the cached transformer now carries this run's LoRA
    write_config(request, output / "config.json")
    loss_curve(losses, output / "loss.png")
    return {"lora": str(output / "lora.safetensors"), "config": str(output / "config.json"),
            "loss_curve": str(output / "loss.png"), "final_loss": losses[-1], "steps": len(losses)}
