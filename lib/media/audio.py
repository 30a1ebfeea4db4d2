"""Audio side of a triplet: probe, silence check, read at 16 kHz stereo aligned to the video, fit, levels.

Decoding is PyAV (its resampler only converts sample format and downmixes >2 channels at the native
rate); resampling and time-stretch are librosa (soxr, phase vocoder); loudness is pyloudnorm.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import av
import librosa
import numpy as np

from lib.core.errors import MediaError, Reason

SAMPLE_RATE = 16_000  # the audio VAE's rate
SILENCE_DBFS = -60.0  # a track whose peak is below this is "silent"
NORMALIZE_PEAK_DBFS = -1.0

# Timestamp differences up to this are container rounding (Matroska stores ms), not real gaps:
# absorbing them keeps frames contiguous instead of leaving one-sample holes (clicks).
PTS_JITTER_S = 0.02
# Decode this far past the window so the resampler's filter sees real signal at the window's end.
RESAMPLE_MARGIN_S = 0.1


@dataclass(frozen=True)
class AudioInfo:
    has_audio: bool
    sample_rate: int | None
    channels: int | None
    duration_s: float | None  # span from start_s to the end of the last frame, gaps included
    start_s: float | None  # first audio pts in seconds (container time)
    peak_dbfs: float  # over the whole track; -inf when digitally silent or no track


NO_AUDIO = AudioInfo(False, None, None, None, None, -math.inf)


@contextmanager
def _open(path):
    """Open a container; any FFmpeg failure (also mid-decode) becomes a MediaError naming the file."""
    try:
        with av.open(str(path)) as container:
            yield container
    except av.error.FFmpegError as exc:
        raise MediaError(
            f"{Path(path).name}: cannot decode the file ({exc}); use a common video format "
            "(mp4/mov/webm/mkv) with a readable audio track",
            code=Reason.UNDECODABLE.value,
        ) from exc


def _frames(
    container, stream, stereo: bool, stop_s: float | None = None
) -> Iterator[tuple[float | None, int, np.ndarray]]:
    """Yield (pts seconds, sample rate, float32 (C, n)) per decoded frame, in decode order.

    The resampler keeps the native rate, so its output lines up sample for sample with the input
    frame and the input pts still applies. It only downmixes when there are more than 2 channels:
    its mono->stereo upmix is -3 dB, and we want mono duplicated at full level.
    """
    resampler = None
    for frame in container.decode(stream):
        pts_s = None if frame.pts is None else float(frame.pts * frame.time_base)
        if stop_s is not None and pts_s is not None and pts_s > stop_s:
            return
        if resampler is None:
            downmix = stereo and frame.layout.nb_channels > 2
            resampler = av.AudioResampler(format="fltp", layout="stereo" if downmix else None, rate=frame.sample_rate)
        data = [f.to_ndarray() for f in resampler.resample(frame)]
        if data:
            yield pts_s, frame.sample_rate, np.concatenate(data, axis=1).astype(np.float32, copy=False)


def _placed(frames, jitter_s: float = PTS_JITTER_S) -> Iterator[tuple[float, int, int, np.ndarray]]:
    """Yield (start_s, rate, at, data): `at` is the frame's sample offset from the first frame's pts.

    Real gaps stay gaps: phone recorders drop audio at the start (the fire2 clip has a 155 ms hole
    after its first frame), and concatenating would pull every later sample early.
    """
    start_s, rate, cursor = None, None, 0
    for pts_s, frame_rate, data in frames:
        if start_s is None:
            start_s, rate = (pts_s or 0.0), frame_rate
        at = cursor if pts_s is None else max(0, round((pts_s - start_s) * rate))
        if abs(at - cursor) <= jitter_s * rate:
            at = cursor
        cursor = at + data.shape[1]
        yield start_s, rate, at, data


def _assemble(frames) -> tuple[float, int, np.ndarray]:
    """Lay the frames out at the native rate -> (start_s, rate, (C, n)); gaps are silence."""
    start_s, rate, chunks = 0.0, 0, []
    for start_s, rate, at, data in _placed(frames):  # noqa: B007 (the last frame's start and rate are kept)
        chunks.append((at, data))
    if not chunks:
        return start_s, rate, np.zeros((0, 0), np.float32)
    out = np.zeros((chunks[0][1].shape[0], max(at + d.shape[1] for at, d in chunks)), np.float32)
    for at, data in chunks:  # a later frame that overlaps an earlier one wins: it is the newer data
        out[:, at : at + data.shape[1]] = data
    return start_s, rate, out


def _no_audio(path, role: str | None = None) -> MediaError:
    who = f"{role} clip {Path(path).name}" if role else Path(path).name
    return MediaError(
        f"{who} has no audio track; both clips of a triplet (reference and target) need an "
        "audio track, because the model learns the audio edit together with the video edit",
        code=Reason.NO_AUDIO.value,
    )


def probe_audio(path) -> AudioInfo:
    """Decode the whole audio track (cheap) to measure its peak, start and span as read_audio lays it out."""
    with _open(path) as container:
        stream = container.streams.best("audio")
        if stream is None:
            return NO_AUDIO
        peak, start_s, rate, length = 0.0, None, None, 0
        for start_s, rate, at, data in _placed(_frames(container, stream, stereo=False)):  # noqa: B007 (kept)
            if data.size:
                peak = max(peak, float(np.abs(data).max()))
            length = max(length, at + data.shape[1])
        cc = stream.codec_context
        return AudioInfo(
            has_audio=True,
            sample_rate=cc.sample_rate or None,
            channels=cc.layout.nb_channels or None,
            duration_s=None if start_s is None else length / rate,
            start_s=start_s,
            peak_dbfs=_to_db(peak),
        )


def check_audio(path, role: str) -> AudioInfo:
    """Probe and reject what cannot train the audio branch: no track, or a digitally silent one."""
    info = probe_audio(path)
    if not info.has_audio:
        raise _no_audio(path, role)
    if info.peak_dbfs < SILENCE_DBFS:
        raise MediaError(
            f"{role} clip {Path(path).name} has a silent audio track: its peak is "
            f"{info.peak_dbfs:.1f} dBFS, and a track whose peak is below {SILENCE_DBFS:.0f} dBFS "
            "counts as silent; export the clip with its real sound",
            code=Reason.SILENT_AUDIO.value,
        )
    return info


def read_audio(path, video_start_s: float, window_s: float | None, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """float32 (2, S) at sample_rate, sample 0 at the first video frame (see place_audio)."""
    stop_s = None if window_s is None else video_start_s + window_s + RESAMPLE_MARGIN_S
    with _open(path) as container:
        stream = container.streams.best("audio")
        if stream is None:
            raise _no_audio(path)
        start_s, rate, native = _assemble(_frames(container, stream, stereo=True, stop_s=stop_s))
    audio = np.repeat(native, 2, axis=0) if native.shape[0] == 1 else native
    if audio.shape[1] and rate != sample_rate:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=sample_rate)
    if audio.shape[0] != 2:  # empty track
        audio = np.zeros((2, 0), np.float32)
    return place_audio(audio, start_s, video_start_s, sample_rate, window_s)


def place_audio(
    audio: np.ndarray, audio_start_s: float, video_start_s: float, sample_rate: int, window_s: float | None
) -> np.ndarray:
    """Shift audio that starts at audio_start_s so sample 0 is video_start_s, then fit the window.

    Audio starting after the video is preceded by silence; audio before the video start is
    dropped. window_s None keeps everything up to the end of the audio.
    """
    offset = round((audio_start_s - video_start_s) * sample_rate)
    audio = np.pad(audio, ((0, 0), (offset, 0))) if offset >= 0 else audio[:, -offset:]
    length = audio.shape[1] if window_s is None else round(window_s * sample_rate)
    return _fit_length(audio, length)


def _fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Pad with silence / trim at the end to exactly `length` samples; always float32."""
    audio = audio[..., :length]
    pad = length - audio.shape[-1]
    if pad:
        audio = np.pad(audio, [(0, 0)] * (audio.ndim - 1) + [(0, pad)])
    return np.ascontiguousarray(audio, dtype=np.float32)


