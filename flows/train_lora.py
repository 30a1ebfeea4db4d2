"""`train-lora`: the flow users start (UI form, schedule, API). Prepares the dataset and the
validation samples on the CPU pool, hands the heavy part to `train-lora-gpu` (through its
deployment when one exists, else in-process), uploads the outputs.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.exceptions import FailedRun
from prefect.runtime import flow_run
from prefect.states import Completed, Failed, State

from flows.form import titled
from flows.gpu_handoff import gpu_memory_declared, run_gpu_flow
from flows.prepare import prefect_steps, prepare_dataset
from lib.core.cache import Cache, check_cache_location
from lib.core.config import TrainRequest
from lib.core.errors import (
    Av2AvError,
    CacheUnavailable,
    DownloadError,
    InvalidDataset,
    InvalidRequest,
    ModelUnavailable,
    StepFailed,
    TrainingDiverged,
    UploadError,
)
from lib.core.housekeeping import mark_owner, run_entry, stale_after_text
from lib.core.plan import plan_run, run_fingerprint
from lib.core.progress import announce
from lib.core.redact import redact_text, redact_url
from lib.model import check_model_source
from lib.publish.outputs import billing_units, write_config
from lib.publish.upload import check_output_location
from lib.train.checkpoint import check_checkpoint
from lib.train.memory_plan import check_fits, offload_decision
from tasks import ingest
from tasks.housekeeping import sweep_stale_runs
from tasks.outputs import last_success, prepare_validation, remember_success, upload


@contextmanager
def step(name: str):
    """Says the step began (CLI and run page alike); errors name the step: ours keep their type
    (and 422 text), others are wrapped."""
    announce(f"{name} ...", get_run_logger().info)
    try:
        yield
    except Av2AvError:
        raise
    except Exception as error:
        raise StepFailed(redact_text(f"Step '{name}' failed: {type(error).__name__}: {error}")) from error


# Expected refusals -> the Failed state's name (the one table; the CLI maps the same classes).
FAILED_STATE_NAMES = (
    (InvalidDataset, "InvalidDataset"),
    (InvalidRequest, "InvalidRequest"),
    (ModelUnavailable, "ModelUnavailable"),
    (UploadError, "UploadFailed"),
    (DownloadError, "DownloadFailed"),
    (CacheUnavailable, "CacheUnavailable"),
    (TrainingDiverged, "TrainingDiverged"),
)
REFUSALS = tuple(kind for kind, _ in FAILED_STATE_NAMES)


def refused(error: Av2AvError) -> State:
    """One clear log line and a Failed state named for the cause (billed 0), no traceback."""
    name = next(name for kind, name in FAILED_STATE_NAMES if isinstance(error, kind))
    message = redact_text(error.message)  # lib's messages are redacted already; so is an upload's URL here
    get_run_logger().error("%s: %s", name, message)
    return Failed(name=name, message=message, data=error)


class _QuietRefusals(logging.Filter):
    """Each expected refusal is stated once, by `refused`, in the user's words. Prefect would also
    log it as the task's exception (with a traceback), as the task's and the flow's final state,
    and, when a worker ends a Failed run, as the engine re-raising it: four more copies of one
    fact. Those are dropped here (retry notices stay), and so are the routine "Finished in state
    Completed()" lines of tasks. A Failed state our flow returns (a refusal, a batch with failed
    entries) is re-raised by the engine as FailedRun: said already, dropped too. StepFailed
    wraps real bugs: its traceback stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "prefect.task_runs" and message.startswith("Finished in state Completed("):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FailedRun):  # the engine re-raising a Failed state a flow of ours returned
            return False
        if isinstance(error, Av2AvError) and not isinstance(error, StepFailed):
            return "Retry" in message  # a transient failure about to be retried is news; the rest is a repeat
        return not (message.startswith("Finished in state") and _names_a_refusal(message))


def _names_a_refusal(message: str) -> bool:
    names = (
        {name for _, name in FAILED_STATE_NAMES} | {kind.__name__ for kind in REFUSALS} | {"ArchiveError", "MediaError"}
    )
    return any(f"{name}(" in message or f"{name}:" in message for name in names)


for _logger in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_logger).addFilter(_QuietRefusals())


def run_name() -> str:
    return flow_run.get_name() or "local-run"


def staging_id() -> str:
    """Names this run's private staging folder, `runs/<id>` in the cache (concurrent runs never
    share one; housekeeping asks Prefect whether the run of that id is still going)."""
    return str(flow_run.get_id() or run_name())


