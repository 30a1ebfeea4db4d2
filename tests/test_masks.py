"""Mask normalization: image and video masks → bool (N, H, W) at the target's frame count."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lib.media.masks import conform_mask
from tests.media_helpers import pack_png_masks

GIRLS_DISPLAY = (432, 240)
BUCKET = (512, 288)


@pytest.fixture(scope="module")
def girls_mask_video(media, tmp_path_factory):
    return pack_png_masks(media / "masks" / "schoolgirls", tmp_path_factory.mktemp("m") / "girls_mask.mkv")


def _png_coverage(media, index: int) -> float:
    return float((np.asarray(Image.open(media / "masks" / "schoolgirls" / f"{index:05d}.png")) > 0).mean())


def test_palette_png_uses_nonzero_index(media):
    # Index 1 is dark red: luminance alone would call it "keep".
    mask = conform_mask(media / "masks" / "schoolgirls" / "00010.png", np.arange(5), GIRLS_DISPLAY, BUCKET)
    assert mask.shape == (5, 288, 512) and mask.dtype == bool
    assert mask.mean() == pytest.approx(_png_coverage(media, 10), abs=0.01)


def test_video_mask_frame_i_belongs_to_target_frame_i(media, girls_mask_video):
    indices = np.array([0, 20, 40, 79])
    mask = conform_mask(girls_mask_video, indices, GIRLS_DISPLAY, BUCKET)
    assert mask.shape == (4, 288, 512)
    for row, index in enumerate(indices):
        assert mask[row].mean() == pytest.approx(_png_coverage(media, index), abs=0.01)
    assert not (mask[0] == mask[3]).all(), "per-frame masks move"


def test_shorter_video_mask_holds_its_last_frame(girls_mask_video):
    indices = np.array([10, 79, 80, 150, 291])  # the mask has 80 frames
    mask = conform_mask(girls_mask_video, indices, GIRLS_DISPLAY, BUCKET)
    assert (mask[2] == mask[1]).all() and (mask[4] == mask[1]).all()


def test_longer_h264_mask_video_is_trimmed_and_binarized(media):
    path = media / "masks" / "mask_video_h264_200x200_30fps_10s.mp4"  # 300 frames, values ~0/1/255
    mask = conform_mask(path, np.arange(0, 60, 3), (200, 200), (256, 256))
    assert mask.shape == (20, 256, 256) and mask.dtype == bool
    assert 0 < mask.mean() < 1
