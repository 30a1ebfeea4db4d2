"""lib/media/audio.py against the shared real media (see shared/media/MANIFEST.tsv) and synthetic signals."""

from __future__ import annotations

import csv
import math
from fractions import Fraction

import av
import numpy as np
import pytest

from lib.core.errors import MediaError, Reason
from lib.media.audio import (
    NORMALIZE_PEAK_DBFS,
    SAMPLE_RATE,
    SILENCE_DBFS,
    check_audio,
    fit_duration,
    loudness_lufs,
    peak_db,
    peak_normalize,
    place_audio,
    probe_audio,
    read_audio,
)

try:
    from tests.conftest import MEDIA
except ModuleNotFoundError:  # `tests` is no package and the repo root is not on sys.path under plain `pytest`
    from conftest import MEDIA

SR = SAMPLE_RATE


def _manifest() -> dict[str, dict[str, str]]:
    if not (MEDIA / "MANIFEST.tsv").is_file():
        return {}
    with open(MEDIA / "MANIFEST.tsv", newline="") as fh:
        return {row["filename"]: row for row in csv.DictReader(fh, delimiter="\t")}


MANIFEST = _manifest()
# Top level only: masks/ holds mask clips and PNGs, not triplet clips.
CLIPS = sorted(name for name in MANIFEST if "/" not in name)
WITH_AUDIO = [name for name in CLIPS if MANIFEST[name]["audio_codec"] != "none"]
SILENT = {
    "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4",
    "vp9_opus-silent_1280x720_14.985fps_4.9s_noduration.webm",
    "vp9-alpha_vorbis-silent_200x200_30fps_5s.webm",
}
# androidx samples whose RMS is below -60 dBFS; the rule is the peak, and their peak is ~-51.5.
LOW_RMS = [name for name in WITH_AUDIO if MANIFEST[name]["audio_rms_dbfs"].startswith("-6")]
# fire2: the first AAC packet lasts 8471 samples but decodes to 1024, a 155 ms hole in the pts.
GAPPY = "h264_aac-mono_1280x720_vfr10fps_2.4s_rot180.mp4"
FIVE_ONE = ["h264_aac-5.1_1920x1080_24fps_2s_rot-90_audiolonger.mp4", "vp9_vorbis-5.1_960x540_60fps_1s.webm"]


def _video_start(path) -> float:
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
        return float(frame.pts * frame.time_base)


def _write_clip(path, audio_start_s: float, duration_s: float = 1.5, rate: int = 48_000) -> None:
    """A 10 fps grey video from t=0 and a mono 440 Hz PCM track that starts at audio_start_s."""
    with av.open(str(path), "w") as container:
        video = container.add_stream("mpeg4", rate=10)
        video.width, video.height, video.pix_fmt = 64, 64, "yuv420p"
        audio = container.add_stream("pcm_s16le", rate=rate, layout="mono")
        for i in range(round(duration_s * 10)):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 128, np.uint8), format="rgb24")
            frame.pts = i
            container.mux(video.encode(frame))
        container.mux(video.encode())
        n = round((duration_s - audio_start_s) * rate)
        pcm = (0.5 * 32767 * np.sin(2 * np.pi * 440 * np.arange(n) / rate)).astype(np.int16)
        for off in range(0, n, 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, off : off + 1024], format="s16", layout="mono")
            frame.sample_rate, frame.time_base = rate, Fraction(1, rate)
            frame.pts = round(audio_start_s * rate) + off
            container.mux(audio.encode(frame))
        container.mux(audio.encode())


def _tone(freq: float, seconds: float, amplitude: float = 0.5, sr: int = SR) -> np.ndarray:
    t = np.arange(round(seconds * sr)) / sr
    return np.tile(amplitude * np.sin(2 * np.pi * freq * t), (2, 1)).astype(np.float32)


def _dominant_hz(audio: np.ndarray, sr: int = SR) -> float:
    spectrum = np.abs(np.fft.rfft(audio[0] * np.hanning(audio.shape[1])))
    return float(np.argmax(spectrum) * sr / audio.shape[1])


# --- probe / check -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CLIPS)
def test_probe_matches_manifest(media, name):
    row, info = MANIFEST[name], probe_audio(media / name)
    print(f"{name}: {info}")
    if row["audio_codec"] == "none":
        assert not info.has_audio
        assert info.peak_dbfs == -math.inf and info.sample_rate is None and info.start_s is None
        return
    assert info.has_audio
    assert info.sample_rate == int(row["sample_rate"])
    assert info.channels == int(row["channels"])
    assert 0.0 <= info.start_s < 0.2
    if name != GAPPY:  # the manifest counts samples; we report the pts span (see test_pts_gap)
        assert info.duration_s == pytest.approx(float(row["audio_duration_s"]), abs=0.01)
    if name in SILENT:
        assert info.peak_dbfs == -math.inf  # digitally silent, not just quiet
    else:
        assert info.peak_dbfs > SILENCE_DBFS


