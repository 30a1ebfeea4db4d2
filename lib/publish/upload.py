"""Publishing a run's outputs to `output_url` through fsspec (local path, file://, memory://,
s3://, gs://, ...). Every file is written under a temporary name, then moved into place, so a
reader never sees half a file; `result.json` (paths, sizes, sha256, billing units) comes last,
so its presence means the run is complete.
"""

from __future__ import annotations

import errno
import json
import posixpath
import uuid
from pathlib import Path

from lib.core.errors import InvalidRequest, MissingExtra, TransientUploadError, UploadError
from lib.core.redact import redact_url
from lib.core.storage import describe_cause, is_transient, open_fs, probe_writable, sha256_file

RESULT_NAME = "result.json"


def _put(fs, local: Path | None, data: bytes | None, target: str) -> None:
    partial = posixpath.join(posixpath.dirname(target), f".{posixpath.basename(target)}.{uuid.uuid4().hex}.partial")
    try:
        if local is not None:
            fs.put_file(str(local), partial)
        else:
            fs.pipe_file(partial, data)
        fs.mv(partial, target)
    except Exception:
        try:
            fs.rm_file(partial)
        except Exception:  # best effort: the original error is what matters
            pass
        raise


def check_output_location(output_url: str) -> None:
    """Before any dataset work: the protocol's package is installed and a probe object can be
    written and removed at `output_url` (InvalidRequest otherwise, naming the URL and the cause)."""
    try:
        probe_writable(output_url)
    except MissingExtra as error:
        raise InvalidRequest(f"output_url: {error}.") from error
    except ValueError as error:
        raise InvalidRequest(
            f"output_url: {redact_url(output_url)} is not a location fsspec knows ({error})."
        ) from error
    except Exception as error:  # every backend raises its own types
        raise InvalidRequest(
            f"output_url: cannot write to {redact_url(output_url)}: {describe_cause(error, output_url)}."
        ) from error


def upload_outputs(files: dict[str, Path], output_url: str, extra: dict) -> dict:
    """Upload `files` (name -> local path) then result.json; returns the result document.

    result.json is the commit record: an earlier one is removed first, every file is uploaded and
    its size checked, and only then is result.json written. On failure the files this attempt
    wrote are removed again (best effort), so `output_url` never holds a result.json that
    describes other files, nor half of a run's outputs.
    """
    written: list[str] = []
    fs = None
    try:
        fs, root = open_fs(output_url)
        fs.makedirs(root, exist_ok=True)
        _remove(fs, [posixpath.join(root, RESULT_NAME)])
        outputs = {}
        for name, local in files.items():
            target = posixpath.join(root, name)
            fs.makedirs(posixpath.dirname(target), exist_ok=True)  # names may hold folders (checkpoints/)
            _put(fs, Path(local), None, target)  # cleans up its own temporary file on failure
            written.append(target)
            size = Path(local).stat().st_size
            _check_size(fs, target, size, name)
            outputs[name] = {"url": _url(output_url, name), "size": size, "sha256": sha256_file(local)}
        result = {"outputs": outputs, **extra}
        _put(fs, None, json.dumps(result, indent=2).encode(), posixpath.join(root, RESULT_NAME))
    except BaseException as error:
        left = _remove(fs, written) if fs is not None else []
        if not isinstance(error, Exception):  # Ctrl-C or SIGTERM: nothing half-written stays
            raise
        kind = TransientUploadError if is_transient(error) else UploadError
        raise kind(
            f"Could not upload the outputs to {redact_url(output_url)}: {_cause(error, files)}{_left_behind(left)}"
        ) from error
    return result


def _check_size(fs, target: str, size: int, name: str) -> None:
    stored = fs.size(target)
    if stored != size:
        raise OSError(f"{name} arrived with {stored} of its {size} bytes")


def _remove(fs, targets: list[str]) -> list[str]:
    """Remove what exists of `targets`, newest first; returns the ones that could not be removed."""
    left = []
    for target in reversed(targets):
        try:
            if fs.exists(target):
                fs.rm_file(target)
        except Exception:  # best effort: the upload's own error is what the user needs
            left.append(target)
    return left


def _cause(error: Exception, files: dict[str, Path]) -> str:
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
        needed = sum(Path(local).stat().st_size for local in files.values())
        return f"the location is full (No space left on device; the outputs need {needed / 1e6:.1f} MB)."
    return f"{type(error).__name__}: {error}."


def _left_behind(left: list[str]) -> str:
    if not left:
        return " Nothing of this attempt is left there."
    return f" Could not remove {len(left)} partial file(s) there: {', '.join(posixpath.basename(p) for p in left)}."


def _url(output_url: str, name: str) -> str:
    return f"{redact_url(output_url).rstrip('/')}/{name}"
