"""`train-lora`: the flow users start (UI form, schedule, API). Prepares the dataset and the
validation samples on the CPU pool, hands the heavy part to `train-lora-gpu` (through its
deployment when one exists, else in-process), uploads the outputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed

from flows.form import titled
from flows.gpu_handoff import gpu_memory_declared, run_gpu_flow
from flows.prepare import prefect_operations, prepare_dataset
from flows.refusals import refused
from flows.run_context import run_name, stage, staging_id
from lib.core.cache import Cache, check_cache_location
from lib.core.config import TrainRequest
from lib.core.errors import REFUSALS, UploadError
from lib.core.housekeeping import mark_owner, run_entry, stale_after_text
from lib.core.plan import plan_run, run_fingerprint
from lib.core.progress import announce
from lib.core.redact import redact_url
from lib.model import check_model_source
from lib.publish.outputs import billing_units, write_config
from lib.publish.upload import check_output_location
from lib.train.checkpoint import check_checkpoint
from lib.train.memory_plan import check_fits, offload_decision
from tasks import ingest
from tasks.housekeeping import sweep_stale_runs
from tasks.outputs import last_success, prepare_validation, remember_success, upload


@flow(name="train-lora", log_prints=True)
def train_lora(
    request: Annotated[TrainRequest, titled("Training request")],
    skip_if_unchanged: Annotated[bool, titled("Skip if unchanged")] = False,
):
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
    with stage("fetch"):
        zip_file = ingest.fetch_training_data(request.training_data_url, Path(cache.local))
    fingerprint = run_fingerprint(request, zip_file.sha256)
    previous = last_success(request) if skip_if_unchanged else None
    if previous and previous.get("fingerprint") == fingerprint:
        return Completed(
            message=f"Skipped: dataset (sha256 {zip_file.sha256[:12]}) and parameters unchanged "
            f"since run '{previous.get('flow_run')}'; nothing retrained, nothing billed."
        )
    mark_owner(staging, run_id)
    with stage("prepare dataset"):
        prepared = prepare_dataset(
            request,
            staging / "report.json",
            staging / "debug_dataset.zip" if request.debug_dataset else None,
            zip_file,
            prefect_operations(get_run_logger().info),
            cache,
        )
    with stage("validation samples"):
        validation_clips = prepare_validation(request, cache)
    announce(
        f"{prepared.report['accepted']} triplet(s) accepted, {len(validation_clips)} validation sample(s)",
        get_run_logger().info,
    )
    plan = plan_run(request, validation_clips, plan_offloads=offload_decision(memory))
    with stage("training"):
        trained = run_gpu_flow(plan, [r.clip for r in prepared.accepted], run_id, cache)
        files, previews = trained.local_files(cache), trained.local_previews(cache)
    files["config.json"] = write_config(request, plan, staging / "config.json")
    files["report.json"] = staging / "report.json"
    if prepared.debug_dataset is not None:
        files["debug_dataset.zip"] = Path(prepared.debug_dataset.path)
    extra = {
        "billing_units": billing_units(request),
        "final_loss": trained.final_loss,
        "steps": trained.steps,
        "accepted_triplets": prepared.report["accepted"],
        "flow_run": run_name(),
        "fingerprint": fingerprint,
        "checkpoints_kept_in": trained.checkpoints_kept_in,
    }
    with stage("upload"):
        try:
            result = upload(files, output_url, extra, previews)
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