def test_media_counts():
    if not CLIPS:
        pytest.skip("shared media not found")
    assert len(CLIPS) == 28 and len(WITH_AUDIO) == 24 and SILENT <= set(WITH_AUDIO)
    assert len(LOW_RMS) == 5


@pytest.mark.parametrize("name", LOW_RMS)
def test_low_rms_is_not_silent(media, name):
    """RMS below -60 dBFS, but the silence rule is the peak, which is around -51.5 dBFS."""
    info = check_audio(media / name, "target")
    assert -55.0 < info.peak_dbfs < -50.0


def test_aac_peak_can_exceed_full_scale(media):
    # AAC decodes to float and overshoots 0 dBFS; we must not clip when measuring.
    assert probe_audio(media / "h264_aac_972x540_25fps_11.7s_runningcar.mp4").peak_dbfs > 0.5


def test_check_audio_no_track(media):
    name = "vp9_noaudio_161x121_29.97fps_1s.webm"
    with pytest.raises(MediaError) as err:
        check_audio(media / name, "reference")
    assert err.value.code == Reason.NO_AUDIO.value
    assert name in str(err.value) and "reference" in str(err.value)
    assert "both clips" in str(err.value) and "audio track" in str(err.value)


@pytest.mark.parametrize("name", sorted(SILENT))
def test_check_audio_silent(media, name):
    with pytest.raises(MediaError) as err:
        check_audio(media / name, "target")
    assert err.value.code == Reason.SILENT_AUDIO.value
    message = str(err.value)
    assert name in message and "-inf dBFS" in message and "-60 dBFS" in message


def test_check_audio_ok(media):
    info = check_audio(media / "mjpeg_pcmu8_640x480_10fps_1.5s.mov", "reference")
    assert (info.sample_rate, info.channels) == (8000, 1) and info.peak_dbfs > -10


