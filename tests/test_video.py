"""Behaviour of lib.media.video on the real quirky media and on synthetic clips with known content."""

from __future__ import annotations

import math

import av
import numpy as np
import pytest

from lib.core.errors import MediaError
from lib.media.encode import write_wav
from lib.media.video import (
    frame_times,
    probe,
    read_frames,
)
from tests.media_helpers import (
    AV1_10BIT,
    BUNNY_ROT,
    EDIT_LIST,
    HEVC_FULL_RANGE,
    IPHONE,
    ROT90,
    ROT180_VFR,
    SAR_2_1,
    SCREENREC,
    TRANSPOSE,
    first_coded_frame,
)

# --- geometry and orientation of the real files -------------------------------------------


@pytest.mark.parametrize(
    "name, width, height, rotation, mirrored",
    [
        (BUNNY_ROT, 1080, 1920, 90, False),  # ffprobe rotation -90 -> 90 deg clockwise
        (IPHONE, 1080, 1920, 90, False),
        (ROT90, 720, 1280, 270, False),  # ffprobe rotation +90 -> 90 deg counter-clockwise
        (ROT180_VFR, 1280, 720, 180, False),
        (TRANSPOSE, 720, 1080, 90, True),  # matrix [[0,1],[1,0]]
        (SAR_2_1, 1280, 360, 0, False),
        (EDIT_LIST, 853, 480, 0, False),  # SAR 1280:1281
        ("vp9_noaudio_161x121_29.97fps_1s.webm", 161, 121, 0, False),
    ],
)
def test_display_geometry(media, name, width, height, rotation, mirrored):
    info = probe(media / name)
    assert (info.display_width, info.display_height) == (width, height)
    assert (info.rotation, info.mirrored) == (rotation, mirrored)
    frames = read_frames(media / name, np.zeros(1), None).frames
    assert frames.shape == (1, height, width, 3) and frames.dtype == np.uint8


@pytest.mark.parametrize(
    "name, orient",
    [
        (IPHONE, lambda a: np.rot90(a, -1)),
        (ROT90, lambda a: np.rot90(a, 1)),
        (ROT180_VFR, lambda a: a[::-1, ::-1]),
        (TRANSPOSE, lambda a: a.transpose(1, 0, 2)),
    ],
)
def test_display_frame_is_the_coded_frame_oriented_like_ffmpeg(media, name, orient):
    coded = first_coded_frame(media / name)
    shown = read_frames(media / name, np.zeros(1), None).frames[0].astype(int)
    expected = orient(coded).astype(int)
    assert shown.shape == expected.shape
    # Not bit-exact: chroma upsampling may use another filter; a wrong orientation is far off.
    assert np.abs(shown - expected).mean() < 1


def test_iphone_portrait_clip_is_upright(media):
    # Filmed in portrait, stored landscape with the sky on the left: displayed, the sky is on top.
    frame = read_frames(media / IPHONE, np.zeros(1), (108, 192)).frames[0].astype(float)
    top, bottom = frame[:64], frame[-64:]
    assert top.mean() > bottom.mean() + 20
    assert (top[..., 2] - top[..., 0]).mean() > 30  # blue sky


