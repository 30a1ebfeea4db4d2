"""Staging folders and their housekeeping: a run stages its files in `runs/<flow run id>/` (locally on
each worker, and at the cache location when that is shared) and removes them after upload. A run
that was killed or failed leaves them behind; the next run removes them once they are older than
the grace period (AV2AV_STALE_AFTER_H, 24 h by default) and their run is over: never while the
process that owns them is alive on this host, nor while Prefect says the run is still going.
"""

from __future__ import annotations

import json
import os
import posixpath
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path

from lib.core.cache import Cache

STALE_AFTER_ENV = "AV2AV_STALE_AFTER_H"
DEFAULT_STALE_AFTER_H = 24.0
OWNER = "owner.json"
RUNS = "runs"
GPU_RESULT = "gpu_result.json"  # the GPU flow's result, for a CPU flow in another process


def run_entry(run_id: str) -> str:
    """A run's staging folder in the cache: `runs/<flow run id>`."""
    return f"{RUNS}/{run_id}"


def gpu_entry(run_id: str) -> str:
    """Where the GPU flow hands a run's outputs back to the CPU flow (removed after upload)."""
    return f"{run_entry(run_id)}/gpu"


def stale_after_s() -> float:
    return float(os.environ.get(STALE_AFTER_ENV, DEFAULT_STALE_AFTER_H)) * 3600


def stale_after_text() -> str:
    return f"at least {stale_after_s() / 3600:g} h (${STALE_AFTER_ENV})"


def mark_owner(folder: Path, run_id: str) -> None:
    """Record which run and process own a staging folder (the first writer keeps it)."""
    folder.mkdir(parents=True, exist_ok=True)
    owner = folder / OWNER
    if not owner.exists():
        owner.write_text(
            json.dumps({"run_id": run_id, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time()})
        )


def _process_alive(folder: Path) -> bool:
    """Whether a process that marked this folder (or a folder in it) still runs on this host."""
    return any(_owner_alive(marker) for marker in folder.rglob(OWNER))


def _owner_alive(marker: Path) -> bool:
    try:
        owner = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    if owner.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(owner["pid"]), 0)
    except (ProcessLookupError, KeyError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _last_touched(folder: Path) -> float:
    times = [folder.stat().st_mtime] + [path.stat().st_mtime for path in folder.rglob("*")]
    return max(times)


def _sweep_local(root: Path, is_alive: Callable[[str], bool], oldest: float) -> list[str]:
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or _last_touched(folder) > oldest:
            continue
        if _process_alive(folder) or is_alive(folder.name):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    return removed


def _sweep_location(cache: Cache, is_alive: Callable[[str], bool], oldest: float) -> list[str]:
    fs, root = cache.remote(RUNS)
    if not fs.exists(root):
        return []
    removed = []
    for folder in fs.ls(root, detail=False):
        times = [_mtime(info) for info in fs.find(folder, detail=True).values()]
        run_id = posixpath.basename(folder.rstrip("/"))
        if not times or max(times) > oldest or is_alive(run_id):
            continue
        fs.rm(folder, recursive=True)
        removed.append(run_id)
    return removed


def _mtime(info: dict) -> float:
    """Modification time from an fsspec listing: local `mtime`, S3 `LastModified`, GCS `updated`."""
    from datetime import datetime

    value = info.get("mtime") or info.get("LastModified") or info.get("updated") or 0
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value.timestamp() if hasattr(value, "timestamp") else float(value)


def sweep(cache: Cache, is_alive: Callable[[str], bool], location: bool = True) -> list[str]:
    """Remove stale staging folders of runs that are over: here, and at the cache location when
    `location` and it is shared. Returns the run ids whose folders were removed."""
    oldest = time.time() - stale_after_s()
    removed = _sweep_local(Path(cache.local) / RUNS, is_alive, oldest)
    if location and cache.shared:
        removed += [run_id for run_id in _sweep_location(cache, is_alive, oldest) if run_id not in removed]
    return removed
