"""The inputs of a generation, fetched and conformed exactly as validation samples are
(lib/ingest/validation.py: the same conform and refusals, downloads retried), plus the one rule only
generation needs: the source must fit the model's window.

Long sources are refused, not windowed: a source holding a whole latent group (8 frames) more than
`number_of_frames` would lose that part silently, and stitching windows would need the kept
pixels, the audio and the regenerated region continuous across seams, which one sampler call
does not give. The message names the duration and how to split the clip.
"""

from __future__ import annotations

from pathlib import Path

from lib.core.cache import Cache
from lib.core.errors import DownloadError, InvalidDataset, MediaError
from lib.core.generate import GenerateRequest
from lib.core.redact import redact_url
from lib.core.storage import FileRef, fetch_with_retries
from lib.ingest.conform import DURATION_TOLERANCE_S
from lib.ingest.validation import conform_sample
from lib.media import video

VALIDATION_LABEL = "validation sample: "  # conform_sample's prefix; here the field names say it
MAX_FRAMES = 121  # the request's upper bound: the model's window
FRAME_GROUP = 8  # the video VAE's temporal stride


class InvalidGenerateInput(InvalidDataset):
    """A source, mask or reference cannot be used (422); raised before any GPU is asked for. Billed 0."""

    code = "invalid_generate_input"


def refuse_long(source_path: str, request: GenerateRequest, name: str) -> None:
    """MediaError (too_long) when the source holds at least one more latent group than the output."""
    duration = video.probe(source_path).duration_s
    limit = (request.number_of_frames + FRAME_GROUP) / request.frame_rate
    if duration + DURATION_TOLERANCE_S < limit:
        return
    frames = int(duration * request.frame_rate + DURATION_TOLERANCE_S)
    fits = min(MAX_FRAMES, (frames - 1) // FRAME_GROUP * FRAME_GROUP + 1)
    hint = (
        f"set number_of_frames={fits} to cover it"
        if fits > request.number_of_frames
        else f"it is longer than the model's window ({MAX_FRAMES} frames, {MAX_FRAMES / request.frame_rate:.2f} s)"
    )
    raise MediaError(
        f"video '{name}' lasts {duration:.2f} s ({frames} frames at {request.frame_rate} "
        f"fps), longer than the {request.number_of_frames} frames (number_of_frames, "
        f"{request.window_s:.2f} s) one generation produces: {hint}, or cut the source into clips of "
        f"at most {(request.number_of_frames + FRAME_GROUP - 1) / request.frame_rate:.2f} s and "
        "generate each.",
        "too_long",
    )


ROLES = {
    "video": "video_url",
    "mask": "mask_url",
    "reference_video": "reference_video_url",
    "reference_audio": "reference_audio_url",
}  # fetch_sample's roles -> the request's fields


def fetch_inputs(request: GenerateRequest, downloads: Path, resolve=None) -> dict[str, FileRef]:
    """Every input file by role, each download retried on transient failures (as `av2av check`'s).
    `resolve(url, field)`: the real URL of a `secret://NAME` reference (the flow's Secret blocks)."""
    files = {}
    for role, field in ROLES.items():
        url = getattr(request, field)
        if url:
            files[role] = fetch_with_retries(resolve(url, field) if resolve else url, downloads)
    return files


def prepare_inputs(request: GenerateRequest, prompt: str, cache: Cache, resolve=None) -> FileRef:
    """Fetch, check and conform the source, mask and references into one clip file (the
    validation layout), cached by content; InvalidGenerateInput (422) names the file and the rule."""
    files: dict[str, FileRef] = {}
    try:
        files |= fetch_inputs(request, Path(cache.local) / "downloads", resolve)
        refuse_long(files["video"].path, request, user_name(request.video_url))
        return conform_sample(files, prompt, request.conform(), cache)
    except (DownloadError, MediaError) as error:
        message = error.message.replace(VALIDATION_LABEL, "")
        for role, ref in files.items():  # downloads are named by their hash: show the user's names
            message = message.replace(Path(ref.path).name, user_name(getattr(request, ROLES[role])))
        raise InvalidGenerateInput(f"Invalid generate input (422): {error.code}: {message}") from error


def user_name(url: str) -> str:
    """The user's name for a file: the last part of its URL (redacted) or path."""
    shown = redact_url(url)
    return Path(shown.rstrip("/")).name or shown
