"""Conforming real triplets from ../shared/media: accepted ones have aligned frames, masks and
audio; rejected ones carry the right reason."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import load_file

from lib.core.cache import Cache
from lib.core.storage import FileRef
from lib.ingest.conform import ConformSettings, check_triplet, conform_triplet
from lib.ingest.dataset import Triplet
from tests.media_helpers import with_tone

LOW_16_9 = dict(width=512, height=288)


def settings(**overrides) -> ConformSettings:
    fields = (
        dict(
            number_of_frames=17,
            frame_rate=24,
            auto_scale_input=False,
            audio_normalize=True,
            audio_preserve_pitch=True,
            trigger_phrase="",
        )
        | LOW_16_9
    )
    return ConformSettings(**(fields | overrides))


def run(tmp_path, start, end, mask, caption="", **overrides):
    triplet = Triplet(name="t", start=FileRef.of(start), end=FileRef.of(end), mask=FileRef.of(mask), caption=caption)
    return conform_triplet(triplet, check_triplet(triplet), settings(**overrides), Cache.at(tmp_path / "cache"))


@pytest.fixture(scope="module")
def car(media):
    return media / "h264_aac_972x540_25fps_11.7s_runningcar.mp4"


def test_static_png_of_another_size_is_scaled_to_the_clip(tmp_path, media, car):
    png = media / "masks" / "runningcar_mask_square_432x240.png"
    result = run(tmp_path, car, car, png, caption="a car", trigger_phrase="repl4ce")
    assert result.status == "accepted", result.message
    clip = load_file(result.clip.path)
    assert clip["target"].shape == (17, 288, 512, 3) and clip["reference"].shape == (17, 288, 512, 3)
    assert clip["mask"].shape == (17, 288, 512) and clip["mask"].dtype == bool
    assert clip["target_audio"].shape == (2, round(17 / 24 * 16000))
    expected = (np.asarray(Image.open(png).convert("L")) >= 128).mean()
    assert result.mask_coverage == pytest.approx(expected, abs=0.01)
    assert result.caption == "repl4ce a car"
    assert np.abs(clip["target_audio"]).max() == pytest.approx(10 ** (-1 / 20), abs=1e-3)  # peak-normalized


def test_anti_aliased_png_is_binarized_at_half_luminance(tmp_path, media, car):
    png = media / "masks" / "runningcar_mask_logo_1296x720.png"
    result = run(tmp_path, car, car, png)
    assert result.status == "accepted", result.message
    mask = load_file(result.clip.path)["mask"]
    expected = (np.asarray(Image.open(png).convert("L")) >= 128).mean()
    assert mask.mean() == pytest.approx(expected, abs=0.01)
    assert (mask == mask[0]).all(), "an image mask applies to every frame"


def test_mask_follows_display_orientation(tmp_path, media):
    rotated = media / "h264_aac_1280x720_29.97fps_5s_rot90.mp4"  # displays as 720x1280 portrait
    top_half = np.zeros((1280, 720), dtype=np.uint8)
    top_half[:640] = 255
    Image.fromarray(top_half).save(tmp_path / "top_mask.png")
    result = run(tmp_path, rotated, rotated, tmp_path / "top_mask.png", width=288, height=512)
    assert result.status == "accepted", result.message
    assert (result.target.width, result.target.height) == (720, 1280)
    mask = load_file(result.clip.path)["mask"]
    assert mask.shape == (17, 512, 288)
    assert mask[:, :250].all() and not mask[:, 262:].any()


def test_audio_shorter_than_video_is_padded_with_silence(tmp_path, media):
    clip = media / "h264_aac_320x240_60fps_1.2s_audioshorter.mp4"  # audio ends at ~0.77 s
    png = media / "masks" / "runningcar_mask_square_432x240.png"
    result = run(tmp_path, clip, clip, png, number_of_frames=25)
    assert result.status == "accepted", result.message
    target_audio = load_file(result.clip.path)["target_audio"]
    assert target_audio.shape == (2, round(25 / 24 * 16000))
    assert np.abs(target_audio[:, : int(0.7 * 16000)]).max() > 0.1
    assert not target_audio[:, int(0.8 * 16000) :].any()


@pytest.mark.parametrize(
    "clip, reason",
    [
        ("h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4", "silent_audio"),
        ("vp9_opus-silent_1280x720_14.985fps_4.9s_noduration.webm", "silent_audio"),
        ("h264_noaudio_640x360-sar2to1_30fps_5s.mp4", "no_audio"),
        ("vp9_noaudio_161x121_29.97fps_1s.webm", "no_audio"),
        ("hevc10_aac_1920x1080_60fps_0.1s_rot-90_iphone.mov", "too_short"),
    ],
)
def test_rejections_carry_their_reason(tmp_path, media, car, clip, reason):
    result = run(tmp_path, media / clip, car, media / "masks" / "runningcar_mask_square_432x240.png")
    assert (result.status, result.reason) == ("rejected", reason), result.message
    assert clip in result.message  # the user's own file, by name


def test_auto_scale_stretches_a_short_clip(tmp_path, media, car):
    short = media / "hevc10_aac_1920x1080_60fps_0.1s_rot-90_iphone.mov"
    result = run(
        tmp_path,
        short,
        car,
        media / "masks" / "runningcar_mask_square_432x240.png",
        number_of_frames=9,
        auto_scale_input=True,
    )
    assert result.status == "accepted" and result.stretched, result.message
    clip = load_file(result.clip.path)
    assert clip["reference"].shape[0] == 9 and clip["reference_audio"].shape == (2, round(9 / 24 * 16000))


def test_undecodable_clip_and_unreadable_or_empty_masks(tmp_path, media, car):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00not a video" * 100)
    assert run(tmp_path, garbage, car, media / "masks" / "runningcar_mask_square_432x240.png").reason == "undecodable"
    broken_png = tmp_path / "broken.png"
    broken_png.write_bytes(b"\x89PNG broken")
    assert run(tmp_path, car, car, broken_png).reason == "mask_unreadable"
    Image.fromarray(np.zeros((90, 160), dtype=np.uint8)).save(tmp_path / "black.png")
    result = run(tmp_path, car, car, tmp_path / "black.png")
    assert result.reason == "mask_selects_nothing" and "black.png" in result.message


def test_clip_without_audio_accepted_once_a_tone_is_muxed_in(tmp_path, media):
    girls = with_tone(media / "mpeg4_noaudio_432x240_24fps_3.3s_schoolgirls.mp4", tmp_path / "girls.mp4")
    png = media / "masks" / "schoolgirls" / "00000.png"
    result = run(tmp_path, girls, girls, png)
    assert result.status == "accepted", result.message
    assert result.target.duration_s == pytest.approx(3.33, abs=0.05)
