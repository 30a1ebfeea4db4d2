"""Test-side media crafting: pair real clips into triplets, mux a tone into silent clips,
pack per-frame PNG masks into a lossless video mask."""

from __future__ import annotations

import zipfile
from pathlib import Path

import av
import numpy as np
from PIL import Image

from lib.media.encode import write_video


def with_tone(source: Path, destination: Path, frequency_hz: float = 440.0) -> Path:
    """Copy the video stream untouched and add an AAC tone as long as the video."""
    with av.open(str(source)) as inp, av.open(str(destination), "w") as out:
        video_in = inp.streams.video[0]
        video_out = out.add_stream_from_template(video_in)
        duration = float(video_in.duration * video_in.time_base) if video_in.duration else float(inp.duration / 1e6)
        audio_out = out.add_stream("aac", rate=48000, layout="stereo")
        for packet in inp.demux(video_in):
            if packet.dts is None:
                continue
            packet.stream = video_out
            out.mux(packet)
        samples = (0.3 * np.sin(2 * np.pi * frequency_hz * np.arange(int(duration * 48000)) / 48000)).astype(np.float32)
        for start in range(0, len(samples), 1024):
            chunk = np.ascontiguousarray(np.stack([samples[start : start + 1024]] * 2))
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout="stereo")
            frame.sample_rate, frame.pts = 48000, start
            out.mux(audio_out.encode(frame))
        out.mux(audio_out.encode(None))
    return destination


def pack_png_masks(folder: Path, destination: Path, fps: float = 24) -> Path:
    """Per-frame palette PNGs → lossless video; object ids (index > 0) become WHITE."""
    frames = []
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as image:
            selected = np.asarray(image) > 0 if image.mode == "P" else np.asarray(image.convert("L")) >= 128
        frames.append(np.repeat((selected * 255).astype(np.uint8)[..., None], 3, axis=2))
    write_video(destination, np.stack(frames), fps, codec="ffv1")
    return destination


def make_zip(path: Path, members: dict[str, Path]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, source in members.items():
            archive.write(source, name)
    return path


# --- the real files the video tests read, and what they check against ---

IPHONE = "hevc10_aac_1920x1080_60fps_0.1s_rot-90_iphone.mov"
BUNNY_ROT = "h264_aac-5.1_1920x1080_24fps_2s_rot-90_audiolonger.mp4"
ROT90 = "h264_aac_1280x720_29.97fps_5s_rot90.mp4"
ROT180_VFR = "h264_aac-mono_1280x720_vfr10fps_2.4s_rot180.mp4"
TRANSPOSE = "h264_aac_1080x720_29.97fps_1s_transpose-matrix.mp4"
SAR_2_1 = "h264_noaudio_640x360-sar2to1_30fps_5s.mp4"
EDIT_LIST = "h264_aac_854x480_25fps_9s_editlist.mp4"
SCREENREC = "h264_noaudio_3026x1386_vfr_8.7s_screenrec.mp4"
HEVC_FULL_RANGE = "hevc_aac_1920x1080_30fps_10s.mp4"
AV1_10BIT = "av1-10bit_aac_720x1280_29.97fps_4.2s_portrait_hdr10.mp4"
NO_DURATION = "vp9_opus-silent_1280x720_14.985fps_4.9s_noduration.webm"
MKV_MS = "h264_ac3_1080x720_29.97fps_1s.mkv"
MASK_VIDEO = "masks/mask_video_h264_200x200_30fps_10s.mp4"


def first_coded_frame(path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def presentation_times(path) -> np.ndarray:
    """Packet pts in presentation order, relative to the first (demux only: cheap)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        pts = sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
        return (np.array(pts, dtype=np.float64) - pts[0]) * float(stream.time_base)


def expected_indices(pts: np.ndarray, times: np.ndarray) -> np.ndarray:
    """The frame nearest to t, a tie going to the later frame (ffmpeg's fps filter, round=near)."""
    later = np.clip(np.searchsorted(pts, times, side="left"), 0, len(pts) - 1)
    earlier = np.clip(later - 1, 0, len(pts) - 1)
    return np.where(times >= (pts[earlier] + pts[later]) / 2 - 1e-6, later, earlier)
