"""`train-lora`: the flow users start (UI form, schedule, API). Prepares the dataset and the
validation samples on the CPU pool, hands the heavy part to `train-lora-gpu`, uploads the outputs.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.prepare import prepare_dataset
from flows.train_lora_gpu import train_lora_gpu
from lib.config import TrainRequest
from lib.errors import Av2AvError
from lib.outputs import billing_units
from lib.storage import work_dir
from tasks.outputs import prepare_validation, upload


class StepFailed(Av2AvError):
    code = "step_failed"


@contextmanager
def step(name: str):
    """Errors name the step: ours keep their type (and 422 text), others are wrapped."""
    try:
        yield
    except Av2AvError:
        raise
    except Exception as error:
        raise StepFailed(f"Step '{name}' failed: {type(error).__name__}: {error}") from error


def run_name() -> str:
    return flow_run.get_name() or "local-run"


def staging_folder() -> Path:
    """This run's private local folder (concurrent runs never share one)."""
    return work_dir() / "runs" / (flow_run.get_id() or run_name())


@flow(name="train-lora", log_prints=True)
def train_lora(request: TrainRequest) -> dict:
    """Train a masked audio+video LoRA from a zip of triplets; returns result.json's content."""
    staging = staging_folder()
    output_url = request.output_url or str(Path("outputs") / run_name())
    with step("prepare dataset"):
        prepared = prepare_dataset(request, report_path=staging / "report.json",
                                   debug_dataset_path=staging / "debug_dataset.zip" if request.debug_dataset else None)
    with step("validation samples"):
        validation_clips = prepare_validation(request)
    print(f"{prepared.report['accepted']} triplet(s) accepted, {len(validation_clips)} validation sample(s)")
    with step("training"):
        trained = train_lora_gpu(request, [r.clip for r in prepared.accepted], str(staging), validation_clips)
    files = {name: Path(path) for name, path in trained["files"].items()}
    files["report.json"] = staging / "report.json"
    if prepared.debug_dataset is not None:
        files["debug_dataset.zip"] = Path(prepared.debug_dataset.path)
    extra = {"billing_units": billing_units(request), "final_loss": trained["final_loss"],
             "steps": trained["steps"], "accepted_triplets": prepared.report["accepted"],
             "flow_run": run_name()}
    with step("upload"):
        result = upload(files, output_url, extra)
    print(f"Outputs: {output_url}")
    return result


@flow(name="check-dataset", log_prints=True)
def check_dataset(request: TrainRequest, report_path: str | None = None,
                  debug_dataset_path: str | None = None) -> dict:
    """Only the dataset checks: the per-triplet report, before any GPU is involved."""
    prepared = prepare_dataset(request, Path(report_path) if report_path else None,
                               Path(debug_dataset_path) if debug_dataset_path else None)
    return prepared.report