@flow(name="train-lora", log_prints=True)
def train_lora(request: TrainRequest, skip_if_unchanged: Annotated[bool, titled("Skip if unchanged")] = False):
    """Train a masked audio+video LoRA from a zip of triplets; returns result.json's content.

    Dataset problems end the run Failed, named InvalidDataset (the 422 text as message);
    download problems Failed, named DownloadFailed; upload problems UploadFailed; weights that
    cannot be found ModelUnavailable (checked before the dataset is fetched). All bill 0.

    Args:
        request: The training request: dataset URL, LoRA and video/audio settings, validation samples.
        skip_if_unchanged: Skip (Completed, with a message) when the dataset's content and the
            parameters match the last successful run with these parameters. Used by the nightly schedule.
    """
    try:
        return _train(request, skip_if_unchanged)
    except REFUSALS as error:
        return refused(error)


def _train(request: TrainRequest, skip_if_unchanged: bool):
    cache, run_id = Cache.current(), staging_id()
    staging = cache.path(run_entry(run_id))
    output_url = request.output_url or str(Path("outputs") / run_name())
    if request.resume_from:
        check_checkpoint(request.resume_from, request.rank)
    # A request the GPU pool's memory cannot hold is refused here, not after a GPU is rented.
    memory = check_fits(request, gpu_memory_declared())
    if note := request.reference_downscale_note():
        get_run_logger().warning(note)
    # Before any dataset work: a run whose weights cannot be found, or whose outputs could not be
    # written, must not spend minutes first.
    check_model_source(request.model, request.model_source, request.text_encoder_source)
    check_output_location(output_url)
    check_cache_location(cache)
    sweep_stale_runs(cache)
    with step("fetch"):
        zip_file = ingest.fetch_training_data(request.training_data_url, Path(cache.local))
    fingerprint = run_fingerprint(request, zip_file.sha256)
    previous = last_success(request) if skip_if_unchanged else None
    if previous and previous.get("fingerprint") == fingerprint:
        return Completed(
            message=f"Skipped: dataset (sha256 {zip_file.sha256[:12]}) and parameters unchanged "
            f"since run '{previous.get('flow_run')}'; nothing retrained, nothing billed."
        )
    mark_owner(staging, run_id)
    with step("prepare dataset"):
        prepared = prepare_dataset(
            request,
            staging / "report.json",
            staging / "debug_dataset.zip" if request.debug_dataset else None,
            zip_file,
            prefect_steps(get_run_logger().info),
            cache,
        )
    with step("validation samples"):
        validation_clips = prepare_validation(request, cache)
    announce(
        f"{prepared.report['accepted']} triplet(s) accepted, {len(validation_clips)} validation sample(s)",
        get_run_logger().info,
    )
    plan = plan_run(request, validation_clips, plan_offloads=offload_decision(memory))
    with step("training"):
        trained = run_gpu_flow(plan, [r.clip for r in prepared.accepted], run_id, cache)
    files = dict(trained["files"])
    files["config.json"] = write_config(request, plan, staging / "config.json")
    files["report.json"] = staging / "report.json"
    if prepared.debug_dataset is not None:
        files["debug_dataset.zip"] = Path(prepared.debug_dataset.path)
    extra = {
        "billing_units": billing_units(request),
        "final_loss": trained["final_loss"],
        "steps": trained["steps"],
        "accepted_triplets": prepared.report["accepted"],
        "flow_run": run_name(),
        "fingerprint": fingerprint,
        "checkpoints_kept_in": trained.get("checkpoints_kept_in"),
    }
    with step("upload"):
        try:
            result = upload(files, output_url, extra, trained.get("previews", []))
        except UploadError as error:  # training is done: say where its results are
            raise type(error)(
                f"{error.message} The trained files are kept in {staging} on the CPU worker "
                f"for {stale_after_text()} (then housekeeping removes them); copy them from there "
                "or fix output_url and rerun."
            ) from error
    remember_success(
        request, {"fingerprint": fingerprint, "flow_run": run_name(), "output_url": redact_url(output_url)}
    )
    try:
        cache.remove(run_entry(run_id))  # everything in it is uploaded now
    except Exception as error:  # the run's work is done; housekeeping removes what is left later
        get_run_logger().warning("Could not remove the staging folder %s: %s", run_entry(run_id), error)
    print(f"Outputs: {redact_url(output_url)}")
    return result


@flow(name="check-dataset", log_prints=True)
def check_dataset(request: TrainRequest, report_path: str | None = None, debug_dataset_path: str | None = None) -> dict:
    """Only the dataset checks: the per-triplet report, before any GPU is involved."""
    try:
        cache = Cache.current()
        check_cache_location(cache)
        prepared = prepare_dataset(
            request,
            Path(report_path) if report_path else None,
            Path(debug_dataset_path) if debug_dataset_path else None,
            steps=prefect_steps(get_run_logger().info),
            cache=cache,
        )
    except REFUSALS as error:
        return refused(error)
    return prepared.report
