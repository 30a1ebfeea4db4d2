"""The content-addressed cache across workers: two local folders that share only a cache location
(a `file://` URL here; the e2e test uses a real S3 API), a cleaned local folder or location, and
staging folders left behind by killed runs."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from lib.core import housekeeping
from lib.core.cache import Cache, check_cache_location
from lib.core.errors import CacheMiss, CacheUnavailable
from lib.core.storage import FileRef
from lib.ingest import conform
from lib.ingest.report import build_report
from tests.training_fixtures import FRAMES, HEIGHT, WIDTH


@pytest.fixture(scope="module")
def triplet(tmp_path_factory):
    from lib.ingest.dataset import Triplet
    from lib.media.synthetic import make_box_mask, make_clip

    folder = tmp_path_factory.mktemp("triplet")
    files = {
        "start": make_clip(folder / "a_start.mp4", 1.0, seed=1),
        "end": make_clip(folder / "a_end.mp4", 1.0, seed=2),
        "mask": make_box_mask(folder / "a_mask.png", (320, 180), (0.25, 0.25, 0.75, 0.75)),
    }
    return Triplet(name="a", caption="a square", **{role: FileRef.of(path) for role, path in files.items()})


SETTINGS = conform.ConformSettings(
    number_of_frames=FRAMES,
    frame_rate=24,
    width=WIDTH,
    height=HEIGHT,
    auto_scale_input=False,
    audio_normalize=True,
    audio_preserve_pitch=True,
)


def _workers(tmp_path: Path) -> tuple[Cache, Cache, Path]:
    location = tmp_path / "bucket"
    location.mkdir()
    return (
        Cache(location=location.as_uri(), local=str(tmp_path / "cpu")),
        Cache(location=location.as_uri(), local=str(tmp_path / "gpu")),
        location,
    )


def _prepare(triplet, cache: Cache):
    check = conform.check_triplet(triplet, cache)
    return conform.conform_triplet(triplet, check, SETTINGS, cache)


def test_a_second_worker_reads_the_clip_through_the_location(triplet, tmp_path, decodes):
    cpu, gpu, location = _workers(tmp_path)
    assert cpu.shared and not Cache.at(tmp_path).shared
    result = _prepare(triplet, cpu)
    entry = result.clip.entry
    assert entry.startswith("conformed/") and (location / entry).is_file()
    assert not gpu.path(entry).exists()
    # The GPU worker gets the ref (entry + hash) and never the CPU worker's path.
    foreign = result.clip.model_copy(update={"path": "/elsewhere/clip.safetensors"})
    local = gpu.open(foreign)
    assert local == gpu.path(entry) and local.read_bytes() == (location / entry).read_bytes()

    decodes.update(check=0, conform=0)
    again = _prepare(triplet, gpu)  # a second CPU worker with an empty local folder: no decoding
    assert decodes == {"check": 0, "conform": 0}
    assert again.clip.path == str(gpu.path(entry)) and again.clip.sha256 == result.clip.sha256


def test_cleaned_local_folder_or_location_is_refilled_not_fatal(triplet, tmp_path, decodes):
    cpu, _, location = _workers(tmp_path)
    first = _prepare(triplet, cpu)
    decodes.update(check=0, conform=0)

    shutil.rmtree(cpu.local)  # local copy gone: refetched
    second = _prepare(triplet, cpu)
    assert decodes == {"check": 0, "conform": 0} and Path(second.clip.path).is_file()

    shutil.rmtree(location / "conformed")  # location cleaned: republished
    third = _prepare(triplet, cpu)
    assert decodes == {"check": 0, "conform": 0}
    assert (location / first.clip.entry).is_file() and third == second

    shutil.rmtree(cpu.local)
    shutil.rmtree(location)  # both gone: recomputed
    location.mkdir()
    fourth = _prepare(triplet, cpu)
    assert decodes == {"check": 1, "conform": 1} and fourth.clip.sha256 == first.clip.sha256


def test_missing_entry_is_a_clear_cache_miss(tmp_path):
    cpu, _, _ = _workers(tmp_path)
    with pytest.raises(CacheMiss, match="conformed/x/clip.safetensors.*not in the cache"):
        cpu.open(FileRef(path="/nowhere", sha256="x", size=1, entry="conformed/x/clip.safetensors"))


def test_report_names_the_users_files_never_cache_paths(triplet, tmp_path):
    cpu, _, _ = _workers(tmp_path)
    document = json.dumps(build_report([_prepare(triplet, cpu)], [], []))
    assert '"a"' in document
    assert "conformed" not in document and str(tmp_path) not in document and ".safetensors" not in document


def test_unreachable_cache_location_is_refused(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(CacheUnavailable, match="AV2AV_CACHE_DIR: cannot write to the cache location"):
        check_cache_location(Cache(location=(blocker / "cache").as_uri(), local=str(tmp_path / "local")))
    with pytest.raises(CacheUnavailable, match=r"pip install 'av2av-trainer\[gcs\]'"):
        check_cache_location(Cache(location="gs://bucket/cache", local=str(tmp_path / "local")))


def _stage(root: Path, run_id: str, age_s: float, pid: int | None = None) -> Path:
    folder = root / "runs" / run_id
    housekeeping.mark_owner(folder, run_id)
    if pid is not None:
        owner = json.loads((folder / housekeeping.OWNER).read_text()) | {"pid": pid}
        (folder / housekeeping.OWNER).write_text(json.dumps(owner))
    (folder / "lora.safetensors").write_bytes(b"x")
    then = time.time() - age_s
    for path in [folder, *folder.rglob("*")]:
        os.utime(path, (then, then))
    return folder


def test_housekeeping_removes_only_stale_folders_of_finished_runs(tmp_path, monkeypatch):
    monkeypatch.setenv(housekeeping.STALE_AFTER_ENV, "1")  # hours
    cpu, _, location = _workers(tmp_path)
    dead_pid = 2**22 + 12345  # beyond pid_max: no such process
    stale = _stage(Path(cpu.local), "failed-run", 2 * 3600, pid=dead_pid)
    fresh = _stage(Path(cpu.local), "recent-run", 60, pid=dead_pid)
    going = _stage(Path(cpu.local), "long-run", 2 * 3600, pid=dead_pid)  # Prefect: still running
    owned = _stage(Path(cpu.local), "this-process", 2 * 3600)  # its owner process is alive
    remote = _stage(location, "killed-run", 2 * 3600)  # at the location
    remote_going = _stage(location, "long-run", 2 * 3600)

    removed = housekeeping.sweep(cpu, is_alive=lambda run_id: run_id == "long-run")
    assert sorted(removed) == ["failed-run", "killed-run"]
    assert not stale.exists() and not remote.exists()
    assert fresh.exists() and going.exists() and owned.exists() and remote_going.exists()
