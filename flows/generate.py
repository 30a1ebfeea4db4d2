"""`generate`: apply a trained LoRA to new source, mask and reference clips (UI form, API, CLI).

The CPU pool checks everything a user can get wrong first (the LoRA file and its conventions, the
memory plan, the weights, output_url, the cache), then fetches and conforms the inputs as
validation samples are; the GPU pool (`generate-gpu`, through its deployment when one exists,
else in this process) encodes, samples and decodes; the outputs are uploaded to output_url.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger

from flows.form import titled
from flows.gpu_handoff import GpuFlow, gpu_memory_declared, hand_off
from flows.refusals import refused
from flows.run_context import run_name, stage, staging_id
from lib.core.cache import Cache, check_cache_location
from lib.core.errors import REFUSALS, InvalidRequest
from lib.core.generate import GeneratePlan, GenerateRequest, plan_generation, refuse_contradictions
from lib.core.handback import GpuResult
from lib.core.housekeeping import mark_owner, run_entry
from lib.core.redact import redact_json, redact_url
from lib.core.storage import FileRef
from lib.model import check_model_source
from lib.publish.upload import check_output_location
from tasks import generate as tasks
from tasks.housekeeping import sweep_stale_runs

GPU_DEPLOYMENT = os.environ.get("AV2AV_GENERATE_GPU_DEPLOYMENT", "generate-gpu/generate-gpu")
GENERATE_GPU = GpuFlow(GPU_DEPLOYMENT, "flows.generate_gpu:generate_gpu", InvalidRequest, GpuResult)


@flow(name="generate", log_prints=True)
def generate(request: Annotated[GenerateRequest, titled("Generation request")]):
    """Generate a clip with a trained LoRA; returns result.json's content.

    A LoRA that cannot work (not a LoRA, another model's, contradicting the request) ends the run
    Failed, named InvalidRequest, in seconds; unusable inputs InvalidDataset (the 422 text naming the
    file); download problems DownloadFailed; upload problems UploadFailed.

    Args:
        request: The LoRA, the prompt, the source, mask and reference clips, and the sampler's settings.
    """
    try:
        return _generate(request)
    except REFUSALS as error:
        return refused(error)


def _generate(request: GenerateRequest) -> dict:
    log = get_run_logger()
    cache, run_id = Cache.current(), staging_id()
    output_url = request.output_url or str(Path("outputs") / run_name())
    shown = redact_url(request.lora_url)
    with stage("read the LoRA"):
        lora_file, lora = tasks.open_lora(request, cache)
    refuse_contradictions(request, lora, shown)
    log.info(
        "LoRA %s (sha256 %s): rank %d, trigger phrase %r, reference audio %s, reference 1/%d (from its %s)",
        shown,
        lora.sha256[:12],
        lora.rank,
        lora.trigger_phrase,
        lora.reference_audio_positions,
        lora.reference_downscale,
        lora.read_from,
    )
    _check_memory(request, lora.rank, lora.reference_downscale)
    check_model_source(request.model, request.model_source, request.text_encoder_source)
    check_output_location(output_url)
    check_cache_location(cache)
    sweep_stale_runs(cache)
    plan = plan_generation(request, lora, shown)
    mark_owner(cache.path(run_entry(run_id)), run_id)
    log.info("fetching and conforming the source, mask and reference(s)")
    with stage("inputs"):
        clip = tasks.prepare_inputs(request, plan.prompt, cache)
    shared = cache.share(Path(lora_file.path), f"{run_entry(run_id)}/lora.safetensors")
    with stage("generate"):
        produced = run_gpu(plan, clip, shared.model_copy(update={"sha256": lora.sha256}), run_id, cache)
        files, previews = produced.local_files(cache), produced.local_previews(cache)
    with stage("upload"):
        result = tasks.upload_generated(files, output_url, result_extra(request, plan), next(iter(previews), None))
    cache.remove(run_entry(run_id))
    print(f"Outputs: {redact_url(output_url)}")
    return result


def _check_memory(request: GenerateRequest, rank: int, reference_downscale: int) -> None:
    """Refuse up front what the GPU pool's declared memory cannot hold, as train-lora does."""
    from lib.validate.inference_memory import check_generate_fits

    check_generate_fits(request, rank, reference_downscale, gpu_memory_declared(GPU_DEPLOYMENT))


def result_extra(request: GenerateRequest, plan: GeneratePlan) -> dict:
    """result.json beside the outputs: the LoRA (by hash), its conventions and every setting used."""
    width, height = request.bucket
    return {
        "lora": {
            "url": redact_url(request.lora_url),
            "sha256": plan.lora.sha256,
            "rank": plan.lora.rank,
            "base_model": plan.lora.base_model,
        },
        "conventions": {
            "reference_audio_positions": plan.lora.reference_audio_positions,
            "reference_downscale_factor": plan.lora.reference_downscale,
            "trigger_phrase": plan.lora.trigger_phrase,
            "read_from": plan.lora.read_from,
        },
        "prompt_used": plan.prompt,
        "frames": request.number_of_frames,
        "width": width,
        "height": height,
        "settings": redact_json(request.model_dump(mode="json")),
        "flow_run": run_name(),
    }


def run_gpu(plan: GeneratePlan, clip: FileRef, lora: FileRef, run_id: str, cache: Cache) -> GpuResult:
    """`generate-gpu` on the plan, the conformed inputs and the LoRA file; its outputs, as cache references."""
    return hand_off(GENERATE_GPU, {"plan": plan, "clip": clip, "lora": lora}, run_id, cache)
