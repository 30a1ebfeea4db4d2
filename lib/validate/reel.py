"""The validation reel: per sample, source | mask overlay | reference | generated side by side,
samples one after another, carrying the generated audio (H.264 + AAC via lib.media.encode).

The generated panel is composited in pixel space so the kept region is the source's own pixels
(the spec promises a pixel-faithful kept region), with a few pixels of feather at the mask edge.
"""

from __future__ import annotations

from pathlib import Path

import librosa
import numpy as np
from scipy.ndimage import gaussian_filter

from lib.media.encode import write_video
from lib.media.masks import mask_overlay

FEATHER_SIGMA_PX = 1.5
FEATHER_TRUNCATE = 2.0  # the blur reaches FEATHER_SIGMA_PX * FEATHER_TRUNCATE (3 px) into the kept region
REEL_SAMPLE_RATE = 48_000


def feather_band_px() -> int:
    return int(np.ceil(FEATHER_SIGMA_PX * FEATHER_TRUNCATE))


def composite(source: np.ndarray, generated: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Generated pixels where the mask regenerates, the source's elsewhere, blended at the edge."""
    alpha = gaussian_filter(
        mask.astype(np.float32), sigma=(0, FEATHER_SIGMA_PX, FEATHER_SIGMA_PX), truncate=FEATHER_TRUNCATE
    )
    alpha = np.maximum(alpha, mask)[..., None]  # inside the mask: fully generated
    blended = alpha * generated.astype(np.float32) + (1 - alpha) * source.astype(np.float32)
    out = np.round(blended).astype(np.uint8)
    keep = alpha[..., 0] == 0
    out[keep] = source[keep]  # bit-exact where no blending reaches
    return out


def panels(source, mask, reference, generated) -> np.ndarray:
    return np.concatenate([source, mask_overlay(source, mask), reference, generated], axis=2)


def fit_audio_length(waveform: np.ndarray, sample_rate: int, seconds: float) -> np.ndarray:
    if sample_rate != REEL_SAMPLE_RATE:
        waveform = librosa.resample(waveform, orig_sr=sample_rate, target_sr=REEL_SAMPLE_RATE)
    length = round(seconds * REEL_SAMPLE_RATE)
    out = np.zeros((2, length), np.float32)
    out[:, : min(length, waveform.shape[1])] = waveform[:2, :length]
    return out


def write_reel(path: Path, samples: list[dict], frame_rate: float) -> Path:
    """`samples`: dicts of source, mask, reference, generated (N, H, W, ·) and audio (2, S) + sample_rate."""
    frames, sound = [], []
    for sample in samples:
        frames.append(panels(sample["source"], sample["mask"], sample["reference"], sample["generated"]))
        seconds = len(sample["source"]) / frame_rate
        sound.append(fit_audio_length(sample["audio"], sample["sample_rate"], seconds))
    write_video(path, np.concatenate(frames), frame_rate, np.concatenate(sound, axis=1), REEL_SAMPLE_RATE)
    return path


def animated_previews(
    reel: Path, frames_per_sample: int, folder: Path, width: int = 960, fps: float = 8.0
) -> list[Path]:
    """One small animated WebP per sample of a reel (all four panels, `width` px wide, `fps`
    frames per second), small enough to show inline in a Prefect artifact."""
    import av
    from PIL import Image

    with av.open(str(reel)) as container:
        stream = container.streams.video[0]
        step = max(1, round(float(stream.average_rate or 24) / fps))
        frames = [frame.to_image() for frame in container.decode(stream)]
    paths = []
    for index, start in enumerate(range(0, len(frames), frames_per_sample), 1):
        picked = frames[start : start + frames_per_sample : step]
        height = round(picked[0].height * width / picked[0].width / 2) * 2
        picked = [image.resize((width, height), Image.Resampling.LANCZOS) for image in picked]
        path = folder / f"preview-{index}.webp"
        picked[0].save(
            path, save_all=True, append_images=picked[1:], duration=int(1000 / fps), loop=0, quality=60, method=4
        )
        paths.append(path)
    return paths
