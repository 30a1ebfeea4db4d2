"""Synthetic clips (moving pattern + tone) and a small sample dataset, generated with PyAV.

The demo and tests build their data with this; nothing is downloaded or shipped.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from lib.media.encode import write_video

SAMPLE_RATE = 48_000


def pattern_frames(frame_count: int, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A moving colour gradient with a bouncing square: motion a model can see, cheap to encode."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    frames = np.empty((frame_count, height, width, 3), dtype=np.uint8)
    for index in range(frame_count):
        shift = index * 4
        for channel in range(3):
            frames[index, ..., channel] = (base[channel] + xs + shift * (channel + 1) + ys // 2) % 256
        left = (index * 6) % max(1, width - width // 4)
        frames[index, height // 3 : height // 3 + height // 4, left : left + width // 4] = 255
    return frames


def tone(duration_s: float, frequency_hz: float, sample_rate: int = SAMPLE_RATE, level: float = 0.3) -> np.ndarray:
    """Stereo sine, (2, S) float32; level 0 gives digital silence."""
    t = np.arange(round(duration_s * sample_rate)) / sample_rate
    wave = (level * np.sin(2 * np.pi * frequency_hz * t)).astype(np.float32)
    return np.stack([wave, wave])


def make_clip(
    path: Path,
    duration_s: float = 1.5,
    fps: float = 24,
    size: tuple[int, int] = (320, 180),
    frequency_hz: float = 440.0,
    seed: int = 0,
    audio_level: float | None = 0.3,
) -> Path:
    """An mp4 (H.264 + AAC); `audio_level=None` writes no audio track at all."""
    frames = pattern_frames(round(duration_s * fps), size[0], size[1], seed)
    sound = None if audio_level is None else tone(duration_s, frequency_hz, level=audio_level)
    write_video(path, frames, fps, sound, SAMPLE_RATE if sound is not None else None)
    return path


def make_box_mask(path: Path, size: tuple[int, int], box: tuple[float, float, float, float]) -> Path:
    """A PNG mask, WHITE inside `box` = (left, top, right, bottom) as fractions of the size."""
    width, height = size
    mask = np.zeros((height, width), dtype=np.uint8)
    left, top, right, bottom = box
    mask[int(top * height) : int(bottom * height), int(left * width) : int(right * width)] = 255
    Image.fromarray(mask).save(path)
    return path


def make_mask_video(path: Path, frame_count: int, size: tuple[int, int], fps: float = 24) -> Path:
    """A per-frame mask: a WHITE box sliding left to right (lossless, so edges stay binary)."""
    width, height = size
    frames = np.zeros((frame_count, height, width), dtype=np.uint8)
    for index in range(frame_count):
        left = int(index / max(1, frame_count - 1) * (width // 2))
        frames[index, height // 4 : 3 * height // 4, left : left + width // 2] = 255
    write_video(path, frames, fps, codec="ffv1")
    return path


def make_sample_zip(
    path: Path, triplets: int = 3, duration_s: float = 1.5, include_bad: bool = True, fps: float = 24
) -> Path:
    """A small dataset: `triplets` good triplets (image and video masks, captions) and, when
    `include_bad`, one with a silent reference so the report shows a rejection."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=f".{path.stem}-") as folder:
        return _zip_members(path, _sample_members(Path(folder), triplets, duration_s, include_bad, fps))


def _sample_members(scratch: Path, triplets: int, duration_s: float, include_bad: bool, fps: float) -> dict[str, Path]:
    members: dict[str, Path] = {}
    for index in range(triplets):
        name = f"sample{index:02d}"
        members[f"{name}_start.mp4"] = make_clip(
            scratch / f"{name}_start.mp4", duration_s, fps, seed=2 * index, frequency_hz=330 + 55 * index
        )
        members[f"{name}_end.mp4"] = make_clip(
            scratch / f"{name}_end.mp4", duration_s, fps, seed=2 * index + 1, frequency_hz=440 + 55 * index
        )
        if index % 2:  # alternate image and per-frame video masks, as real datasets do
            members[f"{name}_mask.mkv"] = make_mask_video(
                scratch / f"{name}_mask.mkv", round(duration_s * fps), (320, 180)
            )
        else:
            members[f"{name}_mask.png"] = make_box_mask(
                scratch / f"{name}_mask.png", (320, 180), (0.25, 0.25, 0.75, 0.75)
            )
        (scratch / f"{name}.txt").write_text(f"replace the square with pattern {index} and a tone")
        members[f"{name}.txt"] = scratch / f"{name}.txt"
    if include_bad:
        members["silent_start.mp4"] = make_clip(scratch / "silent_start.mp4", duration_s, audio_level=0.0)
        members["silent_end.mp4"] = make_clip(scratch / "silent_end.mp4", duration_s, seed=9)
        members["silent_mask.png"] = make_box_mask(scratch / "silent_mask.png", (320, 180), (0, 0, 0.5, 0.5))
    return members


def _zip_members(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in members.items():
            archive.write(source, name)
    return path


def make_demo(folder: Path) -> dict[str, Path]:
    """Everything `make demo` needs: the sample dataset, one validation sample, a request JSON
    (tiny model, 100 steps, low resolution) whose outputs go to `folder/run`."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    dataset = make_sample_zip(folder / "sample_dataset.zip")
    validation = folder / "validation"
    validation.mkdir(exist_ok=True)
    source = make_clip(validation / "source.mp4", 1.0, seed=7, frequency_hz=523.0)
    reference = make_clip(validation / "reference.mp4", 1.0, seed=8, frequency_hz=659.0)
    mask = make_box_mask(validation / "mask.png", (320, 180), (0.3, 0.3, 0.7, 0.7))
    request = {
        "training_data_url": str(dataset),
        "model": "tiny",
        "trigger_phrase": "repl4ce",
        "rank": 16,
        "number_of_steps": 100,
        "learning_rate": 1e-3,
        "number_of_frames": 17,
        "frame_rate": 24,
        "resolution": "low",
        "aspect_ratio": "16:9",
        "debug_dataset": True,
        "reference_downscale": 1,  # 512x288 has no exact half (README, "Fidelity to Lightricks' recipe")
        "validation": [
            {
                "prompt": "repl4ce the square with a moving pattern and a tone",
                "video_url": str(source),
                "mask_url": str(mask),
                "reference_video_url": str(reference),
            }
        ],
        "validation_number_of_frames": 17,
        "validation_resolution": "low",
        "validation_aspect_ratio": "16:9",
        "validation_steps": 8,  # the tiny model is random: a few steps show the plumbing
        "output_url": str(folder / "run"),
    }
    (folder / "request.json").write_text(json.dumps(request, indent=2))
    return {"dataset": dataset, "request": folder / "request.json"}
