"""Tasks of `generate` (CPU) and `generate-gpu` (GPU): each wraps one lib call with retries,
logging, progress and artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.generate import GeneratePlan, GenerateRequest, LoraConventions
from lib.core.progress import Progress
from lib.core.redact import redact_url
from lib.core.storage import FileRef, fetch
from lib.model import encoding, process_cache, prompts
from lib.publish.markdown import generated_markdown
from tasks.parent_run import ParentRun, progress_artifacts, run_and_parent_logger
from tasks.retries import on_last_attempt, retry_transient
from tasks.secrets import resolve_url

PROGRESS_KEY = "generate-progress"
DOWNLOAD_RETRIES = dict(retries=3, retry_delay_seconds=[1, 5, 20], retry_condition_fn=retry_transient)


# --- CPU side -----------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE, **DOWNLOAD_RETRIES)
def open_lora(request: GenerateRequest, cache: Cache) -> tuple[FileRef, LoraConventions]:
    """Fetch lora_url and read its conventions (header only: seconds); InvalidRequest if it cannot work."""
    from lib.train.lora_file import open_lora as open_file

    with on_last_attempt():
        return open_file(
            resolve_url(request.lora_url, "lora_url"),
            Path(cache.local) / "downloads",
            request.model,
            fetch,
            redact_url(request.lora_url),
        )


@task(cache_policy=NO_CACHE)
def prepare_inputs(request: GenerateRequest, prompt: str, cache: Cache) -> FileRef:
    """Fetch (retried), check and conform the source, mask and references, as validation samples."""
    from lib.ingest.generate_inputs import prepare_inputs as prepare

    return prepare(request, prompt, cache, resolve_url)


@task(cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_transient)
def upload_generated(files: dict[str, Path], output_url: str, extra: dict, preview: Path | None) -> dict:
    from lib.publish.upload import upload_outputs

    result = upload_outputs(files, output_url, extra)
    create_markdown_artifact(
        key="generate-outputs",
        description="Outputs of this generation",
        markdown=generated_markdown(result, extra, preview, output_url),
    )
    return result


# --- GPU side -----------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def encode_texts(plan: GeneratePlan, clip: FileRef, cache: Cache) -> FileRef:
    """The prompt (with the clip) and the negative prompt into the prompt cache; then the text
    encoder and connectors are released for good."""
    return prompts.encode_texts(
        process_cache.for_plan(plan), [clip], cache, plan.conditioning.reference_downscale, plan.negative_prompt
    )


@task(cache_policy=NO_CACHE)
def encode_inputs(plan: GeneratePlan, clip: FileRef, cache: Cache) -> FileRef:
    """Latents of the conformed inputs (cached by content: a rerun encodes nothing)."""
    return encoding.encode_clip(process_cache.for_plan(plan), clip, cache, plan.conditioning.reference_downscale)


@task(cache_policy=NO_CACHE)
def sample(
    plan: GeneratePlan,
    clip: Path,
    latents: Path,
    negative: Path,
    lora: Path,
    folder: Path,
    parent_run_id: str | None = None,
) -> dict[str, Path]:
    """Attach the LoRA, denoise (each step reported here and on the run the user started), decode,
    and write the clip and its preview."""
    from lib.validate.generate import generate_sample, write_outputs

    parent = ParentRun(parent_run_id)
    artifacts = progress_artifacts(parent, "Denoising progress", PROGRESS_KEY)
    progress = Progress(plan.sampler.steps, "denoising", log=run_and_parent_logger(parent), unit="step", every_s=0)

    def on_step(done: int, total: int) -> None:
        progress.update(done)
        artifacts(100.0 * done / total)

    with progress:
        produced = generate_sample(
            process_cache.for_plan(plan), plan, str(clip), str(latents), encoding.load_prompt(negative), lora, on_step
        )
    return write_outputs(produced, folder)
