"""`generate-gpu`: the heavy half of `generate`, on the GPU work pool. Every setting comes in the
plan the CPU flow derived (lib/core/generate.py); the conformed inputs and the LoRA file come
through the cache by entry and hash, as `train-lora-gpu` gets its clips. Each part of the model is
resident only while a stage needs it: text encoder (prompts), VAEs (encode), then the transformer
with the decoders (sample, tiled decode)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed

from lib.core.cache import Cache
from lib.core.errors import InvalidRequest
from lib.core.generate import GeneratePlan
from lib.core.housekeeping import GPU_RESULT, gpu_entry, mark_owner, run_entry
from lib.core.storage import FileRef
from tasks import generate as tasks
from tasks import model_cache
from tasks.housekeeping import sweep_stale_runs
from tasks.parent_run import ParentRun, ui_link


@flow(name="generate-gpu", log_prints=True)
def generate_gpu(
    plan: GeneratePlan, clip: FileRef, lora: FileRef, run_id: str, cache_url: str, parent_run_id: str | None = None
) -> dict:
    """Encode the prompts and inputs (cached), attach the LoRA, sample, decode; the clip and its
    preview go to the cache's `runs/<run_id>/gpu/`, where the CPU flow picks them up. A LoRA whose
    weights do not fit the model ends Failed, named InvalidRequest, before any denoising."""
    try:
        return _generate_gpu(plan, clip, lora, run_id, cache_url, parent_run_id)
    except InvalidRequest as error:
        get_run_logger().error("InvalidRequest: %s", error.message)
        return Failed(name="InvalidRequest", message=error.message)


def _generate_gpu(
    plan: GeneratePlan, clip: FileRef, lora: FileRef, run_id: str, cache_url: str, parent_run_id: str | None
) -> dict:
    cache = Cache.current(cache_url)
    sweep_stale_runs(cache, location=False)  # the CPU flow sweeps the location
    output = cache.path(gpu_entry(run_id))
    mark_owner(output, run_id)
    _link_parent(parent_run_id)
    log = get_run_logger()
    try:
        log.info("encoding the prompt and the negative prompt (cached by content)")
        negative = tasks.encode_texts(plan, clip, cache)
        log.info("encoding the source, mask and reference(s) (cached by content)")
        latents = tasks.encode_inputs(plan, clip, cache)
        log.info("denoising %d steps with the LoRA attached (scale %g)", plan.sampler.steps, plan.lora_scale)
        files = tasks.sample(
            plan, cache.open(clip), cache.open(latents), cache.open(negative), cache.open(lora), output, parent_run_id
        )
    finally:
        model_cache.forget()  # the cached transformer now carries this LoRA
    return hand_back(cache, run_id, files)


def _link_parent(parent_run_id: str | None) -> None:
    parent = ParentRun(parent_run_id)
    name, run_id = flow_run.get_name(), flow_run.get_id()
    if run_id is not None:
        parent.artifact(
            "markdown",
            f"Generation runs on the GPU pool as {ui_link(run_id, name)}; denoising progress is mirrored here.",
            "The GPU sub-run of this run",
            key="gpu-run",
        )
        parent.info(f"GPU sub-run: {name} (its logs hold the details; progress is mirrored here)")


def hand_back(cache: Cache, run_id: str, files: dict[str, Path]) -> dict:
    """Publish the outputs, and this result for a CPU flow in another process, to the cache."""
    folder = gpu_entry(run_id)
    result = {"files": {name: cache.share(path, f"{folder}/{name}").model_dump() for name, path in files.items()}}
    with cache.writing(f"{folder}/{GPU_RESULT}") as partial:
        Path(partial).write_text(json.dumps(result))
    if cache.shared:  # everything is at the location now: this worker keeps nothing of the run
        shutil.rmtree(cache.path(run_entry(run_id)), ignore_errors=True)
    return result
