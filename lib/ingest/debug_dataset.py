"""`debug_dataset`: an archive of exactly what training will see, for a person to inspect.

Per accepted triplet: preview.mp4 (reference | target with the mask tinted red, target audio),
reference.wav, target.wav, caption.txt; plus report.json at the top.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from lib.core.clip import clip_metadata, load_clip
from lib.core.storage import FileRef, atomic_file
from lib.ingest.conform import TripletResult
from lib.media.audio import SAMPLE_RATE
from lib.media.encode import write_video, write_wav
from lib.media.masks import mask_overlay


def _add_triplet(archive: zipfile.ZipFile, result: TripletResult, scratch: Path) -> None:
    clip = load_clip(result.clip.path)
    frame_rate = float(clip_metadata(result.clip.path)["frame_rate"])
    preview = np.concatenate([clip["reference"], mask_overlay(clip["target"], clip["mask"])], axis=2)
    files = {
        "preview.mp4": lambda p: write_video(p, preview, frame_rate, clip["target_audio"], SAMPLE_RATE),
        "reference.wav": lambda p: write_wav(p, clip["reference_audio"], SAMPLE_RATE),
        "target.wav": lambda p: write_wav(p, clip["target_audio"], SAMPLE_RATE),
    }
    for name, write in files.items():
        write(scratch / name)
        archive.write(scratch / name, f"{result.name}/{name}")
    archive.writestr(f"{result.name}/caption.txt", result.caption)


def write_debug_dataset(results: list[TripletResult], report: dict, destination: Path) -> FileRef:
    with (
        atomic_file(destination) as partial,
        tempfile.TemporaryDirectory() as scratch,
        zipfile.ZipFile(partial, "w") as archive,
    ):
        archive.writestr("report.json", json.dumps(report, indent=2))
        for result in results:
            _add_triplet(archive, result, Path(scratch))
    return FileRef.of(destination)
