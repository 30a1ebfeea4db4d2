"""Behaviour of lib.media.encode: round trips through lib.media.video and plain PyAV decoding."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from lib.media.encode import write_video, write_wav
from lib.media.video import iter_display_frames, probe, read_frames


def _decoded_audio(path) -> tuple[np.ndarray, int]:
    """(channels, samples) float32 and sample rate of the first audio stream."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        resampler = av.AudioResampler(format="fltp")
        chunks = [f.to_ndarray() for frame in container.decode(stream) for f in resampler.resample(frame)]
        return np.concatenate(chunks, axis=1), stream.sample_rate


def _sine(seconds: float, sample_rate: int, channels: int, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.stack([0.5 * np.sin(2 * np.pi * hz * (c + 1) * t) for c in range(channels)]).astype(np.float32)


def _gradient_frames(n: int, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width]
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i, ..., 0] = x * 255 // max(width - 1, 1)
        frames[i, ..., 1] = y * 255 // max(height - 1, 1)
        frames[i, ..., 2] = 5 * i % 256
    return frames


def _leftovers(folder) -> list[str]:
    """Temporary files atomic_file (lib/core/storage.py) leaves if a write is interrupted."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".partial"))


def test_leftover_check_sees_an_interrupted_write(tmp_path):
    from lib.core.storage import atomic_file

    with pytest.raises(RuntimeError), atomic_file(tmp_path / "clip.mp4") as partial:
        Path(partial).write_bytes(b"half")
        Path(partial).rename(tmp_path / ".clip.mp4.kept.partial")  # what a killed process would leave
        raise RuntimeError("interrupted")
    assert _leftovers(tmp_path) == [".clip.mp4.kept.partial"]


def test_h264_with_audio_round_trips(tmp_path):
    fps, sample_rate = 24, 48000
    frames = _gradient_frames(48, 64, 96)
    audio = _sine(2.0, sample_rate, 2)
    path = tmp_path / "clip.mp4"
    write_video(path, frames, fps, audio=audio, sample_rate=sample_rate)

    info = probe(path)
    assert info.has_audio and (info.display_width, info.display_height) == (96, 64)
    assert info.duration_s == pytest.approx(48 / fps, abs=1e-3)
    assert info.avg_fps == pytest.approx(fps)
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert container.streams.audio[0].codec_context.name == "aac"

    decoded, rate = _decoded_audio(path)
    assert rate == sample_rate and decoded.shape[0] == 2
    assert decoded.shape[1] / rate == pytest.approx(2.0, abs=0.03)  # AAC priming is trimmed
    rms = np.sqrt((decoded[:, 4800:-4800] ** 2).mean(axis=1))
    np.testing.assert_allclose(rms, 0.5 / np.sqrt(2), rtol=0.05)

    back = read_frames(path, np.arange(48) / fps, None)
    assert back.source_indices.tolist() == list(range(48))
    assert np.abs(back.frames.astype(int) - frames).mean() < 2
    assert _leftovers(tmp_path) == []


def test_ffv1_is_lossless_at_odd_size(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (5, 121, 161, 3), np.uint8)
    path = tmp_path / "mask.mkv"
    write_video(path, frames, 10, codec="ffv1")
    info = probe(path)
    assert (info.display_width, info.display_height) == (161, 121)
    back = read_frames(path, np.arange(5) / 10, None)
    np.testing.assert_array_equal(back.frames, frames)


def test_gray_frames_round_trip_losslessly(tmp_path):
    masks = (np.random.default_rng(1).random((4, 33, 47)) > 0.5).astype(np.uint8) * 255
    path = tmp_path / "mask.mkv"
    write_video(path, masks, 12, codec="ffv1")
    decoded = np.stack([frame for _, frame in iter_display_frames(path, fmt="gray")])
    np.testing.assert_array_equal(decoded, masks)


def test_libx264rgb_is_lossless(tmp_path):
    frames = np.random.default_rng(2).integers(0, 256, (3, 40, 50, 3), np.uint8)
    path = tmp_path / "rgb.mkv"
    write_video(path, frames, 10, codec="libx264rgb")
    np.testing.assert_array_equal(read_frames(path, np.arange(3) / 10, None).frames, frames)


def test_yuv420_output_drops_an_odd_row_and_column(tmp_path):
    frames = _gradient_frames(3, 121, 161)
    path = tmp_path / "odd.mp4"
    write_video(path, frames, 25)
    info = probe(path)
    assert (info.display_width, info.display_height) == (160, 120)
    back = read_frames(path, np.zeros(1), None).frames[0].astype(int)
    assert np.abs(back - frames[0, :120, :160]).mean() < 2


def test_ntsc_rate_and_six_channels(tmp_path):
    fps = 30000 / 1001
    path = tmp_path / "ntsc.mov"
    write_video(path, _gradient_frames(30, 32, 32), fps, audio=_sine(1.0, 44100, 6, hz=100), sample_rate=44100)
    info = probe(path)
    assert info.avg_fps == pytest.approx(fps, abs=1e-3)
    assert info.duration_s == pytest.approx(30 / fps, abs=1e-3)
    decoded, rate = _decoded_audio(path)
    assert decoded.shape[0] == 6 and rate == 44100


def test_write_wav_round_trips(tmp_path):
    audio = _sine(0.5, 16000, 2)
    audio[0, :10] = [-1.5, 1.5, -1, 1, 0, 0.25, -0.25, 0.5, -0.5, 0]  # out of range is clipped
    path = tmp_path / "sound.wav"
    write_wav(path, audio, 16000)
    with av.open(str(path)) as container:
        assert container.streams.audio[0].codec_context.name == "pcm_s16le"
    decoded, rate = _decoded_audio(path)
    assert rate == 16000 and decoded.shape == audio.shape
    np.testing.assert_allclose(decoded, np.clip(audio, -1, 1), atol=1.5 / 32767)
    assert _leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="no-such-codec"):
        write_video(path, _gradient_frames(2, 16, 16), 10, codec="no-such-codec")
    assert path.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"frames": np.zeros((2, 8, 8, 3), np.float32)},
        {"frames": np.zeros((0, 8, 8, 3), np.uint8)},
        {"frames": np.zeros((2, 8, 8, 4), np.uint8)},
        {"audio": np.zeros((2, 100), np.float32)},  # sample_rate missing
        {"audio": np.zeros(100, np.float32), "sample_rate": 8000},  # not (channels, samples)
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs):
    arguments = {"frames": np.zeros((2, 8, 8, 3), np.uint8), "fps": 10} | kwargs
    with pytest.raises(ValueError):
        write_video(tmp_path / "bad.mp4", **arguments)
    assert list(tmp_path.iterdir()) == []


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        write_video(tmp_path / "clip.xyz", np.zeros((1, 8, 8, 3), np.uint8), 10)
