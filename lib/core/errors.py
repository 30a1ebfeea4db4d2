"""Errors a user can act on. Each names the file or field, the value and the rule.

`code` values are stable and documented in the README (reason codes of the report).
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Why a triplet was rejected (per-triplet rows of the report)."""

    MISSING_START = "missing_start"
    MISSING_END = "missing_end"
    MISSING_MASK = "missing_mask"
    NO_AUDIO = "no_audio"
    SILENT_AUDIO = "silent_audio"
    UNDECODABLE = "undecodable"
    TOO_SHORT = "too_short"
    MASK_UNREADABLE = "mask_unreadable"
    MASK_SELECTS_NOTHING = "mask_selects_nothing"
    DUPLICATE_NAME = "duplicate_name"
    UNSUPPORTED_EXTENSION = "unsupported_extension"


class ArchiveCode(str, Enum):
    """Why a whole archive was refused (the report's `errors`)."""

    NOT_A_ZIP = "not_a_zip"
    UNSAFE_PATH = "unsafe_path"
    SYMLINK = "symlink"
    ENCRYPTED = "encrypted"
    TOO_MANY_FILES = "too_many_files"
    TOO_LARGE = "too_large"


class Av2AvError(Exception):
    """Base of every error we raise on purpose; `code` is machine-readable, str() is for people.

    An expected refusal (REFUSALS, below) also says how it is shown, in one place for every front
    end: `state_name` names the run's Failed state, `exit_status` is the CLI's, and `label` the
    words the CLI puts before the message (None: the message says it all). The others are not
    refusals: they keep their traceback."""

    code: str = "error"
    state_name: str | None = None
    exit_status: int = 1
    label: str | None = None

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def refusal_line(self) -> str:
        """The one line a front end prints for this refusal."""
        return f"{self.label}: {self.message}" if self.label else self.message


class TransferError(Av2AvError):
    """Moving bytes to or from storage failed: the dataset or a validation file (download), or
    the outputs (upload). Billed 0."""

    code = "transfer_failed"


class TransientError(TransferError):
    """A transfer failure worth retrying (connection reset, 5xx, 429, time-out)."""


class DownloadError(TransferError):
    """The training data (or a validation file) could not be fetched."""

    code = "download_failed"
    state_name, label = "DownloadFailed", "Download failed"


class UploadError(TransferError):
    """Writing to output_url failed."""

    code = "upload_failed"
    state_name, label = "UploadFailed", "Upload failed"


class TransientDownloadError(DownloadError, TransientError):
    pass


class TransientUploadError(UploadError, TransientError):
    pass


class ArchiveError(Av2AvError):
    """The archive itself is refused; `code` is an ArchiveCode value."""


class MediaError(Av2AvError):
    """One media file cannot be used; `code` is a Reason value."""


class InvalidRequest(Av2AvError):
    """A parameter cannot be honoured (e.g. resume_from names no usable checkpoint). Billed 0."""

    code = "invalid_request"
    state_name, exit_status, label = "InvalidRequest", 2, "Invalid request"


class ModelUnavailable(Av2AvError):
    """The base model's weights cannot be found or are not LTX-2.3. Billed 0; checked before any
    dataset work, and the message says where it looked and how to point elsewhere."""

    code = "model_unavailable"
    state_name, exit_status, label = "ModelUnavailable", 2, "Model unavailable"


class TrainingDiverged(Av2AvError):
    """The loss or the LoRA's weights stopped being finite numbers: the run stops at once, uploads
    nothing and is billed 0; the message says at which step and what to try."""

    code = "training_diverged"
    state_name, exit_status = "TrainingDiverged", 2


class InvalidDataset(Av2AvError):
    """No triplet qualifies (HTTP-422 style). Carries the report so the caller can show it."""

    code = "invalid_dataset"
    state_name, exit_status = "InvalidDataset", 2

    def __init__(self, message: str, report: dict | None = None):
        super().__init__(message)
        self.report = report or {}


class CacheUnavailable(Av2AvError):
    """The cache location (AV2AV_CACHE_DIR) cannot be reached or written: a worker's set-up, not
    the request. Checked before any dataset work; billed 0."""

    code = "cache_unavailable"
    state_name, label = "CacheUnavailable", "Cache unavailable"


class CacheMiss(CacheUnavailable):
    """An entry a stage needs is in neither the local copy nor the cache location (the cache was
    cleaned while a run was going)."""

    code = "cache_miss"


class StageFailed(Av2AvError):
    """A pipeline stage (fetch, prepare dataset, training, upload ...) failed for a reason that is
    not an expected refusal (a bug, or a machine problem); the message names the stage. Never
    billed as success; logged with its traceback."""

    code = "stage_failed"


# The expected refusals: a run ends Failed under the class's state_name, billed 0, said once.
REFUSALS: tuple[type[Av2AvError], ...] = (
    InvalidDataset,
    InvalidRequest,
    ModelUnavailable,
    UploadError,
    DownloadError,
    CacheUnavailable,
    TrainingDiverged,
)
REFUSAL_STATE_NAMES = tuple(kind.state_name for kind in REFUSALS)


class MissingExtra(ImportError):
    """A URL whose fsspec protocol needs a package this worker lacks; names the extra to install."""

    def __init__(self, url: str, error: ImportError, extras: dict[str, str]):
        protocol = url.split("://", 1)[0]
        super().__init__(
            f"{url} needs a package this worker lacks ({error}); install it with "
            f"pip install 'av2av-trainer[{extras.get(protocol, protocol)}]'"
        )
