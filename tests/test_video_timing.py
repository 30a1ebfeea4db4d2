"""Picking frames by presentation time: VFR, unsorted and out-of-range times, edit lists, container
timestamps, and stopping early (lib/media/video.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lib.media.encode import write_video
from lib.media.video import (
    frame_times,
    iter_display_frames,
    probe,
    read_frames,
    stretched_frame_times,
)
from tests.media_helpers import (
    BUNNY_ROT,
    EDIT_LIST,
    HEVC_FULL_RANGE,
    IPHONE,
    MASK_VIDEO,
    MKV_MS,
    NO_DURATION,
    ROT180_VFR,
    SCREENREC,
    TRANSPOSE,
    expected_indices,
    presentation_times,
)

# --- time-based picking -------------------------------------------------------------------------


@pytest.mark.parametrize("name, seconds", [(ROT180_VFR, 2.4), (SCREENREC, 2.0)])
def test_vfr_frames_are_picked_by_presentation_time(media, name, seconds):
    times = frame_times(int(seconds * 24), 24)
    sampled = read_frames(media / name, times, (64, 64))
    assert np.all(np.diff(sampled.source_indices) >= 0)
    assert len(np.unique(sampled.source_indices)) < len(times)  # sparse source -> repeats
    np.testing.assert_array_equal(sampled.source_indices, expected_indices(presentation_times(media / name), times))


def test_times_need_not_be_sorted(media):
    times = np.array([0.5, 0.0, 0.25, 0.5, -1.0])
    sampled = read_frames(media / ROT180_VFR, times, (32, 32))
    np.testing.assert_array_equal(
        sampled.source_indices, expected_indices(presentation_times(media / ROT180_VFR), times)
    )
    assert sampled.source_indices[1] == sampled.source_indices[4] == 0  # before the first frame: the first
    np.testing.assert_array_equal(sampled.frames[0], sampled.frames[3])


def test_times_past_the_end_repeat_the_last_frame(media):
    sampled = read_frames(media / "vp9_noaudio_161x121_29.97fps_1s.webm", np.array([0.5, 5.0, 50.0]), None)
    assert sampled.source_indices.tolist()[1:] == [29, 29]
    assert sampled.source_frame_count == 30


def test_start_offset_and_edit_lists(media):
    # Video starts 4800/57600 s into the file: t=0 is that first frame.
    bunny = probe(media / BUNNY_ROT)
    assert bunny.start_s == pytest.approx(4800 / 57600)
    assert bunny.duration_s == pytest.approx(1.875, abs=1e-3)
    # iPhone clip: the edit list drops 2 of 8 coded packets; only 6 frames are presented.
    iphone = probe(media / IPHONE)
    assert iphone.start_s == 0.0
    sampled = read_frames(media / IPHONE, frame_times(10, 60), (32, 32))
    assert sampled.source_indices.tolist() == [0, 1, 2, 3, 4, 5, 5, 5, 5, 5]
    assert sampled.source_frame_count == 6
    # Edit-list mp4 (B-frame delay in edts): first presented frame is at pts 0.
    edit = probe(media / EDIT_LIST)
    assert edit.start_s == 0.0 and edit.duration_s == pytest.approx(9.0)
    times, frame = next(iter_display_frames(media / EDIT_LIST))
    assert times == 0.0
    np.testing.assert_array_equal(read_frames(media / EDIT_LIST, np.zeros(1), None).frames[0], frame)


def test_matroska_millisecond_timestamps_give_every_frame_once(media):
    info = probe(media / MKV_MS)
    assert info.start_s == pytest.approx(0.067)
    assert info.duration_s == pytest.approx(1.0, abs=0.01) and info.avg_fps == pytest.approx(30, abs=0.1)
    sampled = read_frames(media / MKV_MS, frame_times(30, info.avg_fps), (32, 32))
    assert sampled.source_indices.tolist() == list(range(30))


def test_webm_without_duration_gets_one_from_packets(media):
    info = probe(media / NO_DURATION)
    assert info.duration_s == pytest.approx(4.94, abs=0.05)
    assert info.avg_fps == pytest.approx(14.985, abs=0.1)
    assert info.has_audio


def test_reading_stops_after_the_last_requested_time(media):
    sampled = read_frames(media / HEVC_FULL_RANGE, frame_times(24, 24), (256, 256))
    assert sampled.frames.shape == (24, 256, 256, 3)
    assert sampled.source_frame_count <= 32  # of 300


def _index_clip(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frame i is flat gray 8*i with a white marker in the top-left corner (orientation check)."""
    frames = np.repeat((8 * np.arange(n, dtype=np.uint8))[:, None, None, None], 3, axis=3)
    frames = np.broadcast_to(frames, (n, height, width, 3)).copy()
    frames[:, :4, :4] = 255
    return frames


