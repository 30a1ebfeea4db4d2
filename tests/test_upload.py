"""Publishing outputs through fsspec: everything lands, result.json last and truthful; a failing
filesystem leaves no result.json."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from lib.core.errors import TransientUploadError, UploadError
from lib.core.storage import sha256_file
from lib.publish.upload import RESULT_NAME, upload_outputs


@pytest.fixture
def files(tmp_path):
    made = {}
    for name, data in {
        "lora.safetensors": b"\x01" * 1000,
        "config.json": b"{}",
        "validation.mp4": b"\x00" * 5000,
    }.items():
        (tmp_path / name).write_bytes(data)
        made[name] = tmp_path / name
    return made


def _check_destination(fs, root, files):
    result = json.loads(fs.cat_file(f"{root}/{RESULT_NAME}"))
    assert set(result["outputs"]) == set(files) and result["billing_units"] == 100
    for name, local in files.items():
        assert fs.cat_file(f"{root}/{name}") == local.read_bytes()
        assert result["outputs"][name]["sha256"] == sha256_file(local)
        assert result["outputs"][name]["size"] == local.stat().st_size
    assert not [p for p in fs.ls(root, detail=False) if ".partial" in p]


def test_upload_to_memory(files):
    upload_outputs(files, "memory://runs/one", {"billing_units": 100})
    _check_destination(fsspec.filesystem("memory"), "/runs/one", files)


def test_upload_to_local_dir(files, tmp_path):
    destination = tmp_path / "out" / "run"
    upload_outputs(files, str(destination), {"billing_units": 100})
    _check_destination(fsspec.filesystem("file"), str(destination), files)


class FlakyMemory(MemoryFileSystem):
    """Fails to move the video into place, like a bucket that drops the connection."""

    protocol = "flaky"
    failure: Exception = ConnectionResetError("connection reset by peer")

    def mv(self, path1, path2, **kwargs):
        if path2.endswith("validation.mp4"):
            raise self.failure
        return super().mv(path1, path2, **kwargs)


@pytest.mark.parametrize(
    "failure, kind", [(ConnectionResetError("reset"), TransientUploadError), (PermissionError("denied"), UploadError)]
)
def test_failing_filesystem_leaves_no_result(files, failure, kind):
    fsspec.register_implementation("flaky", FlakyMemory, clobber=True)
    FlakyMemory.failure = failure
    with pytest.raises(kind, match="flaky://runs/broken") as caught:
        upload_outputs(files, "flaky://runs/broken", {"billing_units": 100})
    assert (kind is TransientUploadError) == isinstance(caught.value, TransientUploadError)
    fs = FlakyMemory()
    names = fs.ls("flaky://runs/broken", detail=False)
    assert names == [] and "Nothing of this attempt is left there." in caught.value.message


class FullDisk(MemoryFileSystem):
    """Once `full`, takes the LoRA, then has no room left for the video."""

    protocol = "fulldisk"
    full = False

    def put_file(self, lpath, rpath, **kwargs):
        if self.full and "validation.mp4" in rpath:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().put_file(lpath, rpath, **kwargs)


class Truncating(MemoryFileSystem):
    """Stores only half of every file, as a proxy that cuts uploads short without an error."""

    protocol = "truncating"

    def put_file(self, lpath, rpath, **kwargs):
        self.pipe_file(rpath, Path(lpath).read_bytes()[:-10])


def test_a_failed_rerun_removes_the_earlier_result_and_leaves_nothing_of_its_own(files):
    fsspec.register_implementation("fulldisk", FullDisk, clobber=True)
    FullDisk.full = False
    upload_outputs(files, "fulldisk://runs/nightly", {"billing_units": 100, "night": 1})
    assert RESULT_NAME in [Path(name).name for name in FullDisk().ls("fulldisk://runs/nightly", detail=False)]
    FullDisk.full = True  # the next night
    with pytest.raises(UploadError) as caught:
        upload_outputs(files, "fulldisk://runs/nightly", {"billing_units": 100, "night": 2})
    assert caught.value.message == (
        "Could not upload the outputs to fulldisk://runs/nightly: the location is full "
        "(No space left on device; the outputs need 0.0 MB). Nothing of this attempt is "
        "left there."
    )
    left = {Path(name).name for name in FullDisk().ls("fulldisk://runs/nightly", detail=False)}
    assert RESULT_NAME not in left  # no stale result.json describing files that are not there
    assert left == {"validation.mp4"}  # last night's, untouched; tonight's lora and config were removed


def test_an_upload_cut_short_is_caught_by_its_size(files):
    fsspec.register_implementation("truncating", Truncating, clobber=True)
    with pytest.raises(UploadError, match="lora.safetensors arrived with 990 of its 1000 bytes"):
        upload_outputs(files, "truncating://runs/cut", {"billing_units": 100})
    assert Truncating().ls("truncating://runs/cut", detail=False) == []
