"""Upload and report tasks: what the user gets back, and the Prefect artifacts that list it."""

from __future__ import annotations

import base64
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.config import TrainRequest
from lib.core.plan import validation_conform_settings
from lib.core.redact import redact_url
from lib.core.storage import FileRef
from lib.ingest.validation import prepare_samples
from lib.publish.upload import upload_outputs
from tasks.retries import retry_transient
from tasks.secrets import resolve_samples


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def upload(files: dict[str, Path], output_url: str, extra: dict, previews: list[str] = ()) -> dict:
    result = upload_outputs(files, output_url, extra)
    create_markdown_artifact(
        key="training-outputs",
        description="Outputs of this training run",
        markdown=outputs_markdown(result, extra, files.get("loss.png"), previews, output_url),
    )
    return result


def outputs_markdown(result: dict, extra: dict, loss_plot: Path | None, previews: list[str], output_url: str) -> str:
    """Validation previews and the loss curve inline (data URIs: they show wherever the outputs
    went); a file is a link only where the link opens something (http(s), or a presigned URL)."""
    metrics = "\n".join(
        f"- **{key}**: {_figure(key, value)}"
        for key, value in extra.items()
        if value is not None and not isinstance(value, (dict, list))
    )
    rows = "\n".join(
        [
            *(
                f"| {_file_cell(name, info['url'])} | {info['size']:,} | `{info['sha256'][:12]}` |"
                for name, info in result["outputs"].items()
            ),
            "| result.json | | this list, written last: its presence means the run is complete |",
        ]
    )
    sections = [
        f"# LoRA training outputs\n\n{metrics}\n\nSaved to `{redact_url(output_url)}`.",
        *[
            f"## Validation sample {index}\n\nsource · mask · reference · generated\n\n"
            f"{_inline_image(Path(path), 'image/webp', f'validation sample {index}')}"
            for index, path in enumerate(previews, 1)
        ],
        f"## Files\n\n| file | bytes | sha256 |\n|---|---|---|\n{rows}",
    ]
    if loss_plot is not None and Path(loss_plot).is_file():
        sections.append(f"## Loss\n\n{_inline_image(Path(loss_plot), 'image/png', 'loss curve')}")
    return "\n\n".join(sections) + "\n"


def _figure(key: str, value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value[:12]}`" if key == "fingerprint" else str(value)


def _inline_image(path: Path, mime: str, alt: str) -> str:
    return f"![{alt}](data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()})"


def _file_cell(name: str, url: str) -> str:
    link = url if url.startswith(("http://", "https://")) else presigned_url(url)
    return f"[{name}]({link})" if link else name  # the folder is stated once above the table


def presigned_url(url: str, expiration_s: int = 7 * 24 * 3600) -> str | None:
    """A temporary https link for object storage (s3://, gs://, ...); None where there is none."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
        signed = fs.sign(path, expiration=expiration_s)
    except Exception:  # local and memory filesystems cannot sign (NotImplementedError), nor can some stores
        return None
    return signed if str(signed).startswith(("http://", "https://")) else None


@task(cache_policy=NO_CACHE)
def prepare_validation(request: TrainRequest, cache: Cache) -> list[FileRef]:
    """Fetch and conform every validation sample before any GPU is asked for (422 on failure)."""
    return prepare_samples(resolve_samples(request.validation), validation_conform_settings(request), cache)


def _variable_name(request: TrainRequest) -> str:
    from lib.core.plan import parameters_key

    return f"av2av_last_success_{parameters_key(request)}"


@task(cache_policy=NO_CACHE)
def last_success(request: TrainRequest) -> dict | None:
    """The fingerprint of the last successful run with these parameters (a Prefect Variable)."""
    from prefect.variables import Variable

    return Variable.get(_variable_name(request), default=None)


@task(cache_policy=NO_CACHE)
def remember_success(request: TrainRequest, record: dict) -> None:
    """Bookkeeping for skip_if_unchanged: a failure here must not fail a run whose outputs are uploaded."""
    from prefect import get_run_logger
    from prefect.variables import Variable

    try:
        Variable.set(_variable_name(request), record, overwrite=True)
    except Exception as error:  # e.g. a busy SQLite server; the next scheduled run simply retrains
        get_run_logger().warning("Could not record this run for skip_if_unchanged: %s", error)
