"""Safe zip extraction: every refusal is an ArchiveError with a stable code and a clear message.

Never trusts the sizes the archive declares: bytes are counted while they stream to disk.
"""

from __future__ import annotations

import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict

from lib.core.errors import ArchiveCode, ArchiveError
from lib.core.storage import FileRef, atomic_dir, publish_dir

CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_files: int = 2000
    max_unpacked_bytes: int = 50 * (1 << 30)
    max_ratio: float = 200.0  # uncompressed/compressed per member; media barely compresses


def _ignored(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.endswith("/") or parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _check_path(name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in path.parts:
        raise ArchiveError(
            f"Refused archive member '{name}': absolute paths and '..' are not "
            "allowed (they could write outside the extraction folder).",
            ArchiveCode.UNSAFE_PATH.value,
        )


def _check_member(info: zipfile.ZipInfo, limits: ArchiveLimits) -> None:
    name = info.filename
    if stat.S_ISLNK(info.external_attr >> 16):
        raise ArchiveError(
            f"Refused archive member '{name}': symbolic links are not allowed; add the file itself.",
            ArchiveCode.SYMLINK.value,
        )
    if info.flag_bits & 0x1:
        raise ArchiveError(
            f"Refused archive member '{name}': it is encrypted; upload an archive without a password.",
            ArchiveCode.ENCRYPTED.value,
        )
    if info.file_size > limits.max_ratio * max(info.compress_size, 1) and info.file_size > CHUNK_BYTES:
        raise ArchiveError(
            f"Refused archive member '{name}': compression ratio "
            f"{info.file_size / max(info.compress_size, 1):.0f}:1 exceeds "
            f"{limits.max_ratio:.0f}:1 (zip bomb guard).",
            ArchiveCode.TOO_LARGE.value,
        )


def list_members(zip_file: zipfile.ZipFile, limits: ArchiveLimits) -> list[zipfile.ZipInfo]:
    """The members to extract, after every refusal rule that can be checked without reading data."""
    for info in zip_file.infolist():  # before ignoring: '..' would otherwise pass as a dot-file
        _check_path(info.filename)
    members = [info for info in zip_file.infolist() if not _ignored(info.filename)]
    if len(members) > limits.max_files:
        raise ArchiveError(
            f"The archive has {len(members)} files; at most {limits.max_files} are allowed.",
            ArchiveCode.TOO_MANY_FILES.value,
        )
    for info in members:
        _check_member(info, limits)
    declared = sum(info.file_size for info in members)
    if declared > limits.max_unpacked_bytes:
        raise ArchiveError(
            f"The archive unpacks to {declared} bytes; at most {limits.max_unpacked_bytes} are allowed.",
            ArchiveCode.TOO_LARGE.value,
        )
    return members


def _copy_counted(source, target, info: zipfile.ZipInfo, budget: int, limits: ArchiveLimits) -> int:
    written = 0
    while chunk := source.read(CHUNK_BYTES):
        written += len(chunk)
        if written > budget or written > limits.max_ratio * max(info.compress_size, 1) + CHUNK_BYTES:
            raise ArchiveError(
                f"Refused archive member '{info.filename}': it unpacks to more "
                "bytes than allowed or declared (zip bomb guard).",
                ArchiveCode.TOO_LARGE.value,
            )
        target.write(chunk)
    return written


class ExtractedArchive(BaseModel):
    model_config = ConfigDict(frozen=True)
    root: str
    names: list[str]


def extract_cached(zip_file: FileRef, cache_root: Path, display_name: str) -> ExtractedArchive:
    """Extract into the content-addressed `extracted/<sha256>` folder (reused when there)."""
    root = cache_root / "extracted" / zip_file.sha256
    return ExtractedArchive(root=str(root), names=safe_extract(zip_file.path, root, display_name=display_name))


def safe_extract(
    zip_path: str | Path, dest: Path, limits: ArchiveLimits = ArchiveLimits(), display_name: str | None = None
) -> list[str]:
    """Extract `zip_path` into `dest` (created atomically); return the member names extracted.

    If `dest` already exists it is assumed complete (content-addressed callers) and reused.
    Messages name the archive as `display_name` (the user's file name, not a cache name).
    """
    shown = display_name or Path(zip_path).name
    if not zipfile.is_zipfile(zip_path):
        raise ArchiveError(
            f"{shown} is not a .zip archive; upload the triplets as a single .zip file.", ArchiveCode.NOT_A_ZIP.value
        )
    try:
        with zipfile.ZipFile(zip_path) as zip_file:
            members = list_members(zip_file, limits)
            names = [info.filename.replace("\\", "/") for info in members]
            if dest.is_dir():
                return names
            staging = atomic_dir(dest)
            try:
                budget = limits.max_unpacked_bytes
                for info, name in zip(members, names):
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zip_file.open(info) as source, open(target, "wb") as out:
                        budget -= _copy_counted(source, out, info, budget, limits)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, NotImplementedError, EOFError) as error:
        raise ArchiveError(f"{shown} is a damaged or unsupported zip: {error}", ArchiveCode.NOT_A_ZIP.value) from error
    publish_dir(staging, dest)
    return names
