"""Batch retraining tasks: decide per entry whether its data or parameters changed, and train the
changed ones as `train-lora` runs of their own (through the deployment: CPU pool, then GPU pool)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from lib.core import storage
from lib.core.batch import EntryOutcome, child_ended, child_started, one_line
from lib.core.config import TrainRequest
from lib.core.errors import DownloadError
from lib.core.plan import run_fingerprint
from lib.publish.outputs import billing_units
from tasks.outputs import last_success
from tasks.secrets import resolve_url

TRAIN_DEPLOYMENT = os.environ.get("AV2AV_TRAIN_DEPLOYMENT", "train-lora/train-lora")


@task(task_run_name="fingerprint-{name}", cache_policy=NO_CACHE)
def unchanged_since(name: str, request: TrainRequest) -> dict | None:
    """The record of the last successful run whose dataset content and parameters this entry still
    matches (skip_if_unchanged's fingerprint: `flow_run`, `output_url`), or None when it must train.
    Download problems raise DownloadError."""
    zip_file = storage.fetch_with_retries(resolve_url(request.training_data_url), storage.work_dir() / "downloads")
    try:
        previous = last_success(request)
        if previous and previous.get("fingerprint") == run_fingerprint(request, zip_file.sha256):
            return previous
        return None
    finally:
        Path(zip_file.path).unlink(missing_ok=True)  # the child run fetches its own copy


@task(task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_entry(name: str, request: TrainRequest, run_name: str, use_deployment: bool) -> EntryOutcome:
    """One `train-lora` run for this entry, waited for; its outcome as a summary row. Logs one line
    on the batch run when the child starts and one when it ends."""
    logger = get_run_logger()
    started = time.monotonic()
    child = run_name
    try:
        state, child = _run_child(request, run_name, use_deployment, lambda: logger.info(child_started(name, run_name)))
        message = one_line(f"{state.name}: {state.message or ''}").rstrip(":")
    except Exception as error:  # e.g. the API went away: this entry failed, the others go on
        state, message = None, one_line(f"not started: {type(error).__name__}: {error}")
    seconds = round(time.monotonic() - started, 1)
    # where the child writes (flows/train_lora.py): output_url, else outputs/<its run name> on the worker
    base = dict(entry=name, child_run=child, output=request.output_url or str(Path("outputs") / child), seconds=seconds)
    if state is not None and state.is_completed():
        logger.info(child_ended(name, child, state.name, True, seconds))
        return EntryOutcome(status="trained", billing_units=billing_units(request), **base)
    logger.error(
        child_ended(
            name,
            child,
            state.name if state else "Failed",
            False,
            seconds,
            message.partition(": ")[2] if state else message,
        )
    )
    return EntryOutcome(status="failed", message=message, **base)


def _run_child(request: TrainRequest, run_name: str, use_deployment: bool, on_start):
    """(final state, run name) of the entry's train-lora run; `on_start()` once it runs."""
    parameters = {"request": request.model_dump(mode="json")}
    if use_deployment:
        run = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, flow_run_name=run_name, timeout=0)
        return _wait_for_run(run.id, on_start), run.name
    from flows.train_lora import train_lora  # no workers (a local run, tests): in this process

    on_start()
    return train_lora.with_options(flow_run_name=run_name)(request, return_state=True), run_name


def _wait_for_run(run_id, on_start, poll_s: float = 5.0):
    """The run's final state; `on_start()` once a worker has it running (or it ended without)."""
    from prefect.client.orchestration import get_client

    announced = False
    with get_client(sync_client=True) as client:
        while True:
            state = client.read_flow_run(run_id).state
            if not announced and state is not None and (state.is_running() or state.is_final()):
                on_start()
                announced = True
            if state is not None and state.is_final():
                return state
            time.sleep(poll_s)


def skipped(name: str, request: TrainRequest, previous: dict) -> EntryOutcome:
    """Its output is where that run wrote it (the recorded output_url, redacted when stored), not
    where this manifest would put it now; empty for a record that does not say."""
    return EntryOutcome(
        entry=name,
        status="skipped-unchanged",
        output=str(previous.get("output_url") or ""),
        child_run=str(previous.get("flow_run") or ""),
        message=f"dataset and parameters unchanged since run '{previous.get('flow_run') or 'an earlier run'}'",
    )


def not_checked(name: str, request: TrainRequest, error: DownloadError) -> EntryOutcome:
    return EntryOutcome(
        entry=name, status="failed", output=request.output_url, message=f"{error.state_name}: {error.message}"
    )