@pytest.mark.parametrize(
    "degrees, hflip, vflip",
    [
        (0, False, False),
        (0, True, False),
        (0, False, True),
        (90, False, False),
        (90, True, False),
        (180, False, False),
        (180, False, True),
        (270, False, False),
        (270, True, False),
        (-90, False, True),
    ],
)
def test_synthetic_display_matrix(tmp_path, degrees, hflip, vflip):
    # PyAV documents set_display_rotation as: rotate counter-clockwise, then mirror; that is
    # also what ffmpeg -autorotate shows. A lossless asymmetric pattern pins the direction.
    pattern = np.random.default_rng(abs(degrees) + 2 * hflip + vflip).integers(0, 256, (6, 10, 3), np.uint8)
    path = tmp_path / "oriented.mov"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("png", rate=10)
        stream.width, stream.height, stream.pix_fmt = 10, 6, "rgb24"
        stream.set_display_rotation(degrees, hflip=hflip, vflip=vflip)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(pattern, format="rgb24")))
        container.mux(stream.encode(None))
    expected = np.rot90(pattern, degrees // 90)
    expected = expected[:, ::-1] if hflip else expected
    expected = expected[::-1] if vflip else expected
    np.testing.assert_array_equal(read_frames(path, np.zeros(1), None).frames[0], expected)
    info = probe(path)
    assert (info.display_width, info.display_height) == (expected.shape[1], expected.shape[0])
    assert info.mirrored == (hflip != vflip)


def test_sar_is_corrected_by_stretching_width(media):
    coded = first_coded_frame(media / SAR_2_1).astype(float)
    shown = read_frames(media / SAR_2_1, np.zeros(1), None).frames[0].astype(float)
    # Each coded column becomes two display columns.
    assert np.abs(shown[:, ::2] - coded).mean() < 6


# --- pixel formats --------------------------------------------------------------------------


@pytest.mark.parametrize("name", [IPHONE, AV1_10BIT])
def test_ten_bit_decodes_to_sane_uint8(media, name):
    frames = read_frames(media / name, frame_times(3, 30), (128, 128)).frames
    assert frames.dtype == np.uint8 and frames.shape == (3, 128, 128, 3)
    assert 30 < frames.mean() < 225 and frames.std() > 15


def test_full_range_is_not_crushed(media):
    with av.open(str(media / HEVC_FULL_RANGE)) as container:
        frame = next(container.decode(video=0))
        assert frame.format.name == "yuvj420p"
        luma = frame.to_ndarray(format="yuvj420p")[: frame.height].astype(float)
    rgb = read_frames(media / HEVC_FULL_RANGE, np.zeros(1), None).frames[0].astype(float)
    assert rgb.min() <= 5 and rgb.max() >= 250
    # Full-range Y maps straight to RGB luma; a limited-range reading would stretch it ~255/219.
    rgb_luma = rgb @ np.array([0.2126, 0.7152, 0.0722])
    assert abs(rgb_luma.mean() - luma.mean()) < 3


# --- failures ---------------------------------------------------------------------------------------


def test_still_image_is_not_a_video(media):
    with pytest.raises(MediaError) as error:
        probe(media / "masks/runningcar_mask_square_432x240.png")
    assert error.value.code == "undecodable"
    assert "runningcar_mask_square_432x240.png" in str(error.value)


def test_garbage_and_audio_only_files_are_undecodable(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    wav = tmp_path / "sound.wav"
    write_wav(wav, np.zeros((1, 800), np.float32), 8000)
    for path in (text, wav, tmp_path / "missing.mp4"):
        with pytest.raises(MediaError) as error:
            probe(path)
        assert error.value.code == "undecodable" and path.name in str(error.value)
    with pytest.raises(MediaError):
        read_frames(text, np.zeros(1), None)


def test_corrupt_stream_is_undecodable(media, tmp_path):
    data = bytearray((media / "vp9_opus_320x180_24fps_5s.webm").read_bytes())
    rng = np.random.default_rng(0)
    for position in rng.integers(len(data) // 4, len(data), 2000):
        data[position] = rng.integers(0, 256)
    path = tmp_path / "garbled.webm"
    path.write_bytes(bytes(data))
    with pytest.raises(MediaError) as error:
        read_frames(path, frame_times(120, 24), (32, 32))
    assert error.value.code == "undecodable" and "garbled.webm" in str(error.value)


def test_durations_of_real_files(media):
    cases = {
        SCREENREC: 8.726,
        ROT180_VFR: 2.38,
        AV1_10BIT: 4.238,
        "mpeg4_mp3_960x400_23.976fps_4.1s.avi": 4.087,
        "vp8_vorbis_1280x720_24fps_1s.webm": 1.0,
    }
    for name, seconds in cases.items():
        assert probe(media / name).duration_s == pytest.approx(seconds, abs=0.01), name
    assert math.isclose(probe(media / SAR_2_1).avg_fps, 30)
