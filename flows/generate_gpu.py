"""`generate-gpu`: the heavy half of `generate`, on the GPU work pool. Every setting comes in the
plan the CPU flow derived (lib/core/generate.py); the conformed inputs and the LoRA file come
through the cache by entry and hash, as `train-lora-gpu` gets its clips. Each part of the model is
resident only while a stage needs it: text encoder (prompts), VAEs (encode), then the transformer
with the decoders (sample, tiled decode)."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.refusals import refused
from lib.core.cache import Cache
from lib.core.errors import InvalidRequest
from lib.core.generate import GeneratePlan
from lib.core.handback import GpuResult, hand_back, share
from lib.core.housekeeping import gpu_entry, mark_owner, run_entry
from lib.core.storage import FileRef
from lib.model import process_cache
from lib.validate.generate import PREVIEW_IMAGE
from tasks import generate as tasks
from tasks.housekeeping import sweep_stale_runs
from tasks.parent_run import ParentRun


@flow(name="generate-gpu", log_prints=True)
def generate_gpu(
    plan: GeneratePlan, clip: FileRef, lora: FileRef, run_id: str, cache_url: str, parent_run_id: str | None = None
) -> GpuResult:
    """Encode the prompts and inputs (cached), attach the LoRA, sample, decode; the clip and its
    preview go to the cache's `runs/<run_id>/gpu/`, where the CPU flow picks them up; returns what
    it handed back there. A LoRA whose weights do not fit the model ends Failed, named
    InvalidRequest, before any denoising."""
    try:
        return _generate_gpu(plan, clip, lora, run_id, cache_url, parent_run_id)
    except InvalidRequest as error:
        return refused(error)


def _generate_gpu(
    plan: GeneratePlan, clip: FileRef, lora: FileRef, run_id: str, cache_url: str, parent_run_id: str | None
) -> GpuResult:
    cache = Cache.current(cache_url)
    sweep_stale_runs(cache, location=False)  # the CPU flow sweeps the location
    output = cache.path(gpu_entry(run_id))
    mark_owner(output, run_id)
    ParentRun(parent_run_id).link_child(
        "Generation runs on the GPU pool as {link}; denoising progress is mirrored here."
    )
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
        process_cache.forget()  # the cached transformer now carries this LoRA
    previews = {name: files.pop(name) for name in [PREVIEW_IMAGE] if name in files}  # the run page's, not uploaded
    result = GpuResult(files=share(cache, run_id, files), previews=list(share(cache, run_id, previews).values()))
    return hand_back(cache, run_id, result, clear=run_entry(run_id))  # this worker keeps nothing of the run
