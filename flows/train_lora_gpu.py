"""`train-lora-gpu`: the heavy half, on a GPU work pool. One flow run holds the GPU for latent
encoding, training and validation, so the model is loaded once."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from prefect import flow, unmapped

from lib.config import TrainRequest
from lib.outputs import lora_info, loss_curve, write_config
from lib.storage import FileRef, work_dir
from lib.training import TrainSettings
from lib.worker import TrainJob
from tasks import model_cache
from tasks.training import ValidationPlan, encode_latents, render_validation, train_lora_task


GPU_RESULT = "gpu_result.json"


def train_settings(request: TrainRequest) -> dict:
    settings = TrainSettings(rank=request.rank, steps=request.number_of_steps, learning_rate=request.learning_rate,
                             seed=request.seed, warmup_steps=min(100, request.number_of_steps // 10),
                             checkpoint_every=request.checkpoint_every)
    return settings.__dict__


def _encode(clips: list[FileRef], request: TrainRequest, model_source: str | None) -> list[FileRef]:
    if not clips:
        return []
    return encode_latents.map(clips, unmapped(request.model), unmapped(model_source), unmapped(work_dir())).result()


@flow(name="train-lora-gpu", log_prints=True)
def train_lora_gpu(request: TrainRequest, clips: list[FileRef], output_dir: str,
                   validation_clips: list[FileRef] | None = None, model_source: str | None = None,
                   gpus: int | None = None) -> dict:
    """Encode (cached) → train → validate; writes LoRA, config, loss curve and reel to `output_dir`.

    `gpus` None uses every GPU this worker sees (CUDA_VISIBLE_DEVICES); more than one trains
    under torchrun (DDP).
    """
    output = Path(output_dir)
    gpus = gpus or max(1, torch.cuda.device_count())
    validation_clips = validation_clips or []
    try:
        latents = _encode(clips, request, model_source)
        validation_latents = _encode(validation_clips, request, model_source)
        job = TrainJob(model=request.model, model_source=model_source, latents=[ref.path for ref in latents],
                       settings=train_settings(request), output_dir=str(output),
                       resume_from=request.resume_from, lora_info=lora_info(request))
        plan = None
        if validation_clips and request.validation_every:
            plan = ValidationPlan(clips=validation_clips, latents=validation_latents,
                                  negative_prompt=request.validation_negative_prompt, stg_scale=request.stg_scale,
                                  seed=request.seed, every=request.validation_every)
        losses = train_lora_task(job, gpus, plan)
        reel = None
        if validation_clips:
            reel = render_validation(request.model, model_source, validation_clips, validation_latents,
                                     request.validation_negative_prompt, request.stg_scale, request.seed,
                                     output / "validation.mp4", output / "lora.safetensors")
    finally:
        model_cache.forget()  # the cached transformer now carries this run's LoRA
    files = {"lora.safetensors": output / "lora.safetensors",
             "config.json": write_config(request, output / "config.json"),
             "loss.png": loss_curve(losses, output / "loss.png")}
    if reel is not None:
        files["validation.mp4"] = Path(reel)
    files |= {path.name: path for path in sorted(output.glob("validation-step*.mp4"))}
    files |= {f"checkpoints/{path.name}": path for path in sorted((output / "checkpoints").glob("*.safetensors"))}
    result = {"files": {name: str(path) for name, path in files.items()},
              "final_loss": losses[-1], "steps": len(losses)}
    (output / GPU_RESULT).write_text(json.dumps(result))  # read by the CPU flow across processes
    return result