def test_undecodable(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video" * 100)
    for call in (lambda: probe_audio(bad), lambda: check_audio(bad, "target"), lambda: read_audio(bad, 0.0, 1.0)):
        with pytest.raises(MediaError) as err:
            call()
        assert err.value.code == Reason.UNDECODABLE.value and "broken.mp4" in str(err.value)


# --- read_audio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WITH_AUDIO)
def test_read_audio_shape(media, name):
    out = read_audio(media / name, 0.0, 0.5)
    assert out.shape == (2, SR // 2) and out.dtype == np.float32 and np.isfinite(out).all()
    info = probe_audio(media / name)
    full = read_audio(media / name, 0.0, None)
    assert abs(full.shape[1] - (info.start_s + info.duration_s) * SR) <= 1


def test_read_audio_no_track(media):
    with pytest.raises(MediaError) as err:
        read_audio(media / "h264_noaudio_640x360-sar2to1_30fps_5s.mp4", 0.0, 1.0)
    assert err.value.code == Reason.NO_AUDIO.value


def test_mono_is_duplicated(media):
    out = read_audio(media / "av1_aac_1080x720_29.97fps_1s.mp4", 0.0, 1.0)
    assert np.array_equal(out[0], out[1]) and np.abs(out).max() > 0


def test_8khz_u8_mono(media):
    out = read_audio(media / "mjpeg_pcmu8_640x480_10fps_1.5s.mov", 0.0, 1.5)
    assert out.shape == (2, 24_000) and np.array_equal(out[0], out[1])
    assert peak_db(out) == pytest.approx(-6.4, abs=1.0)


@pytest.mark.parametrize("name", FIVE_ONE)
def test_five_one_downmixed(media, name):
    out = read_audio(media / name, _video_start(media / name), 1.0)
    assert out.shape == (2, SR)
    assert np.abs(out[0]).max() > 0 and np.abs(out[1]).max() > 0 and not np.allclose(out[0], out[1])


def test_audio_shorter_is_padded(media):
    name = "h264_aac_320x240_60fps_1.2s_audioshorter.mp4"  # audio 0.023 .. 0.766 s, video 1.2 s
    out = read_audio(media / name, _video_start(media / name), 1.2)
    assert out.shape == (2, round(1.2 * SR))
    assert not out[:, : round(0.023 * SR)].any()  # audio starts 1 AAC frame after the video
    assert np.abs(out[:, round(0.03 * SR) : round(0.7 * SR)]).max() > 0
    assert not out[:, round(0.767 * SR) :].any()  # padding is exact digital silence


def test_audio_shorter_stereo(media):
    name = "h264_aac_576x324_24.006fps_2.9s_audioshorter.mp4"  # audio 2.879 s, video 2.916 s
    out = read_audio(media / name, 0.0, 2.916)
    assert out.shape == (2, round(2.916 * SR)) and not out[:, round(2.88 * SR) :].any()
    assert np.abs(out[:, -round(0.1 * SR) :]).max() > 0


def test_audio_before_video_is_dropped_and_longer_is_trimmed(media):
    path = media / "h264_aac-5.1_1920x1080_24fps_2s_rot-90_audiolonger.mp4"
    video_start = _video_start(path)  # 1/12 s; audio starts at 0 and runs to 2.005 s
    assert video_start == pytest.approx(1 / 12)
    from_zero, aligned = read_audio(path, 0.0, None), read_audio(path, video_start, None)
    shift = round(video_start * SR)
    assert aligned.shape[1] == from_zero.shape[1] - shift
    np.testing.assert_allclose(aligned, from_zero[:, shift:], atol=1e-6)
    window = read_audio(path, video_start, 1.875)  # the video's duration
    assert window.shape == (2, 30_000)
    np.testing.assert_allclose(window[:, :29_000], aligned[:, :29_000], atol=1e-5)


def test_pts_gap_becomes_silence(media):
    path = media / GAPPY
    info = probe_audio(path)
    assert info.duration_s == pytest.approx(2.4165, abs=1e-3)  # 108544 samples would be 2.261 s
    out = read_audio(path, 0.0, None)
    assert not out[:, round(0.03 * SR) : round(0.17 * SR)].any()
    assert np.abs(out[:, round(0.18 * SR) : round(0.3 * SR)]).max() > 0


def test_audio_start_offset_is_honoured(tmp_path):
    path = tmp_path / "late_audio.mkv"
    _write_clip(path, audio_start_s=0.5)
    assert probe_audio(path).start_s == pytest.approx(0.5, abs=1e-3)
    out = read_audio(path, _video_start(path), 1.5)
    assert out.shape == (2, 24_000)
    first = np.flatnonzero(np.abs(out[0]) > 1e-4)[0] / SR
    assert first == pytest.approx(0.5, abs=1024 / 48_000)
    assert np.abs(out[:, round(0.6 * SR) :]).max() > 0.4


def test_place_audio_on_arrays():
    audio = np.ones((2, 100), np.float32)
    late = place_audio(audio, audio_start_s=0.01, video_start_s=0.0, sample_rate=1000, window_s=0.2)
    assert late.shape == (2, 200) and not late[:, :10].any() and late[:, 10:110].all()
    assert not late[:, 110:].any()
    early = place_audio(audio, audio_start_s=0.0, video_start_s=0.03, sample_rate=1000, window_s=None)
    assert early.shape == (2, 70) and early.all()
    short = place_audio(audio, 0.0, 0.0, 1000, 0.05)
    assert short.shape == (2, 50) and short.dtype == np.float32


# --- fit_duration / levels ---------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_fit_duration_preserve_pitch(factor):
    out = fit_duration(_tone(440, 1.0), SR, factor, preserve_pitch=True)
    assert out.shape == (2, round(factor * SR)) and out.dtype == np.float32
    assert _dominant_hz(out) == pytest.approx(440, rel=0.03)


@pytest.mark.parametrize("factor", [2.0, 0.5])
def test_fit_duration_tape(factor):
    out = fit_duration(_tone(440, 1.0), SR, factor, preserve_pitch=False)
    assert out.shape == (2, round(factor * SR))
    assert _dominant_hz(out) == pytest.approx(440 / factor, rel=0.03)


@pytest.mark.parametrize("preserve_pitch", [True, False])
def test_fit_duration_exact_lengths(preserve_pitch):
    for seconds in (1.23456, 0.777, 1.0):
        out = fit_duration(_tone(440, 1.0), SR, seconds, preserve_pitch)
        assert out.shape == (2, round(seconds * SR))
    assert fit_duration(np.zeros((2, 0), np.float32), SR, 0.5, preserve_pitch).shape == (2, 8000)


def test_peak_normalize():
    out = peak_normalize(_tone(440, 0.5, amplitude=0.1))
    assert peak_db(out) == pytest.approx(NORMALIZE_PEAK_DBFS, abs=1e-4) and out.dtype == np.float32
    assert peak_db(peak_normalize(_tone(440, 0.5), -6.0)) == pytest.approx(-6.0, abs=1e-4)
    silent = np.zeros((2, 1000), np.float32)
    assert np.array_equal(peak_normalize(silent), silent)
    assert peak_db(silent) == -math.inf and peak_db(np.ones((2, 3))) == 0.0


def test_loudness():
    lufs = loudness_lufs(_tone(997, 2.0, amplitude=0.5), SR)
    assert lufs is not None and lufs == pytest.approx(-6.0, abs=0.5)  # BS.1770: 0 dBFS sine, 2 ch = 0 LUFS
    assert loudness_lufs(_tone(997, 0.1), SR) is None
    assert loudness_lufs(np.zeros((2, 2 * SR), np.float32), SR) is None
