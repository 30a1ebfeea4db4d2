"""Upload and report tasks: what the user gets back, and the Prefect artifacts that list it."""
from __future__ import annotations

import base64
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lib.config import TrainRequest
from lib.plan import validation_conform_settings
from lib.storage import FileRef, work_dir
from lib.upload import upload_outputs
from lib.validation import prepare_samples
from tasks.retries import retry_transient


@task(retries=3, retry_delay_seconds=[2, 10, 30], retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def upload(files: dict[str, Path], output_url: str, extra: dict) -> dict:
    result = upload_outputs(files, output_url, extra)
    rows = "\n".join(f"| [{name}]({info['url']}) | {info['size']:,} | `{info['sha256'][:12]}` |"
                     for name, info in result["outputs"].items())
    metrics = "\n".join(f"- **{key}**: {value}" for key, value in extra.items() if not isinstance(value, (dict, list)))
    create_markdown_artifact(key="training-outputs", description="Outputs of this training run",
                             markdown=f"# LoRA training outputs\n\n{metrics}\n\n| file | bytes | sha256 |\n"
                                      f"|---|---|---|\n{rows}\n{_loss_plot(files.get('loss.png'))}")
    return result


def _loss_plot(path: Path | None) -> str:
    """The loss curve inline (a data URI), so the UI shows it wherever the outputs went."""
    if path is None or not Path(path).is_file():
        return ""
    encoded = base64.b64encode(Path(path).read_bytes()).decode()
    return f"\n## Loss\n\n![loss curve](data:image/png;base64,{encoded})\n"


@task(cache_policy=NO_CACHE)
def prepare_validation(request: TrainRequest) -> list[FileRef]:
    """Fetch and conform every validation sample before any GPU is asked for (422 on failure)."""
    return prepare_samples(request.validation, validation_conform_settings(request), work_dir())


def _variable_name(request: TrainRequest) -> str:
    from lib.fingerprint import parameters_key

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
