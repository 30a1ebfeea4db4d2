"""The run's descriptive outputs: config.json (what the LoRA is and how it was trained) and
the loss curve. The LoRA file itself is lib/lora_io.py's."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lib.conditioning import REFERENCE_AUDIO_PLACEMENT
from lib.config import TrainRequest
from lib.lora_io import TARGET_MODULES, TRAINING_TYPE


def billing_units(request: TrainRequest) -> int:
    return max(100, request.number_of_steps)


def base_model_name(request: TrainRequest) -> str:
    return "LTX-2.3" if request.model == "ltx-2.3" else "LTX-2.3 (tiny random test preset)"


def lora_info(request: TrainRequest) -> dict:
    return {"base_model": base_model_name(request), "trigger_phrase": request.trigger_phrase}


def config_document(request: TrainRequest) -> dict:
    width, height = request.bucket
    return {
        "training_type": TRAINING_TYPE,
        "trigger_phrase": request.trigger_phrase,
        "base_model": base_model_name(request),
        "rank": request.rank,
        "alpha": request.rank,
        "target_modules": list(TARGET_MODULES),
        "number_of_frames": request.number_of_frames,
        "frame_rate": request.frame_rate,
        "resolution": {"name": request.resolution, "aspect_ratio": request.aspect_ratio,
                       "width": width, "height": height},
        "mask_convention": "WHITE = regenerate, BLACK = keep",
        "reference_video": "in-context tokens at the target's positions, timestep 0",
        "reference_audio": REFERENCE_AUDIO_PLACEMENT,
        "request": request.model_dump(mode="json"),
    }


def write_config(request: TrainRequest, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config_document(request), indent=2))
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
    axes.plot(steps[window - 1:], smooth, label=f"moving average ({window})")
    axes.set_xlabel("step")
    axes.set_ylabel("masked flow-matching loss")
    axes.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
