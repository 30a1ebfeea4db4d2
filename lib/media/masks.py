"""Mask normalization (docs/architecture.md, "Dataset"): image or per-frame video → bool (N, H, W), 1 = regenerate.

WHITE = regenerate, BLACK = keep, binarized on luminance at 0.5 — except palette-indexed
images (object-id masks as DAVIS-style tools export them), where any non-zero index regenerates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lib.core.errors import MediaError, Reason
from lib.media.geometry import fill_crop_box
from lib.media.video import iter_display_frames

THRESHOLD = 128  # luminance 0.5 on 0..255
TOKEN_THRESHOLD = 0.5  # a latent cell is regenerated when more than half of it is WHITE
IMAGE_EXTS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})  # a still mask, repeated over every frame


def _selection_level(image: Image.Image) -> np.ndarray:
    """uint8 (H, W) where >= THRESHOLD means regenerate; anti-aliased edges keep their grey."""
    if image.mode == "P":
        return np.where(np.asarray(image) > 0, 255, 0).astype(np.uint8)
    if image.mode in ("I;16", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode != "F" else max(float(values.max()), 1.0)
        return np.clip(values / peak * 255.0, 0, 255).astype(np.uint8)
    return np.asarray(image.convert("L"))


def token_mask(mask: np.ndarray, temporal: int = 8, spatial: int = 32) -> np.ndarray:
    """bool (N, H, W) pixels -> bool (1 + (N-1)/temporal, H/spatial, W/spatial) latent cells.

    Lightricks' rule (ltx-trainer process_videos.compute_video_masks): each `spatial` x `spatial`
    cell's WHITE fraction per frame, the most of it over the frames a latent covers, more than half
    regenerates. So a mask means the same tokens here, in ltx-pipelines and in ComfyUI. Frames are
    grouped as the video VAE encodes them (frame 0 alone, then groups of `temporal`), which is
    also how ltx-pipelines' iclora_utils groups them; ltx-trainer's script groups from frame 0.
    """
    frames, height, width = mask.shape
    cells = mask.reshape(frames, height // spatial, spatial, width // spatial, spatial).mean(axis=(2, 4))
    rest = cells[1:].reshape(-1, temporal, *cells.shape[1:]).max(axis=1)
    return np.concatenate([cells[:1], rest]) > TOKEN_THRESHOLD


def _fit(level: np.ndarray, display_size: tuple[int, int], bucket: tuple[int, int]) -> np.ndarray:
    """Resize to the clip's display size and apply the clip's fill+crop, then binarize."""
    box = fill_crop_box(*display_size, *bucket)
    resized = Image.fromarray(level).resize(
        (box.scaled_width, box.scaled_height),
        Image.Resampling.BOX if level.shape[1] > box.scaled_width else Image.Resampling.BILINEAR,
    )
    cropped = np.asarray(resized)[box.top : box.top + box.height, box.left : box.left + box.width]
    return cropped >= THRESHOLD


def _image_mask(path: Path, display_size, bucket) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            return _fit(_selection_level(image), display_size, bucket)[None]
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise MediaError(
            f"Mask '{path.name}' could not be read as an image: {error}", Reason.MASK_UNREADABLE.value
        ) from error


def _video_mask(path: Path, source_indices: np.ndarray, display_size, bucket) -> np.ndarray:
    """Frame i of the mask belongs to frame i of the target: pick by the target's source indices.

    A shorter mask holds its last frame, a longer one is trimmed. Streams: only the frames
    that are used are kept, already at bucket size.
    """
    wanted = {int(i) for i in source_indices}
    last_wanted = max(wanted)
    fitted: dict[int, np.ndarray] = {}
    last_index, last_gray = -1, None
    try:
        for last_index, (_, last_gray) in enumerate(iter_display_frames(path, fmt="gray")):
            if last_index in wanted:
                fitted[last_index] = _fit(last_gray, display_size, bucket)
            if last_index >= last_wanted:
                break
    except MediaError as error:
        raise MediaError(f"Mask '{path.name}' could not be decoded: {error}", Reason.MASK_UNREADABLE.value) from error
    if last_gray is None:
        raise MediaError(f"Mask '{path.name}' has no decodable frames.", Reason.MASK_UNREADABLE.value)
    held = fitted.get(last_index)
    if held is None:
        held = _fit(last_gray, display_size, bucket)
    return np.stack([fitted[int(i)] if i <= last_index else held for i in source_indices])


def conform_mask(
    path: str | Path, source_indices: np.ndarray, display_size: tuple[int, int], bucket: tuple[int, int]
) -> np.ndarray:
    """bool (N, H, W) aligned with the conformed target: N = len(source_indices), (W, H) = bucket.

    `source_indices[i]` is the target's source frame shown at output frame i;
    `display_size` is the target's (width, height) as displayed.
    """
    path = Path(path)
    if path.suffix.lower() in IMAGE_EXTS:
        return np.repeat(_image_mask(path, display_size, bucket), len(source_indices), axis=0)
    return _video_mask(path, np.asarray(source_indices), display_size, bucket)


OVERLAY_RGB = np.array([255, 0, 0], dtype=np.float32)
OVERLAY_ALPHA = 0.45


def mask_overlay(frames: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Tint the regenerated region (mask 1) red so polarity mistakes are obvious at a glance."""
    tinted = frames.astype(np.float32)
    tinted[mask] = (1 - OVERLAY_ALPHA) * tinted[mask] + OVERLAY_ALPHA * OVERLAY_RGB
    return tinted.round().astype(np.uint8)
