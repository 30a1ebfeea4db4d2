"""Publishing a run's outputs to `output_url` through fsspec (local path, file://, memory://,
s3://, gs://, ...). Every file is written under a temporary name, then moved into place, so a
reader never sees half a file; `result.json` (paths, sizes, sha256, billing units) comes last,
so its presence means the run is complete.
"""
from __future__ import annotations

import json
import posixpath
import uuid
from pathlib import Path

from lib.core.errors import InvalidRequest, MissingExtra, TransientUploadError, UploadError
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
        raise InvalidRequest(f"output_url: {output_url} is not a location fsspec knows ({error}).") from error
    except Exception as error:   # every backend raises its own types
        raise InvalidRequest(f"output_url: cannot write to {output_url}: "
                             f"{describe_cause(error, output_url)}.") from error


def upload_outputs(files: dict[str, Path], output_url: str, extra: dict) -> dict:
    """Upload `files` (name -> local path) then result.json; returns the result document."""
    try:
        fs, root = open_fs(output_url)
        fs.makedirs(root, exist_ok=True)
        outputs = {}
        for name, local in files.items():
            target = posixpath.join(root, name)
            fs.makedirs(posixpath.dirname(target), exist_ok=True)  # names may hold folders (checkpoints/)
            _put(fs, Path(local), None, target)
            outputs[name] = {"url": _url(output_url, name), "size": Path(local).stat().st_size,
                             "sha256": sha256_file(local)}
        result = {"outputs": outputs, **extra}
        _put(fs, None, json.dumps(result, indent=2).encode(), posixpath.join(root, RESULT_NAME))
    except Exception as error:
        kind = TransientUploadError if is_transient(error) else UploadError
        raise kind(f"Could not upload the outputs to {output_url}: {type(error).__name__}: {error}") from error
    return result


def _url(output_url: str, name: str) -> str:
    return f"{output_url.rstrip('/')}/{name}"
