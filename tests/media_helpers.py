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
            chunk = np.ascontiguousarray(np.stack([samples[start:start + 1024]] * 2))
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
