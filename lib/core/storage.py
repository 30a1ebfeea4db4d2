"""Files in and out: fsspec for every URL, content hashes, the content-addressed work folder.

Between pipeline steps only `FileRef`s travel (a path plus its sha256), so caches key on
content, never on where a file happens to live.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from pydantic import BaseModel, ConfigDict

from lib.core.errors import DownloadError, MissingExtra, TransientDownloadError
from lib.core.redact import redact_text, redact_url

CHUNK_BYTES = 1 << 20
# Transfers never hang: a server that accepts and then never answers fails after these (then the
# task's retries apply). Defaults a slow link survives; override per worker.
CONNECT_TIMEOUT_ENV, READ_TIMEOUT_ENV = "AV2AV_CONNECT_TIMEOUT_S", "AV2AV_READ_TIMEOUT_S"
DEFAULT_CONNECT_TIMEOUT_S, DEFAULT_READ_TIMEOUT_S = 30.0, 120.0
DEFAULT_MAX_DOWNLOAD_BYTES = 20 * (1 << 30)
# Attempts per download (the Prefect task's retries and the CLI's loop alike), and the waits between.
ATTEMPTS_ENV, DEFAULT_ATTEMPTS = "AV2AV_DOWNLOAD_ATTEMPTS", 4
RETRY_DELAYS_S = (1, 5, 20)
TRANSIENT_HTTP_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FileRef(BaseModel):
    """A file and its content hash. Caches key on `sha256`, never on `path`.

    For files users give us it is the sha256 of the bytes; for files we derive (conformed
    clips, latents) it is the sha256 of their inputs' hashes and recipe, which names the
    content just as well without reading it back.
    """

    model_config = ConfigDict(frozen=True)

    path: str
    sha256: str
    size: int
    entry: str = ""  # its name in the content-addressed cache (lib.core.cache), when it lives there

    @classmethod
    def of(cls, path: str | Path) -> "FileRef":
        return cls(path=str(path), sha256=sha256_file(path), size=os.path.getsize(path))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


LOCAL_CACHE_ENV, CACHE_ENV = "AV2AV_LOCAL_CACHE_DIR", "AV2AV_CACHE_DIR"
# protocol -> the package extra that adds it (pip install 'av2av-trainer[s3]')
EXTRAS = {"s3": "s3", "s3a": "s3", "gs": "gcs", "gcs": "gcs"}


def work_dir() -> Path:
    """This worker's local folder: downloads, extracted archives, staging, and its copy of the
    content-addressed cache (lib.core.cache). AV2AV_LOCAL_CACHE_DIR, else AV2AV_CACHE_DIR when that is a
    folder (not a URL), else ~/.cache/av2av."""
    location = os.environ.get(CACHE_ENV, "")
    local = os.environ.get(LOCAL_CACHE_ENV) or (location if location and "://" not in location else "")
    root = Path(local or Path.home() / ".cache" / "av2av")
    root.mkdir(parents=True, exist_ok=True)
    return root


def open_fs(url: str):
    """(filesystem, path) for any fsspec URL or local path, with this project's time-outs;
    MissingExtra names the package extra to install when the protocol's library is absent."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as error:
        raise MissingExtra(redact_url(url), error, EXTRAS) from None


def probe_writable(url: str) -> None:
    """Write and remove a probe object under `url` (creating it): proves the location answers
    and takes writes. Raises MissingExtra, or whatever the backend raises."""
    import uuid

    fs, root = open_fs(url)
    probe = f"{root.rstrip('/')}/.av2av-probe-{uuid.uuid4().hex}"
    fs.makedirs(root, exist_ok=True)
    fs.pipe_file(probe, b"probe")
    fs.rm_file(probe)


