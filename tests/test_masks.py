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


# --- pixels -> latent tokens: Lightricks' area rule ----------------------------------------------


def _lightricks_cells(mask: np.ndarray) -> np.ndarray:
    """ltx-trainer's compute_video_masks, restated: 32x32 avg_pool2d per frame, max over the frames
    of a latent, > 0.5 (frames grouped as the VAE encodes them: 0 alone, then 8 at a time)."""
    import torch

    pixels = torch.from_numpy(mask).float()[:, None]
    cells = torch.nn.functional.avg_pool2d(pixels, kernel_size=32)[:, 0]
    grouped = torch.cat([cells[:1], cells[1:].reshape(-1, 8, *cells.shape[1:]).amax(dim=1)])
    return (grouped > 0.5).numpy()


def test_a_token_is_regenerated_when_more_than_half_its_cell_is_white_in_any_of_its_frames():
    from lib.media.masks import token_mask

    mask = np.zeros((17, 64, 96), dtype=bool)
    mask[0, :20, :32] = True  # 62.5 % of cell (0, 0) in frame 0 -> latent 0
    mask[0, 32:44, 32:64] = True  # 37.5 % of cell (1, 1): kept (any-pixel rule would regenerate it)
    mask[5, :, 64:] = True  # a single frame of latent 1 fully white at column 2
    tokens = token_mask(mask)
    assert tokens.shape == (3, 2, 3)
    assert tokens[0].tolist() == [[True, False, False], [False, False, False]]
    assert tokens[1].tolist() == [[False, False, True], [False, False, True]] and not tokens[2].any()


def test_token_mask_matches_ltx_trainers_rule_on_a_real_mask(media, girls_mask_video):
    from lib.media.masks import token_mask

    mask = conform_mask(girls_mask_video, np.arange(17), GIRLS_DISPLAY, BUCKET)
    tokens = token_mask(mask)
    assert np.array_equal(tokens, _lightricks_cells(mask))
    any_pixel = mask.reshape(17, 9, 32, 16, 32).any(axis=(2, 4))
    assert tokens.sum() < np.concatenate([any_pixel[:1], any_pixel[1:].reshape(2, 8, 9, 16).any(axis=1)]).sum()


def test_a_mask_whose_white_fills_no_half_cell_selects_nothing():
    from lib.core.errors import MediaError
    from lib.ingest.conform import refuse_empty_mask

    speck = np.zeros((9, 288, 512), dtype=bool)
    speck[:, 100:110, 200:210] = True  # 100 pixels: under half of any 32x32 cell
    with pytest.raises(MediaError, match="'clip_mask.png' selects nothing .* more than half WHITE") as refused:
        refuse_empty_mask("", "/tmp/x/clip_mask.png", speck)
    assert refused.value.code == "mask_selects_nothing"
    speck[:, 96:128, 192:224] = True
    refuse_empty_mask("", "/tmp/x/clip_mask.png", speck)  # one full cell: accepted
