"""Conform one triplet (docs/architecture.md, "Dataset"): check it, then fit reference, target, mask and audio to the
training window and bucket, frame- and pixel-aligned, and write it once, content-addressed.

`check_triplet` depends only on the files; `conform_triplet` also on the settings, so a change
of `number_of_frames` re-runs the fitting but not the checks.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from lib.core.cache import Cache, content_key
from lib.core.clip import save_clip
from lib.core.errors import MediaError, Reason
from lib.core.settings import ConformSettings
from lib.core.storage import FileRef
from lib.ingest.dataset import Triplet
from lib.media import audio, video
from lib.media.masks import conform_mask, token_mask

# Explicit code versions (lib.core.cache.content_key): bump when the output changes for the same inputs.
CHECK_VERSION = "1"  # check_triplet's facts and verdicts
CONFORM_VERSION = "3"  # the conformed clip's bytes and the outcome
DURATION_TOLERANCE_S = 1e-3


class ClipFacts(BaseModel):
    model_config = ConfigDict(frozen=True)

    duration_s: float
    fps: float
    width: int
    height: int
    start_s: float
    audio_peak_dbfs: float


class TripletCheck(BaseModel):
    """Outcome of the file-only checks: facts for the report, or the rejection."""

    model_config = ConfigDict(frozen=True)

    name: str
    reason: Reason | None = None
    message: str = ""
    reference: ClipFacts | None = None
    target: ClipFacts | None = None


class TripletResult(BaseModel):
    """One row of the report; `clip` points at the conformed data when accepted."""

    model_config = ConfigDict(frozen=True)

    name: str
    status: str  # "accepted" | "rejected"
    reason: str | None = None
    message: str = ""
    reference: ClipFacts | None = None
    target: ClipFacts | None = None
    mask_coverage: float | None = None
    reference_loudness_lufs: float | None = None
    target_loudness_lufs: float | None = None
    stretched: bool = False
    caption: str = ""
    clip: FileRef | None = None


def _facts(path: str, role: str) -> ClipFacts:
    info = video.probe(path)
    sound = audio.check_audio(path, role)
    return ClipFacts(
        duration_s=info.duration_s,
        fps=info.avg_fps,
        width=info.display_width,
        height=info.display_height,
        start_s=info.start_s,
        audio_peak_dbfs=sound.peak_dbfs,
    )


def check_entry(triplet: Triplet) -> str:
    """The cache entry holding a triplet's check outcome (it depends on the two clips only)."""
    key = content_key("check", CHECK_VERSION, name=triplet.name, start=triplet.start.sha256, end=triplet.end.sha256)
    return f"checks/{key}/check.json"


def check_triplet(triplet: Triplet, cache: Cache | None = None) -> TripletCheck:
    """Decodability and audio presence/signal of both clips (the mask is read when conforming);
    with a cache, a stored outcome for the same files and code version is read back instead."""
    if cache is None:
        return _check(triplet)
    entry = check_entry(triplet)
    if cache.sync(entry):
        return TripletCheck.model_validate_json(cache.path(entry).read_text())
    check = _check(triplet)
    _store(cache, entry, check)
    return check


def _store(cache: Cache, entry: str, outcome: BaseModel) -> None:
    with cache.writing(entry) as partial:
        Path(partial).write_text(outcome.model_dump_json())


def _check(triplet: Triplet) -> TripletCheck:
    facts = {}
    for role, ref in (("reference", triplet.start), ("target", triplet.end)):
        try:
            facts[role] = _facts(ref.path, role)
        except MediaError as error:
            return TripletCheck(name=triplet.name, reason=Reason(error.code), message=error.message, **facts)
    return TripletCheck(name=triplet.name, **facts)


def too_short(clips: dict[str, tuple[str, float]], settings: ConformSettings) -> dict[str, tuple[str, float]]:
    """Of `clips` (role -> (path, duration in s)), those shorter than the settings' window: one rule,
    with one tolerance, for training triplets and validation samples."""
    return {role: clip for role, clip in clips.items() if clip[1] + DURATION_TOLERANCE_S < settings.window_s}


def refuse_short(
    label: str,
    short: dict[str, tuple[str, float]],
    settings: ConformSettings,
    fields: tuple[str, str] = ("number_of_frames", "frame_rate"),
) -> None:
    """MediaError (too_short) naming each short file, unless auto_scale_input stretches them."""
    if not short or settings.auto_scale_input:
        return
    clips = ", ".join(f"{role} {Path(path).name} ({duration:.2f} s)" for role, (path, duration) in short.items())
    raise MediaError(
        f"{label}{clips} is shorter than the {settings.window_s:.2f} s needed for "
        f"{settings.number_of_frames} frames at {settings.frame_rate} fps ({fields[0]}, {fields[1]}); "
        "use longer clips, fewer frames, or auto_scale_input=true to stretch them.",
        Reason.TOO_SHORT.value,
    )


def refuse_empty_mask(label: str, mask_path: str, mask: np.ndarray) -> None:
    """MediaError (mask_selects_nothing) when the conformed mask regenerates no latent token: no
    32x32 cell of the cropped frame is more than half WHITE in any frame (masks.token_mask)."""
    if not token_mask(mask).any():
        raise MediaError(
            f"{label}mask '{Path(mask_path).name}' selects nothing inside the cropped frame: no 32x32 "
            "block is more than half WHITE (the model regenerates whole blocks); WHITE marks the region "
            "to regenerate.",
            Reason.MASK_SELECTS_NOTHING.value,
        )


