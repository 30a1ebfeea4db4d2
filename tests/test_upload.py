"""Publishing outputs through fsspec: everything lands, result.json last and truthful; a failing
filesystem leaves no result.json."""
from __future__ import annotations

import json

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from lib.core.storage import sha256_file
from lib.core.errors import TransientUploadError, UploadError
from lib.publish.upload import RESULT_NAME, upload_outputs


@pytest.fixture
def files(tmp_path):
    made = {}
    for name, data in {"lora.safetensors": b"\x01" * 1000, "config.json": b"{}", "validation.mp4": b"\x00" * 5000}.items():
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


@pytest.mark.parametrize("failure, kind", [(ConnectionResetError("reset"), TransientUploadError),
                                           (PermissionError("denied"), UploadError)])
def test_failing_filesystem_leaves_no_result(files, failure, kind):
    fsspec.register_implementation("flaky", FlakyMemory, clobber=True)
    FlakyMemory.failure = failure
    with pytest.raises(kind, match="flaky://runs/broken") as caught:
        upload_outputs(files, "flaky://runs/broken", {"billing_units": 100})
    assert (kind is TransientUploadError) == isinstance(caught.value, TransientUploadError)
    fs = FlakyMemory()
    names = fs.ls("flaky://runs/broken", detail=False)
    assert any(n.endswith("lora.safetensors") for n in names), "the files before the failure did land"
    assert not [n for n in names if n.endswith(RESULT_NAME)] and not [n for n in names if ".partial" in n]
