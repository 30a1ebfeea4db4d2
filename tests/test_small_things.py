"""Small things a user notices: what `av2av sample` leaves behind and with which permissions, the
batch form's help text, the outputs table naming result.json."""
from __future__ import annotations

import os
import stat

from lib.media.synthetic import make_demo


def test_sample_leaves_no_hidden_folder_and_readable_files(tmp_path):
    previous = os.umask(0o022)
    try:
        made = make_demo(tmp_path / "demo")
    finally:
        os.umask(previous)
    everything = list((tmp_path / "demo").rglob("*"))
    assert not [path for path in everything if path.name.startswith(".")], everything
    files = [path for path in everything if path.is_file()]
    assert made["dataset"] in files and all(stat.S_IMODE(path.stat().st_mode) == 0o644 for path in files), \
        {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in files}


def test_the_batch_form_help_survives_html_and_points_to_the_manifest_format():
    from prefect.utilities.callables import parameter_schema

    from flows.retrain_batch import retrain_batch

    properties = parameter_schema(retrain_batch.fn).model_dump()["properties"]
    for name, prop in properties.items():
        assert "<" not in prop["description"] and ">" not in prop["description"], name
    assert "Batch retraining" in properties["manifest_url"]["description"]
    assert "PREFIX-ENTRY-DATE" in properties["run_name_prefix"]["description"]


def test_the_outputs_table_names_result_json():
    from tasks.outputs import outputs_markdown

    result = {"outputs": {"lora.safetensors": {"url": "/out/lora.safetensors", "size": 10, "sha256": "a" * 64}}}
    markdown = outputs_markdown(result, {}, None, [], "/out")
    assert "| result.json | | this list, written last" in markdown
