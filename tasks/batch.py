"""Batch retraining tasks: decide per entry whether its data or parameters changed, and train the
changed ones as `train-lora` runs of their own (through the deployment: CPU pool, then GPU pool)."""
from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from lib.core import storage
from lib.core.batch import EntryOutcome
from lib.core.config import TrainRequest
from lib.core.errors import DownloadError
from lib.core.plan import run_fingerprint
from lib.publish.outputs import billing_units
from tasks.outputs import last_success
from tasks.secrets import resolve_url

TRAIN_DEPLOYMENT = os.environ.get("AV2AV_TRAIN_DEPLOYMENT", "train-lora/train-lora")


@task(task_run_name="fingerprint-{name}", cache_policy=NO_CACHE)
def unchanged_since(name: str, request: TrainRequest) -> str | None:
    """The run whose dataset content and parameters this entry still matches (skip_if_unchanged's
    fingerprint), or None when it must train. Download problems raise DownloadError."""
    zip_file = storage.fetch_with_retries(resolve_url(request.training_data_url), storage.work_dir() / "downloads")
    try:
        previous = last_success(request)
        if previous and previous.get("fingerprint") == run_fingerprint(request, zip_file.sha256):
            return str(previous.get("flow_run") or "an earlier run")
        return None
    finally:
        Path(zip_file.path).unlink(missing_ok=True)   # the child run fetches its own copy


@task(task_run_name="train-{name}", cache_policy=NO_CACHE)
def train_entry(name: str, request: TrainRequest, run_name: str, use_deployment: bool) -> EntryOutcome:
    """One `train-lora` run for this entry, waited for; its outcome as a summary row."""
    started = time.monotonic()
    try:
        state, child = _run_child(request, run_name, use_deployment)
    except Exception as error:   # e.g. the API went away: this entry failed, the others go on
        state, child = None, f"{run_name} (not started: {type(error).__name__}: {error})"
    seconds = round(time.monotonic() - started, 1)
    base = dict(entry=name, child_run=child, output=request.output_url, seconds=seconds)
    if state is not None and state.is_completed():
        return EntryOutcome(status="trained", billing_units=billing_units(request), **base)
    message = f"{state.name if state else 'no state'}: {(state.message if state else '') or ''}".strip()
    return EntryOutcome(status="failed", message=message.splitlines()[0] if message else "", **base)


def _run_child(request: TrainRequest, run_name: str, use_deployment: bool):
    """(final state, run name) of the entry's train-lora run."""
    parameters = {"request": request.model_dump(mode="json")}
    if use_deployment:
        run = run_deployment(TRAIN_DEPLOYMENT, parameters=parameters, flow_run_name=run_name, timeout=None,
                             poll_interval=5)
        return run.state, run.name
    from flows.train_lora import train_lora   # no workers (a local run, tests): in this process

    return train_lora.with_options(flow_run_name=run_name)(request, return_state=True), run_name


def skipped(name: str, request: TrainRequest, since: str) -> EntryOutcome:
    return EntryOutcome(entry=name, status="skipped-unchanged", output=request.output_url,
                        message=f"dataset and parameters unchanged since run '{since}'")


def not_checked(name: str, request: TrainRequest, error: DownloadError) -> EntryOutcome:
    return EntryOutcome(entry=name, status="failed", output=request.output_url, message=f"DownloadFailed: {error.message}")
