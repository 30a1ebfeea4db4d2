"""What a GPU flow hands back to the CPU flow that started it: a typed result whose files are
cache references (by entry name when the cache is shared, else by their path on the one machine),
never a path the CPU side could not open.

The GPU flow returns it (the CPU flow gets it from the flow's state when it ran the GPU flow in
its own process) and writes it to the cache as `runs/<id>/gpu/gpu_result.json` (read back when the
GPU flow ran on the GPU pool, through its deployment).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict

from lib.core.cache import Cache
from lib.core.housekeeping import GPU_RESULT, gpu_entry, run_entry
from lib.core.storage import FileRef


class GpuResult(BaseModel):
    """`files`: what is uploaded, by output name; `previews`: images shown on the run page only."""

    model_config = ConfigDict(frozen=True)

    files: dict[str, FileRef]
    previews: list[FileRef] = []

    def local_files(self, cache: Cache) -> dict[str, Path]:
        """Every file as a path on this worker (fetched from the cache location when it is shared)."""
        return {name: cache.open(ref) for name, ref in self.files.items()}

    def local_previews(self, cache: Cache) -> list[Path]:
        return [cache.open(ref) for ref in self.previews]


class TrainingGpuResult(GpuResult):
    """`train-lora-gpu`'s result: the LoRA, loss curve and reels (and checkpoints when asked)."""

    final_loss: float
    steps: int
    checkpoints_kept_in: str | None = None  # the folder on the GPU worker, when checkpoints were written


Result = TypeVar("Result", bound=GpuResult)


def share(cache: Cache, run_id: str, files: dict[str, Path]) -> dict[str, FileRef]:
    """Publish local files as `runs/<run_id>/gpu/<name>` for the CPU flow; their references."""
    return {name: cache.share(path, f"{gpu_entry(run_id)}/{name}") for name, path in files.items()}


def hand_back(cache: Cache, run_id: str, result: Result, clear: str) -> Result:
    """Write `result` beside the shared files. When the cache is shared everything is at its
    location now: this worker's copy of `clear` (an entry folder) is removed, and the run's folder
    with it when nothing else is staged there."""
    with cache.writing(f"{gpu_entry(run_id)}/{GPU_RESULT}") as partial:
        Path(partial).write_text(result.model_dump_json())
    if cache.shared:
        shutil.rmtree(cache.path(clear), ignore_errors=True)
        try:
            cache.path(run_entry(run_id)).rmdir()  # unless the CPU flow stages there too
        except OSError:
            pass
    return result


def handed_back(cache: Cache, run_id: str, kind: type[Result]) -> Result:
    """The result a GPU flow in another process wrote (CacheMiss when it is nowhere)."""
    return kind.model_validate_json(cache.open_entry(f"{gpu_entry(run_id)}/{GPU_RESULT}").read_text())
