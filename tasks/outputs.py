"""Upload and report tasks: what the user gets back, and the Prefect artifacts that list it."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from lib.core.cache import Cache
from lib.core.config import TrainRequest
from lib.core.plan import success_variable_name, validation_conform_settings
from lib.core.storage import FileRef
from lib.ingest.validation import prepare_samples
from lib.publish.markdown import outputs_markdown
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


@task(cache_policy=NO_CACHE)
def prepare_validation(request: TrainRequest, cache: Cache) -> list[FileRef]:
    """Fetch and conform every validation sample before any GPU is asked for (422 on failure)."""
    return prepare_samples(resolve_samples(request.validation), validation_conform_settings(request), cache)


@task(cache_policy=NO_CACHE)
def last_success(request: TrainRequest) -> dict | None:
    """The fingerprint of the last successful run with these parameters (a Prefect Variable)."""
    from prefect.variables import Variable

    return Variable.get(success_variable_name(request), default=None)


@task(cache_policy=NO_CACHE)
def remember_success(request: TrainRequest, record: dict) -> None:
    """Bookkeeping for skip_if_unchanged: a failure here must not fail a run whose outputs are uploaded."""
    from prefect import get_run_logger
    from prefect.variables import Variable

    try:
        Variable.set(success_variable_name(request), record, overwrite=True)
    except Exception as error:  # e.g. a busy SQLite server; the next scheduled run simply retrains
        get_run_logger().warning("Could not record this run for skip_if_unchanged: %s", error)