@pytest.mark.parametrize(
    "codec, suffix, fps, read_fps",
    [
        ("ffv1", ".mkv", 25.0, 24.0),
        ("h264", ".mp4", 30.0, 24.0),
        # Matroska rounds pts to whole ms; sampling at the source rate must still give every frame once.
        ("ffv1", ".mkv", 30000 / 1001, 30000 / 1001),
    ],
)
def test_synthetic_clip_sampled_by_time(tmp_path, codec, suffix, fps, read_fps):
    source = _index_clip(30)
    path = tmp_path / f"index{suffix}"
    write_video(path, source, fps, codec=codec)
    times = frame_times(int(30 / fps * read_fps), read_fps)
    sampled = read_frames(path, times, None)
    expected = np.minimum(np.floor(times * fps + 0.5 + 1e-6).astype(np.int64), len(source) - 1)  # nearest frame
    np.testing.assert_array_equal(sampled.source_indices, expected)
    error = np.abs(sampled.frames.astype(int) - source[expected]).max()
    assert error == 0 if codec == "ffv1" else error <= 4


def test_fill_crop_keeps_the_center(tmp_path):
    # 320x180 horizontal ramp into a 90x90 bucket: scale to 160x90, keep columns 35..124.
    x = np.arange(320)
    frame = np.zeros((180, 320, 3), np.uint8)
    frame[..., 0] = (x * 255 // 319)[None, :]
    frame[..., 1] = (np.arange(180) * 255 // 179)[:, None]
    path = tmp_path / "wide.mkv"
    write_video(path, frame[None], 10, codec="ffv1")
    out = read_frames(path, np.zeros(1), (90, 90)).frames[0].astype(float)
    reference = frame.astype(float).reshape(90, 2, 160, 2, 3).mean(axis=(1, 3))[:, 35:125]
    assert out.shape == (90, 90, 3)
    assert np.abs(out - reference).max() <= 2


def test_iter_display_frames_gray_mask(media):
    frames = iter_display_frames(media / MASK_VIDEO, fmt="gray")
    first = [next(frames) for _ in range(5)]
    frames.close()
    times = [t for t, _ in first]
    assert times == pytest.approx([i / 30 for i in range(5)])
    for _, mask in first:
        assert mask.shape == (200, 200) and mask.dtype == np.uint8
        assert np.isin(mask, [0, 1, 254, 255]).mean() > 0.99  # limited range expanded to 0..255


def test_iter_display_frames_is_oriented(media):
    t, frame = next(iter_display_frames(media / TRANSPOSE))
    assert t == 0.0 and frame.shape == (1080, 720, 3)


def test_frame_time_helpers():
    np.testing.assert_allclose(frame_times(4, 8), [0, 0.125, 0.25, 0.375])
    np.testing.assert_allclose(stretched_frame_times(4, 2.0), [0, 0.5, 1.0, 1.5])
    assert frame_times(3, 24).dtype == np.float64


def test_film_rate_to_24_fps_picks_the_nearest_frame(tmp_path):
    """23.976 fps conformed to 24 fps: output frame i is source frame i (the nearest, as ffmpeg's
    fps filter picks), so frame 0 is not shown twice and nothing lags a frame behind."""
    source = _index_clip(30)
    path = tmp_path / "film.mkv"
    write_video(path, source, 24000 / 1001, codec="ffv1")
    sampled = read_frames(path, frame_times(24, 24), None)
    assert sampled.source_indices.tolist() == list(range(24))
    assert not np.array_equal(sampled.frames[0], sampled.frames[1])
    assert np.array_equal(sampled.frames, source[:24])
