"""Writing video (+ optional audio) and WAV files with PyAV, atomically.

A file only ever appears complete: we encode into a hidden temp file in the destination
folder (same filesystem, so the final os.replace is atomic) and rename it at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from lib.core.storage import atomic_file

_CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".wav": "wav"}
# Lossless codecs get an RGB pixel format by default so pixels round-trip exactly.
# (FFV1 has no 8-bit planar RGB, only the packed bgr0.)
_DEFAULT_PIX_FMT = {"ffv1": "bgr0", "libx264rgb": "rgb24", "png": "rgb24"}
# libx264 at CRF 18 is visually lossless (these files feed training and review);
# libx264rgb is only worth choosing when it is really lossless (qp 0).
_ENCODER_OPTIONS = {"libx264": {"crf": "18", "threads": "1"}, "libx264rgb": {"qp": "0", "threads": "1"}}
_LAYOUTS = {1: "mono", 2: "stereo", 3: "3.0", 4: "4.0", 5: "5.0", 6: "5.1", 7: "6.1", 8: "7.1"}
_AUDIO_CHUNK = 4096  # samples per frame handed to the encoder (it re-chunks to its frame size)


def write_video(
    path,
    frames: np.ndarray,
    fps: float,
    audio: np.ndarray | None = None,
    sample_rate: int | None = None,
    codec: str = "h264",
    pix_fmt: str | None = None,
) -> None:
    """Write (N, H, W, 3) uint8 RGB frames (or (N, H, W) gray) at `fps`, plus optional audio.

    codec "h264" (mp4/mov/mkv, AAC audio) is for looking at; "ffv1" in .mkv is lossless and
    takes any size. pix_fmt None picks yuv420p, or RGB for lossless codecs. 4:2:0 / 4:2:2
    formats need even sizes, so an odd last row/column is dropped.
    """
    frames = _check_frames(frames)
    encoder = _encoder(codec)
    pix_fmt = pix_fmt or _default_pix_fmt(encoder, gray=frames.ndim == 3)
    frames = _even_crop(frames, pix_fmt)
    if audio is not None:
        audio = _check_audio(audio, sample_rate)
    with _atomic(path) as (tmp, container_format), av.open(tmp, "w", format=container_format) as out:
        video = out.add_stream(encoder, rate=_rate(fps))
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        video.options = _ENCODER_OPTIONS.get(encoder, {})
        sound = None
        if audio is not None:
            sound = out.add_stream("aac", rate=sample_rate, layout=_layout(audio.shape[0]))
        _mux(out, video, frames, sound, audio, sample_rate)


def _mux(out, video, frames: np.ndarray, sound, audio, sample_rate) -> None:
    source_format = "gray" if frames.ndim == 3 else "rgb24"
    time_base = 1 / video.codec_context.framerate
    chunks = _audio_frames(audio, sample_rate) if sound is not None else iter(())
    pending = next(chunks, None)
    for index, array in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(array, format=source_format)
        frame.pts, frame.time_base = index, time_base
        out.mux(video.encode(frame))
        # Interleave audio up to this frame's end so the muxer need not buffer all of it.
        frame_end = (index + 1) * time_base * (sample_rate or 0)  # in audio samples
        while pending is not None and pending.pts < frame_end:
            out.mux(sound.encode(pending))
            pending = next(chunks, None)
    while pending is not None:
        out.mux(sound.encode(pending))
        pending = next(chunks, None)
    out.mux(video.encode(None))
    if sound is not None:
        out.mux(sound.encode(None))


def write_wav(path, audio: np.ndarray, sample_rate: int) -> None:
    """(channels, samples) float in [-1, 1] -> 16-bit PCM WAV."""
    audio = _check_audio(audio, sample_rate)
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    layout = _layout(pcm.shape[0])
    with _atomic(path) as (tmp, _), av.open(tmp, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=sample_rate, layout=layout)
        # Packed s16 wants one row of interleaved samples.
        frame = av.AudioFrame.from_ndarray(pcm.T.reshape(1, -1).copy(), format="s16", layout=layout)
        frame.sample_rate, frame.pts = sample_rate, 0
        out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def _encoder(codec: str) -> str:
    if codec in ("h264", "libx264"):
        # Prefer libx264 by name: the plain "h264" lookup may resolve to a hardware encoder.
        return "libx264" if "libx264" in av.codecs_available else "h264"
    return codec


def _default_pix_fmt(encoder: str, gray: bool) -> str:
    if encoder not in _DEFAULT_PIX_FMT:
        return "yuv420p"
    return "gray" if gray and encoder != "libx264rgb" else _DEFAULT_PIX_FMT[encoder]


def _rate(fps: float) -> Fraction:
    # NTSC rates arrive as 29.97 or 30000/1001; both must stay exact-ish for the muxer.
    return Fraction(fps).limit_denominator(1001)


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or (frames.ndim == 4 and frames.shape[3] != 3):
        raise ValueError(f"frames must be uint8 (N, H, W, 3) or (N, H, W), got {frames.dtype} {frames.shape}")
    if len(frames) == 0:
        raise ValueError("frames is empty: a video needs at least one frame")
    return frames


def _even_crop(frames: np.ndarray, pix_fmt: str) -> np.ndarray:
    planes = av.VideoFormat(pix_fmt, 3, 3).components
    even_width = any(p.width < 3 for p in planes)
    even_height = any(p.height < 3 for p in planes)
    height, width = frames.shape[1], frames.shape[2]
    return frames[:, : height - height % 2 if even_height else height, : width - width % 2 if even_width else width]


def _check_audio(audio, sample_rate) -> np.ndarray:
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 2 or audio.shape[0] not in _LAYOUTS:
        raise ValueError(f"audio must be (channels, samples) with 1-8 channels, got {audio.shape}")
    if not sample_rate:
        raise ValueError("sample_rate is required with audio")
    return np.clip(audio, -1.0, 1.0)


def _layout(channels: int) -> str:
    return _LAYOUTS[channels]


def _audio_frames(audio: np.ndarray, sample_rate: int) -> Iterator[av.AudioFrame]:
    layout = _layout(audio.shape[0])
    for start in range(0, audio.shape[1], _AUDIO_CHUNK):
        chunk = np.ascontiguousarray(audio[:, start : start + _AUDIO_CHUNK])
        frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
        frame.sample_rate, frame.pts, frame.time_base = sample_rate, start, Fraction(1, sample_rate)
        yield frame


@contextmanager
def _atomic(path) -> Iterator[tuple[str, str]]:
    """Yield (temp path, container format); the temp file replaces `path` only on success."""
    path = Path(path)
    container_format = _CONTAINERS.get(path.suffix.lower())
    if container_format is None:
        raise ValueError(f"{path.name}: unsupported extension; use one of {sorted(_CONTAINERS)}")
    with atomic_file(path) as tmp:
        yield tmp, container_format
