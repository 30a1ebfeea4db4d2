"""The `train-lora` flow on the Prefect test harness: caching by file content."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.prepare import prefect_operations, prepare_dataset
from flows.refusals import refused
from flows.train_lora import train_lora
from lib.core.config import TrainRequest
from lib.core.errors import REFUSALS, InvalidDataset

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow(name="dataset-stage")
def check_dataset(request: TrainRequest, report_path: str | None = None) -> dict:
    """train-lora's dataset stage alone (its tasks, its cache), as the CLI's `check` runs it."""
    try:
        prepared = prepare_dataset(
            request, Path(report_path) if report_path else None, operations=prefect_operations(get_run_logger().info)
        )
    except REFUSALS as error:
        return refused(error)
    return prepared.report


def _task_states(flow_state, expected: int = 12) -> dict[str, str]:
    """Task run states of a finished flow run. The server records task runs and their states from
    events, which can lag on a busy machine: wait (up to 15 s) until at least `expected` are there,
    each with a state."""
    import time

    deadline = time.monotonic() + 15
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_state.state_details.flow_run_id]))
            )
        recorded = len(runs) >= expected and all(run.state is not None for run in runs)
        if recorded or time.monotonic() > deadline:
            return {run.name: run.state.name if run.state else "no state yet" for run in runs}
        time.sleep(0.5)


def _request(zip_path, tmp_path, **overrides) -> TrainRequest:
    fields = dict(
        training_data_url=str(zip_path),
        number_of_frames=17,
        resolution="low",
        aspect_ratio="16:9",
        model="tiny",
        output_url=str(tmp_path / "out"),
    )
    return TrainRequest(**(fields | overrides))


@pytest.mark.slow
def test_rerun_hits_cache_and_frames_change_refits(sample_zip, tmp_path, decodes):
    """The dataset stage's tasks rerun from the content-addressed cache."""
    request = _request(sample_zip, tmp_path)
    first = check_dataset(request, str(tmp_path / "report.json"), return_state=True)
    assert first.is_completed(), first.message
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["accepted"] == 3
    assert {r["name"]: r.get("reason") for r in report["triplets"]}["silent"] == "silent_audio"

    decodes.update(check=0, conform=0)
    second = _task_states(check_dataset(request, return_state=True), expected=10)
    per_triplet = {name: state for name, state in second.items() if name.startswith(("check-", "conform-"))}
    assert len(per_triplet) == 8 and set(per_triplet.values()) == {"Completed"}, per_triplet
    assert decodes == {"check": 0, "conform": 0}, "every outcome comes back from the content-addressed cache"

    check_dataset(_request(sample_zip, tmp_path, number_of_frames=25))
    assert decodes == {"check": 0, "conform": 3}, "new settings refit the accepted triplets; checks are reused"


@pytest.mark.slow
def test_code_version_invalidates_exactly_that_step(sample_zip, tmp_path, decodes, monkeypatch):
    from lib.ingest import conform

    request = _request(sample_zip, tmp_path)
    assert check_dataset(request, return_state=True).is_completed()
    decodes.update(check=0, conform=0)
    monkeypatch.setattr(conform, "CONFORM_VERSION", "test-conform")
    check_dataset(request)
    assert decodes == {"check": 0, "conform": 3}
    monkeypatch.setattr(conform, "CHECK_VERSION", "test-check")
    check_dataset(request)
    # 4 triplets checked again; their facts are the same, so no accepted triplet is refitted.
    assert decodes == {"check": 4, "conform": 3}


def test_no_qualifying_triplet_fails_with_invalid_dataset(tmp_path, media):
    import zipfile

    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as archive:
        archive.write(media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4", "dog_start.mp4")
        archive.write(media / "h264_aac_854x480_25fps_9s_editlist.mp4", "dog_end.mp4")
        archive.write(media / "masks" / "runningcar_mask_square_432x240.png", "dog_mask.png")
        archive.write(media / "vp9_opus_320x180_24fps_5s.webm", "orphan_start.webm")
    with pytest.raises(InvalidDataset) as caught:
        train_lora(_request(bad, tmp_path))
    message = str(caught.value)
    assert "422" in message and "dog: silent_audio" in message and "orphan: missing_end" in message


@pytest.mark.slow
def test_failed_states_are_named_for_the_cause(tmp_path):
    not_a_zip = tmp_path / "data.zip"
    not_a_zip.write_text("not a zip")
    state = train_lora(_request(not_a_zip, tmp_path), return_state=True)
    assert state.is_failed() and state.name == "InvalidDataset"
    assert "422" in state.message and "not_a_zip" in state.message
    state = train_lora(_request(tmp_path / "missing.zip", tmp_path), return_state=True)
    assert state.is_failed() and state.name == "DownloadFailed" and "missing.zip" in state.message
    assert not (tmp_path / "out" / "result.json").exists()


def test_unavailable_model_ends_the_run_before_the_dataset_is_fetched(sample_zip, tmp_path, monkeypatch):
    import time

    import flows.train_lora as module

    def no_fetch(*args, **kwargs):
        raise AssertionError("the dataset was fetched before the model source was checked")

    monkeypatch.setattr(module.ingest, "fetch_training_data", no_fetch)
    monkeypatch.delenv("AV2AV_MODEL_SOURCE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))  # nothing downloaded, no network
    began = time.monotonic()
    state = train_lora(_request(sample_zip, tmp_path, model="ltx-2.3"), return_state=True)
    assert time.monotonic() - began < 30
    assert state.is_failed() and state.name == "ModelUnavailable"
    assert "diffusers/LTX-2.3-Diffusers" in state.message and "model_source" in state.message
    assert not (tmp_path / "out" / "result.json").exists()  # nothing uploaded, billed 0


@pytest.mark.parametrize("output_url, text", [("{tmp}/a_file/out", "cannot write to")], ids=["under-a-file"])
def test_unusable_output_url_is_refused_before_the_dataset_is_fetched(
    sample_zip, tmp_path, monkeypatch, output_url, text
):
    # (a scheme whose package is missing never gets this far: the request refuses it, test_config)
    import time

    import flows.train_lora as module

    (tmp_path / "a_file").write_text("not a folder")

    def no_fetch(*args, **kwargs):
        raise AssertionError("the dataset was fetched before output_url was checked")

    monkeypatch.setattr(module.ingest, "fetch_training_data", no_fetch)
    began = time.monotonic()
    state = train_lora(_request(sample_zip, tmp_path, output_url=output_url.format(tmp=tmp_path)), return_state=True)
    assert time.monotonic() - began < 10
    assert state.is_failed() and state.name == "InvalidRequest", state.message
    assert "output_url" in state.message and text in state.message
