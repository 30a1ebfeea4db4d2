"""Tasks of `generate` (CPU) and `generate-gpu` (GPU): each wraps one lib call with retries,
logging, progress and artifacts."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.generate import GeneratePlan, GenerateRequest, LoraConventions
from lib.core.progress import Progress
from lib.core.redact import redact_url
from lib.core.storage import FileRef, fetch
from lib.model import encoding
from lib.model.lifetime import TEXT_PARTS, release
from tasks import model_cache
from tasks.outputs import presigned_url
from tasks.parent_run import ParentRun
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
        markdown=outputs_markdown(result, extra, preview, output_url),
    )
    return result


def outputs_markdown(result: dict, extra: dict, preview: Path | None, output_url: str) -> str:
    import base64

    settings = extra["settings"]
    lines = [
        f"# Generated clip\n\nLoRA `{extra['lora']['sha256'][:12]}` ({extra['lora']['url']}), "
        f"{extra['frames']} frames at {settings['frame_rate']} fps, {extra['width']}x{extra['height']}, "
        f"seed {settings['seed']}, {settings['steps']} steps. Saved to `{redact_url(output_url)}`."
    ]
    if preview is not None and Path(preview).is_file():
        data = base64.b64encode(Path(preview).read_bytes()).decode()
        lines.append(
            f"## Preview\n\nsource · mask · reference · generated\n\n![preview](data:image/webp;base64,{data})"
        )
    rows = []
    for name, info in result["outputs"].items():
        link = info["url"] if info["url"].startswith(("http://", "https://")) else presigned_url(info["url"])
        rows.append(f"| {f'[{name}]({link})' if link else name} | {info['size']:,} | `{info['sha256'][:12]}` |")
    lines.append("## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n" + "\n".join(rows))
    return "\n\n".join(lines) + "\n"


# --- GPU side -----------------------------------------------------------------------------------


@task(cache_policy=NO_CACHE)
def encode_texts(plan: GeneratePlan, clip: FileRef, cache: Cache) -> FileRef:
    """The prompt (with the clip) and the negative prompt into the prompt cache; then the text
    encoder and connectors are released for good."""
    components = model_cache.for_plan(plan)
    try:
        encoding.encode_captions(components, [clip], cache, plan.conditioning.reference_downscale)
        return encoding.encode_prompt(components, plan.negative_prompt, cache)
    finally:
        release(components, *TEXT_PARTS)


@task(cache_policy=NO_CACHE)
def encode_inputs(plan: GeneratePlan, clip: FileRef, cache: Cache) -> FileRef:
    """Latents of the conformed inputs (cached by content: a rerun encodes nothing)."""
    return encoding.encode_clip(model_cache.for_plan(plan), clip, cache, plan.conditioning.reference_downscale)


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
    from tasks.training import run_and_parent_logger

    parent = ParentRun(parent_run_id)
    steps = plan.sampler.steps
    artifacts = [create_progress_artifact(progress=0.0, key=PROGRESS_KEY, description="Denoising progress")]
    artifacts += [a for a in [parent.artifact("progress", 0.0, "Denoising progress", key=PROGRESS_KEY)] if a]
    progress = Progress(steps, "denoising", log=run_and_parent_logger(parent), unit="step", every_s=0)

    def on_step(done: int, total: int) -> None:
        progress.update(done)
        for artifact_id in artifacts:
            update_progress_artifact(artifact_id=artifact_id, progress=100.0 * done / total)

    with progress:
        produced = generate_sample(
            model_cache.for_plan(plan), plan, str(clip), str(latents), encoding.load_prompt(negative), lora, on_step
        )
    return write_outputs(produced, folder)
