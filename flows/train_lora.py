"""`train-lora`: the flow users start (UI form, schedule, API): prepare the dataset on the CPU
pool, then hand the heavy part to `train-lora-gpu`.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

from flows.prepare import prepare_dataset
from flows.train_lora_gpu import train_lora_gpu
from lib.config import TrainRequest
from lib.outputs import billing_units


def run_folder(request: TrainRequest) -> Path:
    """Local folder for this run's files; concurrent runs never share one."""
    if request.output_url and "://" not in request.output_url:
        return Path(request.output_url)
    return Path("outputs") / (flow_run.get_name() or "local-run")


@flow(name="train-lora", log_prints=True)
def train_lora(request: TrainRequest) -> dict:
    """Train a masked audio+video LoRA from a zip of triplets."""
    folder = run_folder(request)
    prepared = prepare_dataset(request, report_path=folder / "report.json",
                               debug_dataset_path=folder / "debug_dataset.zip" if request.debug_dataset else None)
    print(f"{prepared.report['accepted']} triplet(s) accepted; report at {folder / 'report.json'}")
    trained = train_lora_gpu(request, [result.clip for result in prepared.accepted], str(folder))
    return {**trained, "report": str(folder / "report.json"), "accepted": prepared.report["accepted"],
            "debug_dataset": prepared.debug_dataset.path if prepared.debug_dataset else None,
            "billing_units": billing_units(request)}


@flow(name="check-dataset", log_prints=True)
def check_dataset(request: TrainRequest, report_path: str | None = None,
                  debug_dataset_path: str | None = None) -> dict:
    """Only the dataset checks: the per-triplet report, before any GPU is involved."""
    prepared = prepare_dataset(request, Path(report_path) if report_path else None,
                               Path(debug_dataset_path) if debug_dataset_path else None)
    return prepared.report
