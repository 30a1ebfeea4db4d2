"""Bucket geometry: resize to *fill* the bucket, then center-crop (docs/architecture.md, "Dataset").

Reference, target and mask all go through `fill_crop_box`, so they stay pixel-aligned.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FillCrop:
    scaled_width: int
    scaled_height: int
    left: int
    top: int
    width: int
    height: int


def fill_crop_box(src_width: int, src_height: int, width: int, height: int) -> FillCrop:
    """Scale (src_width, src_height) by max(W/w, H/h) so it covers (width, height), crop the center."""
    scale = max(width / src_width, height / src_height)
    scaled_width = max(width, round(src_width * scale))
    scaled_height = max(height, round(src_height * scale))
    return FillCrop(
        scaled_width,
        scaled_height,
        left=(scaled_width - width) // 2,
        top=(scaled_height - height) // 2,
        width=width,
        height=height,
    )
