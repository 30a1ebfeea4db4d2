"""Validation samples: fetched and conformed with the training code, checked before training.

Each sample {prompt, video_url, mask_url, reference_video_url, reference_audio_url?} becomes a
clip file in the training layout (target = the source video, reference, mask, reference audio;
target audio silent: it is what the sampler generates), so encoding and conditioning are the
very code training uses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lib.core.cache import Cache, content_key
from lib.core.clip import save_clip
from lib.core.config import ValidationSample
from lib.core.errors import DownloadError, InvalidDataset, MediaError
from lib.core.settings import ConformSettings
from lib.core.storage import FileRef, fetch
from lib.ingest.conform import fit_audio, fit_frames, refuse_empty_mask, refuse_short, too_short
from lib.media import audio, video
from lib.media.masks import conform_mask

VALIDATION_VERSION = "2"


class InvalidValidationSample(InvalidDataset):
    """A validation sample cannot be used (422); raised before training starts. Billed 0."""

    code = "invalid_validation_sample"


def fetch_sample(sample: ValidationSample, downloads: Path) -> dict[str, FileRef]:
    urls = {"video": sample.video_url, "mask": sample.mask_url, "reference_video": sample.reference_video_url}
    if sample.reference_audio_url:
        urls["reference_audio"] = sample.reference_audio_url
    return {role: fetch(url, downloads) for role, url in urls.items()}


def _reference_audio(
    files: dict[str, FileRef], settings: ConformSettings, reference: video.VideoInfo, stretch: bool
) -> np.ndarray:
    if "reference_audio" in files:
        path = files["reference_audio"].path
        info = audio.check_audio(path, "reference audio")
        return fit_audio(path, info.start_s or 0.0, reference.duration_s, settings, stretch)
    audio.check_audio(files["reference_video"].path, "reference video (no reference_audio_url given)")
    return fit_audio(files["reference_video"].path, reference.start_s, reference.duration_s, settings, stretch)


def conform_sample(files: dict[str, FileRef], prompt: str, settings: ConformSettings, cache: Cache) -> FileRef:
    """Conform one sample into a clip file (reused when the same files and settings were conformed
    before); MediaError says what is wrong with which file."""
    key = content_key(
        "validation",
        VALIDATION_VERSION,
        files={role: ref.sha256 for role, ref in files.items()},
        prompt=prompt,
        settings=settings.model_dump(),
    )
    entry = f"validation/{key}/clip.safetensors"
    if cache.sync(entry):
        return cache.ref(entry, key)
    source, reference = video.probe(files["video"].path), video.probe(files["reference_video"].path)
    label = "validation sample: "
    short = too_short(
        {"video": (source.path, source.duration_s), "reference video": (reference.path, reference.duration_s)}, settings
    )
    refuse_short(label, short, settings, ("validation_number_of_frames", "validation_frame_rate"))
    source_frames = fit_frames(source.path, source.duration_s, settings, "video" in short)
    reference_frames = fit_frames(reference.path, reference.duration_s, settings, "reference video" in short)
    reference_audio = _reference_audio(files, settings, reference, "reference video" in short)
    mask = conform_mask(
        files["mask"].path,
        source_frames.source_indices,
        (source.display_width, source.display_height),
        (settings.width, settings.height),
    )
    refuse_empty_mask(label, files["mask"].path, mask)
    tensors = {
        "reference": reference_frames.frames,
        "target": source_frames.frames,
        "mask": mask,
        "reference_audio": reference_audio.astype(np.float32),
        "target_audio": np.zeros_like(reference_audio, dtype=np.float32),
    }
    metadata = {
        "name": "validation",
        "caption": prompt,
        "frame_rate": str(settings.frame_rate),
        "sample_rate": str(audio.SAMPLE_RATE),
    }
    return save_clip(cache, entry, tensors, metadata, key)


def prepare_samples(samples: tuple[ValidationSample, ...], settings: ConformSettings, cache: Cache) -> list[FileRef]:
    """Fetch and conform every sample; the first unusable one raises InvalidValidationSample."""
    clips = []
    for index, sample in enumerate(samples, start=1):
        try:
            files = fetch_sample(sample, Path(cache.local) / "downloads")
            clips.append(conform_sample(files, sample.prompt, settings, cache))
        except (DownloadError, MediaError) as error:
            code = getattr(error, "code", "error")
            raise InvalidValidationSample(
                f"Invalid validation sample {index} (422): {code}: {error.message}. Every validation "
                "sample is checked before training; fix or remove it."
            ) from error
    return clips
