"""Safe extraction: one crafted archive per refusal, and the happy path."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path

import pytest

from lib.core.errors import ArchiveError
from lib.ingest.archive import ArchiveLimits, safe_extract


def _zip(path: Path, members: dict[str, bytes], **kwargs) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _refused(zip_path: Path, tmp_path: Path, limits: ArchiveLimits | None = None) -> ArchiveError:
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as caught:
        safe_extract(zip_path, dest, limits or ArchiveLimits())
    assert not dest.exists(), "a refused archive must leave nothing behind"
    assert list(tmp_path.glob(".out.*")) == [], "no staging folder left behind"
    return caught.value


def test_extracts_and_ignores_macos_metadata_and_hidden_files(tmp_path):
    zip_path = _zip(
        tmp_path / "ok.zip",
        {
            "a/x_start.mp4": b"1",
            "x_end.mp4": b"2",
            "__MACOSX/a/._x_start.mp4": b"junk",
            ".DS_Store": b"junk",
            "a/.hidden": b"junk",
            "folder/": b"",
        },
    )
    names = safe_extract(zip_path, tmp_path / "out")
    assert sorted(names) == ["a/x_start.mp4", "x_end.mp4"]
    assert (tmp_path / "out" / "a" / "x_start.mp4").read_bytes() == b"1"
    assert not (tmp_path / "out" / "__MACOSX").exists()


def test_not_a_zip(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(b"this is a tarball, honest")
    error = _refused(path, tmp_path)
    assert error.code == "not_a_zip" and "data.zip" in error.message


@pytest.mark.parametrize("name", ["../evil_start.mp4", "a/../../evil.mp4", "/etc/evil_end.mp4", "C:/evil.mp4"])
def test_unsafe_paths(tmp_path, name):
    error = _refused(_zip(tmp_path / "bad.zip", {name: b"x"}), tmp_path)
    assert error.code == "unsafe_path" and name in error.message


def test_symlink(tmp_path):
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("x_start.mp4")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    error = _refused(path, tmp_path)
    assert error.code == "symlink" and "x_start.mp4" in error.message


def test_encrypted(tmp_path):
    path = _zip(tmp_path / "enc.zip", {"x_start.mp4": b"secret"})
    raw = bytearray(path.read_bytes())
    # Set the "encrypted" general-purpose flag in the local and central headers.
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        at = raw.find(signature)
        raw[at + flag_offset] |= 0x1
    path.write_bytes(bytes(raw))
    error = _refused(path, tmp_path)
    assert error.code == "encrypted"


def test_too_many_files(tmp_path):
    path = _zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(6)})
    error = _refused(path, tmp_path, ArchiveLimits(max_files=5))
    assert error.code == "too_many_files" and "6" in error.message


def test_too_large(tmp_path):
    path = _zip(tmp_path / "big.zip", {"a_start.mp4": b"x" * 4000, "a_end.mp4": b"y" * 4000})
    error = _refused(path, tmp_path, ArchiveLimits(max_unpacked_bytes=5000))
    assert error.code == "too_large"


def test_zip_bomb_ratio(tmp_path):
    path = _zip(tmp_path / "bomb.zip", {"bomb_start.mp4": b"\0" * (8 << 20)}, compression=zipfile.ZIP_DEFLATED)
    error = _refused(path, tmp_path)
    assert error.code == "too_large" and "ratio" in error.message


def test_lying_declared_size_is_caught_while_streaming(tmp_path):
    path = _zip(tmp_path / "liar.zip", {"a_start.mp4": b"z" * 10_000})
    raw = bytearray(path.read_bytes())
    # Declare 10 bytes uncompressed (central directory) while the stored data holds 10,000.
    central = raw.find(b"PK\x01\x02")
    raw[central + 24 : central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(ArchiveError):
        safe_extract(path, tmp_path / "out", ArchiveLimits(max_unpacked_bytes=1000))
    assert not (tmp_path / "out").exists()