def fit_duration(audio: np.ndarray, sample_rate: int, target_s: float, preserve_pitch: bool) -> np.ndarray:
    """Stretch/squeeze to exactly round(target_s * sample_rate) samples.

    preserve_pitch: phase-vocoder time-stretch (speech stays at its pitch); otherwise a plain
    resample, which shifts pitch like tape speed but has no phasing artefacts.
    """
    length = round(target_s * sample_rate)
    current = audio.shape[-1]
    if current == 0 or length == 0:
        return np.zeros(audio.shape[:-1] + (length,), np.float32)
    if current == length:
        return _fit_length(audio, length)
    if preserve_pitch:
        out = librosa.effects.time_stretch(audio, rate=(current / sample_rate) / target_s)
    else:
        # Treating the lengths as rates maps `current` samples onto `length` samples.
        out = librosa.resample(audio, orig_sr=current, target_sr=length)
    return _fit_length(out, length)


def _to_db(peak: float) -> float:
    return 20.0 * math.log10(peak) if peak > 0 else -math.inf


def peak_db(audio: np.ndarray) -> float:
    """Sample peak in dBFS (1.0 = 0 dBFS); -inf for digital silence or no samples."""
    return _to_db(float(np.abs(audio).max())) if audio.size else -math.inf


def peak_normalize(audio: np.ndarray, peak_dbfs: float = NORMALIZE_PEAK_DBFS) -> np.ndarray:
    """Scale so the sample peak is peak_dbfs; silence is returned unchanged (no gain to infer)."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if peak == 0.0:
        return audio
    return (audio * (10.0 ** (peak_dbfs / 20.0) / peak)).astype(np.float32)


def loudness_lufs(audio: np.ndarray, sample_rate: int) -> float | None:
    """Integrated loudness (ITU-R BS.1770) of (C, S) or (S,) audio.

    None when the clip is shorter than one 400 ms gating block or gates to -inf (silent).
    """
    import pyloudnorm  # pulls in scipy.signal (1.4 s): only conforming needs it, not `av2av check`'s start-up

    meter = pyloudnorm.Meter(sample_rate)
    if audio.shape[-1] < meter.block_size * sample_rate:
        return None
    with np.errstate(divide="ignore"):  # silent blocks take log10(0) before gating drops them
        lufs = meter.integrated_loudness(np.asarray(audio, dtype=np.float64).T)
    return float(lufs) if math.isfinite(lufs) else None
