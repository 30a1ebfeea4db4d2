"""Small things a user notices: what `av2av sample` leaves behind and with which permissions, the
batch form's help text, the outputs table naming result.json."""

from __future__ import annotations

import os
import stat

import pytest

from lib.media.synthetic import make_demo


@pytest.mark.slow
def test_sample_leaves_no_hidden_folder_and_readable_files(tmp_path):
    previous = os.umask(0o022)
    try:
        made = make_demo(tmp_path / "demo")
    finally:
        os.umask(previous)
    everything = list((tmp_path / "demo").rglob("*"))
    assert not [path for path in everything if path.name.startswith(".")], everything
    files = [path for path in everything if path.is_file()]
    assert made["dataset"] in files and all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in files), {
        str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in files
    }


def test_the_batch_form_help_survives_html_and_points_to_the_manifest_format():
    from prefect.utilities.callables import parameter_schema

    from flows.retrain_batch import retrain_batch

    properties = parameter_schema(retrain_batch.fn).model_dump()["properties"]
    for name, prop in properties.items():
        assert "<" not in prop["description"] and ">" not in prop["description"], name
    assert "Batch retraining" in properties["manifest_url"]["description"]
    assert "PREFIX-ENTRY-DATE" in properties["run_name_prefix"]["description"]


def test_the_outputs_table_names_result_json():
    from lib.publish.markdown import outputs_markdown

    result = {"outputs": {"lora.safetensors": {"url": "/out/lora.safetensors", "size": 10, "sha256": "a" * 64}}}
    markdown = outputs_markdown(result, {}, None, [], "/out")
    assert "| result.json | | this list, written last" in markdown


def _record(logger_name: str, message: str, error: BaseException | None):
    import logging

    exc_info = (type(error), error, None) if error else None
    return logging.LogRecord(logger_name, logging.ERROR, __file__, 1, message, None, exc_info)


def test_run_log_keeps_bugs_and_drops_repeats_of_a_refusal():
    """On the run page a refusal is said once: the engine's FailedRun re-raise of a Failed state our
    flow returned, and the refusal's own exception record, are repeats; a bug keeps its traceback."""
    from prefect.exceptions import FailedRun

    from flows.refusals import QuietRefusals
    from lib.core.errors import InvalidDataset, StageFailed

    quiet = QuietRefusals()
    engine = "Engine execution exited with unexpected exception"
    assert not quiet.filter(_record("prefect.flow_runs", engine, FailedRun("2 of 3 entries failed")))
    assert not quiet.filter(_record("prefect.task_runs", "Task run failed", InvalidDataset("no triplets")))
    assert quiet.filter(_record("prefect.flow_runs", engine, ValueError("a bug")))
    assert quiet.filter(_record("prefect.task_runs", "Task run failed", StageFailed("encode failed")))