def _file_mode() -> int:
    """The mode a plain new file gets here (0666 less the umask), read once at import."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


FILE_MODE = _file_mode()


@contextmanager
def atomic_file(path: str | Path) -> Iterator[str]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds, so a
    reader never sees half a file and a failure leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    try:
        yield partial
        os.chmod(partial, FILE_MODE)  # mkstemp's 0600 would make every output private to this user
        os.replace(partial, path)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise


def atomic_dir(final: Path) -> Path:
    """A fresh temporary folder beside `final`, to be moved there with `publish_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))


def publish_dir(staging: Path, final: Path) -> Path:
    """Move a finished staging folder into place; if a concurrent run won the race, keep theirs."""
    try:
        os.rename(staging, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return final


def _chain(error: BaseException):
    """The error and its causes: fsspec wraps e.g. an HTTP 503 into FileNotFoundError."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def is_transient(error: BaseException) -> bool:
    for cause in _chain(error):
        status = getattr(cause, "status", None) or getattr(cause, "status_code", None)
        if isinstance(status, int):
            return status in TRANSIENT_HTTP_STATUS
    return any(
        isinstance(cause, (ConnectionError, TimeoutError)) or type(cause).__module__.startswith("aiohttp")
        for cause in _chain(error)
    )


def timeouts() -> tuple[float, float]:
    return (
        float(os.environ.get(CONNECT_TIMEOUT_ENV, DEFAULT_CONNECT_TIMEOUT_S)),
        float(os.environ.get(READ_TIMEOUT_ENV, DEFAULT_READ_TIMEOUT_S)),
    )


def storage_options(url: str) -> dict:
    """fsspec options per protocol: connect and read time-outs for HTTP(S) and S3."""
    connect, read = timeouts()
    if url.startswith(("s3://", "s3a://")):
        return {"config_kwargs": {"connect_timeout": connect, "read_timeout": read}}
    if not url.startswith(("http://", "https://")):
        return {}
    import aiohttp

    return {"client_kwargs": {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=connect, sock_read=read)}}


def describe_cause(error: BaseException, url: str) -> str:
    """The informative part of an error chain, with every URL in it redacted (lib.core.redact):
    fsspec reports a DNS failure, a refused connection or an HTTP 403/404 alike as
    `FileNotFoundError: <url>` (or, for a URL with `?` in it, as a glob hint); the real cause is
    further down. An HTTP status anywhere in the chain wins, then a time-out, then the first
    message that says more than the URL."""
    from http import HTTPStatus

    causes = list(_chain(error))
    for cause in causes:
        status = getattr(cause, "status", None) or getattr(cause, "status_code", None)
        if isinstance(status, int):
            phrase = getattr(cause, "message", "") or getattr(cause, "reason", "") or ""
            if not phrase and status in HTTPStatus._value2member_map_:
                phrase = HTTPStatus(status).phrase
            return redact_text(f"HTTP {status} {phrase}".strip())
    if any(isinstance(cause, TimeoutError) for cause in causes):
        connect, read = timeouts()
        return (
            f"timed out: no connection within {connect:g} s or no data for {read:g} s "
            f"(${CONNECT_TIMEOUT_ENV} / ${READ_TIMEOUT_ENV})"
        )
    for cause in causes:
        text = str(cause)
        if text and text.strip("'\"") != url:
            return redact_text(f"{type(cause).__name__}: {text}")
    return redact_text(f"{type(error).__name__}: {error}")


def _is_http(url: str) -> bool:
    return url.startswith(("http://", "https://"))


class _HttpBody:
    """The body of one streamed HTTP GET, read through fsspec's HTTP filesystem (its aiohttp
    session, time-outs and event loop). One request: no HEAD first, no range requests, so a
    server without range support (Python's http.server, signed-URL endpoints) serves it alike,
    and a silent server costs one read time-out per attempt, not two."""

    def __init__(self, fs, url: str):
        import yarl
        from fsspec.asyn import sync

        self._sync, self._loop = sync, fs.loop
        session = sync(fs.loop, fs.set_session)
        options = dict(fs.kwargs)
        headers = {**options.pop("headers", {}), "Accept-Encoding": "identity"}
        # An already-encoded URL (a presigned one: `%2F` in its signature) is sent byte for byte;
        # re-quoting it would break the signature.
        target = yarl.URL(url, encoded="%" in url)
        self.response = sync(fs.loop, _get, session, target, headers, options)
        try:
            self.response.raise_for_status()  # aiohttp.ClientResponseError: .status, .message
        except Exception:
            self.close()
            raise
        length = self.response.headers.get("Content-Length")
        encoding = self.response.headers.get("Content-Encoding", "identity")
        self.size = int(length) if length and length.isdigit() and encoding in ("", "identity") else None

    def read(self, size: int) -> bytes:
        return self._sync(self._loop, self.response.content.read, size)

    def close(self) -> None:
        async def release():
            self.response.close()

        self._sync(self._loop, release)


async def _get(session, target, headers: dict, options: dict):
    return await session.get(target, headers=headers, **options)


@contextmanager
def _open_source(url: str):
    """(readable, size in bytes or None) for any URL or path: HTTP(S) as one streamed GET; every
    other protocol through its filesystem's own open (never `fsspec.open`, whose glob expansion
    turns a `?` into 'The URL contains glob characters')."""
    fs, path = open_fs(url)
    if _is_http(url):
        body = _HttpBody(fs, url)
        try:
            yield body, body.size
        finally:
            body.close()
        return
    with fs.open(path, "rb") as source:
        yield source, None


def fetch(url: str, dest_dir: Path, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> FileRef:
    """Stream `url` (any fsspec URL or a local path) into `dest_dir/<sha256><suffix>`.

    Raises TransientDownloadError for failures worth retrying, DownloadError otherwise, with
    messages that name the URL redacted (lib.core.redact) and the real cause (an HTTP status,
    a time-out). Never leaves a partial file behind. The errors carry no chain: the causes hold
    the full URL, and a traceback or a pickled state must not.
    """
    shown = redact_url(url)
    dest_dir.mkdir(parents=True, exist_ok=True)
    suffix = Path(url.split("?")[0].split("#")[0]).suffix.lower()[:8]
    handle, partial = tempfile.mkstemp(prefix=".download.", dir=dest_dir)
    digest, size = hashlib.sha256(), 0
    too_large = DownloadError(
        f"{shown}: the file is larger than the {max_bytes} byte download limit.", code="too_large"
    )
    failure: DownloadError | None = None
    try:
        with os.fdopen(handle, "wb") as out, _open_source(url) as (source, declared):
            if declared is not None and declared > max_bytes:
                raise too_large
            while chunk := source.read(CHUNK_BYTES):
                size += len(chunk)
                if size > max_bytes:
                    raise too_large
                digest.update(chunk)
                out.write(chunk)
            if declared is not None and size < declared:  # the server closed the stream early
                raise ConnectionError(f"the connection closed after {size} of {declared} bytes")
    except DownloadError as error:
        failure = error
    except MissingExtra as error:
        failure = DownloadError(f"Could not download {error}.")
    except Exception as error:  # fsspec backends raise their own types; classify, then wrap
        kind = TransientDownloadError if is_transient(error) else DownloadError
        failure = kind(f"Could not download {shown}: {describe_cause(error, url)}")
    if failure is not None:
        os.unlink(partial)
        raise failure from None
    final = dest_dir / f"{digest.hexdigest()}{suffix}"
    os.replace(partial, final)
    return FileRef(path=str(final), sha256=digest.hexdigest(), size=size)


def download_attempts() -> int:
    return max(1, int(os.environ.get(ATTEMPTS_ENV, DEFAULT_ATTEMPTS)))


def retry_delays() -> list[int]:
    """The wait before each retry: RETRY_DELAYS_S, the last one repeated."""
    retries = download_attempts() - 1
    return [RETRY_DELAYS_S[min(i, len(RETRY_DELAYS_S) - 1)] for i in range(retries)]


def after_attempts(error: TransientDownloadError, attempts: int) -> TransientDownloadError:
    """The last attempt's error, saying how many attempts were made: the one final message for
    `fetch_with_retries` (the CLI's check) and the Prefect task's last retry (a flow) alike."""
    return TransientDownloadError(f"{error.message} (after {attempts} attempt(s), ${ATTEMPTS_ENV})")


def fetch_with_retries(url: str, dest_dir: Path, max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES) -> FileRef:
    """`fetch`, retried after transient failures ($AV2AV_DOWNLOAD_ATTEMPTS attempts in all), for
    callers without Prefect's task retries (the CLI's check). The last error says how many tries."""
    delays = retry_delays()
    for delay in delays:
        try:
            return fetch(url, dest_dir, max_bytes)
        except TransientDownloadError:
            time.sleep(delay)
    try:
        return fetch(url, dest_dir, max_bytes)
    except TransientDownloadError as error:
        raise after_attempts(error, len(delays) + 1) from None