def fit_frames(path: str, duration_s: float, settings: ConformSettings, stretch: bool) -> video.SampledFrames:
    """The window's frames at the bucket size; `stretch` squeezes the whole clip onto them."""
    times = (
        video.stretched_frame_times(settings.number_of_frames, duration_s)
        if stretch
        else video.frame_times(settings.number_of_frames, settings.frame_rate)
    )
    return video.read_frames(path, times, (settings.width, settings.height))


def fit_audio(path: str, start_s: float, duration_s: float, settings: ConformSettings, stretch: bool) -> np.ndarray:
    """(2, window samples) at 16 kHz, aligned to the video's start; stretched like the frames.

    Stretching takes exactly the video's span (`duration_s`), padded or trimmed, so audio that
    runs longer or shorter than the picture stays in sync after the stretch.
    """
    if not stretch:
        return audio.read_audio(path, start_s, settings.window_s)
    sound = audio.read_audio(path, start_s, duration_s)
    return audio.fit_duration(sound, audio.SAMPLE_RATE, settings.window_s, settings.audio_preserve_pitch)


def _fit_clip(path: str, facts: ClipFacts, settings: ConformSettings, stretch: bool):
    return (
        fit_frames(path, facts.duration_s, settings, stretch),
        fit_audio(path, facts.start_s, facts.duration_s, settings, stretch),
    )


def conform_key(triplet: Triplet, check: TripletCheck, settings: ConformSettings) -> str:
    """Keyed by what conforming reads: the files, the caption, the settings and the check's facts
    (so a new check version refits only if the facts it reports changed)."""
    return content_key(
        "conformed",
        CONFORM_VERSION,
        start=triplet.start.sha256,
        end=triplet.end.sha256,
        mask=triplet.mask.sha256,
        caption=triplet.caption,
        settings=settings.model_dump(),
        check=check.model_dump(mode="json"),
    )


def outcome_entry(triplet: Triplet, check: TripletCheck, settings: ConformSettings) -> str:
    """The cache entry holding a triplet's conform outcome (its TripletResult) for these settings."""
    return f"conformed/{conform_key(triplet, check, settings)}/result.json"


def _reuse(cache: Cache, outcome: str) -> TripletResult | None:
    """A stored outcome whose clip is still in the cache (both copies refilled if one was cleaned)."""
    if not cache.sync(outcome):
        return None
    cached = TripletResult.model_validate_json(cache.path(outcome).read_text())
    if cached.clip is None:
        return cached
    if not cache.sync(cached.clip.entry):
        return None
    return cached.model_copy(update={"clip": cache.ref(cached.clip.entry, cached.clip.sha256)})  # this worker's path


def conform_triplet(triplet: Triplet, check: TripletCheck, settings: ConformSettings, cache: Cache) -> TripletResult:
    """Fit an accepted-by-check triplet to the window and bucket; reject with a reason otherwise.

    The outcome is stored beside the conformed clip, keyed by content and settings, so a rerun
    (the CLI's check, another worker, a flow whose Prefect cache is gone) reads it back instead of
    decoding again.
    """
    base = dict(name=triplet.name, reference=check.reference, target=check.target)
    if check.reason is not None:
        return TripletResult(status="rejected", reason=check.reason.value, message=check.message, **base)
    outcome = outcome_entry(triplet, check, settings)
    cached = _reuse(cache, outcome)
    if cached is not None:
        return cached
    result = _conform(triplet, check, settings, cache, base)
    _store(cache, outcome, result)
    return result


def _conform(
    triplet: Triplet, check: TripletCheck, settings: ConformSettings, cache: Cache, base: dict
) -> TripletResult:
    label = f"'{triplet.name}': "
    short = too_short(
        {
            "reference": (triplet.start.path, check.reference.duration_s),
            "target": (triplet.end.path, check.target.duration_s),
        },
        settings,
    )
    try:
        refuse_short(label, short, settings)
        # Reference and target decode side by side: PyAV releases the GIL while decoding/scaling.
        with ThreadPoolExecutor(max_workers=2) as pool:
            reference_job = pool.submit(_fit_clip, triplet.start.path, check.reference, settings, "reference" in short)
            target_frames, target_audio = _fit_clip(triplet.end.path, check.target, settings, "target" in short)
            reference_frames, reference_audio = reference_job.result()
        mask = conform_mask(
            triplet.mask.path,
            target_frames.source_indices,
            (check.target.width, check.target.height),
            (settings.width, settings.height),
        )
        refuse_empty_mask(label, triplet.mask.path, mask)
    except MediaError as error:
        return TripletResult(status="rejected", reason=error.code, message=error.message, **base)
    loudness = [audio.loudness_lufs(s, audio.SAMPLE_RATE) for s in (reference_audio, target_audio)]
    if settings.audio_normalize:
        reference_audio, target_audio = audio.peak_normalize(reference_audio), audio.peak_normalize(target_audio)
    caption = " ".join(p for p in (settings.trigger_phrase, triplet.caption) if p)
    key = conform_key(triplet, check, settings)
    clip = save_clip(
        cache,
        f"conformed/{key}/clip.safetensors",
        {
            "reference": reference_frames.frames,
            "target": target_frames.frames,
            "mask": mask,
            "reference_audio": reference_audio.astype(np.float32),
            "target_audio": target_audio.astype(np.float32),
        },
        {
            "name": triplet.name,
            "caption": caption,
            "frame_rate": str(settings.frame_rate),
            "sample_rate": str(audio.SAMPLE_RATE),
        },
        key,
    )
    return TripletResult(
        status="accepted",
        mask_coverage=float(mask.mean()),
        stretched=bool(short),
        reference_loudness_lufs=loudness[0],
        target_loudness_lufs=loudness[1],
        caption=caption,
        clip=clip,
        **base,
    )
