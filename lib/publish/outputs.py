"""The run's descriptive outputs: config.json (what the LoRA is and how it was trained) and
the loss curve; and what the GPU half hands back of a run (`hand_back_training`). The LoRA file
itself is lib/train/lora_io.py's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lib.core.cache import Cache
from lib.core.config import TrainRequest
from lib.core.handback import TrainingGpuResult, hand_back, share
from lib.core.housekeeping import gpu_entry
from lib.core.plan import RunPlan
from lib.core.redact import redact_json
from lib.train.lora_io import TARGET_MODULES, TRAINING_TYPE
from lib.validate.reel import animated_previews


def billing_units(request: TrainRequest) -> int:
    return max(100, request.number_of_steps)


def config_document(request: TrainRequest, plan: RunPlan) -> dict:
    width, height = request.bucket
    sampler = plan.validation.sampler
    return {
        "training_type": TRAINING_TYPE,
        "trigger_phrase": request.trigger_phrase,
        "base_model": plan.lora_info["base_model"],
        "rank": request.rank,
        "alpha": request.rank,
        "lora_dtype": plan.lora_dtype,
        "target_modules": list(TARGET_MODULES),
        "number_of_frames": request.number_of_frames,
        "frame_rate": request.frame_rate,
        "resolution": {
            "name": request.resolution,
            "aspect_ratio": request.aspect_ratio,
            "width": width,
            "height": height,
        },
        "mask_convention": "WHITE = regenerate, BLACK = keep",
        "conditioning": plan.conditioning.describe(),
        "reference_audio_positions": plan.conditioning.reference_audio_positions,
        "reference_downscale_factor": plan.conditioning.reference_downscale,
        "optimizer": optimizer_recipe(plan),
        "validation_sampler": {
            "steps": sampler.steps,
            "cfg_video": sampler.video_guidance,
            "cfg_audio": sampler.audio_guidance,
            "stg_scale": sampler.stg_scale,
            "modality_scale": sampler.modality_scale,
            "guidance_rescale": sampler.guidance_rescale,
        },
        # every URL the request holds (training_data_url, output_url, validation URLs, model
        # sources) without query string or user:password: a presigned URL's signature stays out
        "request": redact_json(request.model_dump(mode="json")),
    }


def optimizer_recipe(plan: RunPlan) -> dict:
    train = plan.train
    return {
        "name": train.optimizer,
        "learning_rate": train.learning_rate,
        "weight_decay": train.weight_decay,
        "schedule": {
            "warmup_steps": train.warmup_steps,
            "then": "linear",
            "start_factor": 1.0,
            "end_factor": train.lr_end_factor,
        },
        "max_grad_norm": train.grad_clip,
        "timestep_sampler": "shifted_logit_normal (ltx-trainer)",
    }


def write_config(request: TrainRequest, plan: RunPlan, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_document(request, plan), indent=2))
    return path


def loss_curve(losses: list[float], path: Path) -> Path:
    """Raw loss per step and a moving average (single-example losses are noisy)."""
    import matplotlib

    matplotlib.use("Agg")  # headless workers
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 20)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    figure, axes = plt.subplots(figsize=(7, 3.5), dpi=100)
    axes.plot(steps, losses, alpha=0.3, label="loss")
    axes.plot(steps[window - 1 :], smooth, label=f"moving average ({window})")
    axes.set_xlabel("step")
    axes.set_ylabel("masked flow-matching loss")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path


def files_to_upload(output: Path, checkpoints: list[Path], upload_checkpoints: bool) -> dict[str, Path]:
    """The LoRA, loss curve and reels; checkpoints (optimizer state included) only when asked."""
    names = ["lora.safetensors", "loss.png", "validation.mp4"]
    files = {name: output / name for name in names if (output / name).is_file()}
    files |= {path.name: path for path in sorted(output.glob("validation-step*.mp4"))}
    if upload_checkpoints:
        files |= {f"checkpoints/{path.name}": path for path in checkpoints}
    return files


def hand_back_training(
    cache: Cache, run_id: str, plan: RunPlan, losses: list[float], output: Path, checkpoint_dir: Path
) -> TrainingGpuResult:
    """After training, on the GPU worker: the loss curve, the files to upload from `output` (and
    `checkpoint_dir`'s checkpoints when the plan uploads them), animated previews of the final
    reel; all shared through the cache with the result that lists them."""
    loss_curve(losses, output / "loss.png")
    checkpoints = sorted(checkpoint_dir.glob("*.safetensors"))
    files = files_to_upload(output, checkpoints, plan.upload_checkpoints)
    previews = []
    if "validation.mp4" in files:
        previews = animated_previews(files["validation.mp4"], plan.validation_conform.number_of_frames, output)
    result = TrainingGpuResult(
        files=share(cache, run_id, files),
        previews=list(share(cache, run_id, {path.name: path for path in previews}).values()),
        final_loss=losses[-1],
        steps=len(losses),
        checkpoints_kept_in=str(checkpoint_dir) if checkpoints else None,
    )
    return hand_back(cache, run_id, result, clear=gpu_entry(run_id))
