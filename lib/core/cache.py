"""The content-addressed cache: the one authority on what was computed before.

Conformed clips, their outcomes, validation clips, latents (with the text embeddings) and a run's
staged outputs live under names such as `conformed/<key>/clip.safetensors`, where `<key>` hashes
the inputs' content and the explicit version of the code that made them (`content_key`). Two
places hold them:
- the *location* (`AV2AV_CACHE_DIR`): a folder, or an fsspec URL (`s3://bucket/prefix`,
  `gs://...`, `file://...`) that every worker reaches: the CPU pool writes conformed clips there,
  the GPU pool reads them back and writes latents and outputs, without a shared filesystem;
- this worker's *local* copy (`AV2AV_LOCAL_CACHE_DIR`, or the location itself when that is a
  folder), read through: an entry is downloaded once, then read from disk.

A `FileRef` to a cache entry carries its `entry` name; workers resolve it with `Cache.open`, never
through the `path` another machine wrote.

Every entry has a checksum record beside it (`<entry>.sha256`: digest and size, written after the
entry), and nothing is read that does not match it: a damaged, truncated or unrecorded entry is a
miss, announced once, removed here and at the location, and made again by whoever wanted it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem
from pydantic import BaseModel, ConfigDict

from lib.core.errors import CacheMiss, CacheUnavailable, MissingExtra
from lib.core.progress import announce
from lib.core.storage import (
    CACHE_ENV,
    LOCAL_CACHE_ENV,
    FileRef,
    atomic_file,
    describe_cause,
    open_fs,
    probe_writable,
    work_dir,
)

LOCATION_ENV = CACHE_ENV


def content_key(kind: str, version: str, **identity) -> str:
    """The one recipe for cache keys: what is made (`kind`), by which code (`version`, bumped when
    the bytes change for the same inputs), from what (`identity`: content hashes and settings)."""
    payload = json.dumps({"kind": kind, "version": version, **identity}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _is_url(location: str) -> bool:
    return "://" in location


# --- checksum records ----------------------------------------------------------------------------

RECORD_SUFFIX = ".sha256"


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def write_record(path: Path, digest: str | None = None) -> None:
    """Record `path`'s digest and size beside it, with the modification time it had when hashed
    (atomically: a record is whole or absent)."""
    digest = digest or file_sha256(path)
    stat = path.stat()
    with atomic_file(record_path(path)) as partial:
        Path(partial).write_text(f"{digest} {stat.st_size} {stat.st_mtime_ns}\n")


def damage(path: Path) -> str | None:
    """Why `path` cannot be trusted (None when it matches its record).

    A copy is hashed when it is new here (written, downloaded) and whenever its size or
    modification time differ from when it was last hashed; one unchanged since is not hashed
    again, so a cached 8-triplet check stays fast on a slow disk or CPU."""
    try:
        stat = path.stat()
        digest, size, *hashed_at = record_path(path).read_text().split()
    except FileNotFoundError:
        return "has no checksum record"
    except (OSError, ValueError):
        return "has an unreadable checksum record"
    if stat.st_size != int(size):
        return f"is {stat.st_size} bytes where its record says {size}"
    if hashed_at == [str(stat.st_mtime_ns)]:
        return None
    if file_sha256(path) != digest:
        return "does not match its checksum"
    write_record(path, digest)  # hashed now: the next read of this unchanged copy needs no hash
    return None


class Cache(BaseModel):
    """Where entries are kept for every worker (`location`) and this worker's copy (`local`)."""

    model_config = ConfigDict(frozen=True)

    location: str
    local: str

    @classmethod
    def current(cls, location: str | None = None) -> "Cache":
        """This worker's cache; `location` (e.g. handed over by the CPU flow) overrides the env."""
        location = location or os.environ.get(LOCATION_ENV) or str(work_dir())
        return cls(location=location, local=str(work_dir()))

    @classmethod
    def at(cls, folder: str | Path) -> "Cache":
        """A cache that lives in one local folder (tests, benches)."""
        return cls(location=str(folder), local=str(folder))

    @property
    def shared(self) -> bool:
        """True when entries must be copied between the local folder and the location."""
        if not _is_url(self.location):
            return Path(self.location).resolve() != Path(self.local).resolve()
        return True

    def path(self, entry: str) -> Path:
        """Where `entry` is (or will be written) on this worker."""
        return Path(self.local) / entry

    def ref(self, entry: str, key: str) -> FileRef:
        path = self.path(entry)
        return FileRef(path=str(path), sha256=key, size=path.stat().st_size, entry=entry)

    def remote(self, entry: str) -> tuple[object, str]:
        """(fsspec filesystem, path) of `entry` at the location."""
        fs, root = open_fs(self.location)
        return fs, posixpath.join(root, entry)

    def publish(self, entry: str, source: Path | None = None) -> None:
        """Copy a local file (by default the entry's own local copy) and then its checksum record
        to the location; a no-op when the location is this worker's folder."""
        if not self.shared:
            return
        source = Path(source or self.path(entry))
        if not record_path(source).is_file():
            write_record(source)
        self._put(source, entry)
        self._put(record_path(source), entry + RECORD_SUFFIX)

    def _put(self, source: Path, entry: str) -> None:
        fs, target = self.remote(entry)
        fs.makedirs(posixpath.dirname(target), exist_ok=True)
        source = str(source)
        if isinstance(fs, LocalFileSystem):
            # A folder: write beside, then rename, so a reader never sees half a file.
            partial = f"{target}.{uuid.uuid4().hex}.partial"
            fs.put_file(source, partial)
            fs.mv(partial, target)
        else:  # object stores make an object visible only once it is complete
            fs.put_file(source, target)

    @contextmanager
    def writing(self, entry: str) -> Iterator[str]:
        """Yield a temporary path for `entry`; once the block succeeds it becomes the entry here
        (atomically) and is published to the location."""
        with self._room_for(entry, self.path(entry)):
            with atomic_file(self.path(entry)) as partial:
                yield partial
            write_record(self.path(entry))
        self.publish(entry)

    @contextmanager
    def _room_for(self, entry: str, path: Path) -> Iterator[None]:
        """A full disk is the worker's set-up, not a bug: one line naming the folder and the entry."""
        try:
            yield
        except OSError as error:
            if error.errno != errno.ENOSPC:
                raise
            free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
            raise CacheUnavailable(
                f"The cache folder {self.local} is full (No space left on device, {free / 1e6:.0f} "
                f"MB free) while writing '{entry}'; free some space there or point "
                f"{LOCAL_CACHE_ENV} (or {LOCATION_ENV}) at a larger disk, then start the run again."
            ) from None

    def share(self, source: Path, entry: str) -> FileRef:
        """Hand a local file to another worker: published as `entry` when the cache is shared;
        when it is not, both workers see this folder and the ref keeps the file's own path."""
        self.publish(entry, source)
        return FileRef(path=str(source), sha256="", size=source.stat().st_size, entry=entry if self.shared else "")

    def fetch(self, entry: str) -> Path | None:
        """The local path of `entry`, verified, downloaded from the location if needed; None when
        it is absent or damaged (then it is gone from both places)."""
        return self.path(entry) if self.sync(entry) else None

    def sync(self, entry: str) -> bool:
        """Make `entry` present and verified both here and at the location; False when no good copy
        is in either (a cleaned location is refilled from this copy, a cleaned local folder from the
        location; a damaged copy is removed, and said so once)."""
        problems: list[str] = []
        present = self._sync(entry, problems)
        if problems:
            outcome = f"replaced by the copy at {self.location}" if present else "removed and made again"
            announce(f"warning: cache entry '{entry}' {'; '.join(problems)}; {outcome}.")
        return present

    def _sync(self, entry: str, problems: list[str]) -> bool:
        local = self.path(entry)
        good_here = self._keep_if_good(local, problems, "here")
        if not self.shared:
            return good_here
        fs, target = self.remote(entry)
        at_location = fs.exists(target)
        if good_here:
            if not (at_location and fs.exists(target + RECORD_SUFFIX)):
                self.publish(entry)
            return True
        if not at_location:
            return False
        self._download(fs, target, local)
        if self._keep_if_good(local, problems, f"at {self.location}"):
            return True
        fs.rm([path for path in (target, target + RECORD_SUFFIX) if fs.exists(path)])
        return False

    @staticmethod
    def _keep_if_good(local: Path, problems: list[str], where: str) -> bool:
        """Whether the local copy matches its record; a damaged one is removed, `problems` says why."""
        if not local.is_file():
            return False
        problem = damage(local)
        if problem is None:
            return True
        problems.append(f"{problem} ({where})")
        local.unlink(missing_ok=True)
        record_path(local).unlink(missing_ok=True)
        return False

    def _download(self, fs, source: str, local: Path) -> None:
        for remote, path in ((source, local), (source + RECORD_SUFFIX, record_path(local))):
            if fs.exists(remote):
                with self._room_for(str(path.relative_to(self.local)), path), atomic_file(path) as partial:
                    fs.get_file(remote, partial)

    def open(self, ref: FileRef) -> Path:
        """A local path holding `ref`'s bytes: cache entries by name, other files by their path."""
        return self.open_entry(ref.entry) if ref.entry else Path(ref.path)

    def open_entry(self, entry: str) -> Path:
        """The local path of `entry` (downloaded if needed); CacheMiss when it is nowhere."""
        path = self.fetch(entry)
        if path is None:
            raise CacheMiss(
                f"'{entry}' is not in the cache at {self.location} (nor in {self.local}); "
                "was the cache emptied while the run was going? Start the run again."
            )
        return path

    def remove(self, prefix: str) -> None:
        """Remove a folder of entries here and at the location (a run's staged outputs)."""
        shutil.rmtree(self.path(prefix), ignore_errors=True)
        if self.shared:
            fs, target = self.remote(prefix)
            if fs.exists(target):
                fs.rm(target, recursive=True)


def check_cache_location(cache: Cache) -> None:
    """Before any dataset work: the cache location answers and takes a probe object (when it is
    not this worker's own folder), else CacheUnavailable naming AV2AV_CACHE_DIR and the cause."""
    if not cache.shared:
        return
    try:
        probe_writable(cache.location)
    except MissingExtra as error:
        raise CacheUnavailable(f"{LOCATION_ENV}: {error}.") from error
    except Exception as error:  # every backend raises its own types
        raise CacheUnavailable(
            f"{LOCATION_ENV}: cannot write to the cache location {cache.location}: "
            f"{describe_cause(error, cache.location)}. Fix the worker's {LOCATION_ENV} "
            "(or its credentials) and start the run again."
        ) from error
