"""Batch manifests: defaults under every entry, a per-entry output folder, each entry validated on
its own, and refusals that name the manifest and the rule."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from lib.core.batch import EntryOutcome, child_run_name, failed_message, parse_manifest, plan_entries
from lib.core.errors import InvalidRequest

MANIFEST = """
output_url: s3://studio/nightly/
defaults: {rank: 16, trigger_phrase: repl4ce, number_of_steps: 500}
entries:
  - name: voice-anna
    request: {training_data_url: "https://example.com/anna.zip"}
  - name: smoke-fx
    request: {training_data_url: "https://example.com/smoke.zip", rank: 64, output_url: "s3://other/smoke"}
  - name: broken
    request: {training_data_url: "https://example.com/b.zip", rank: 12}
"""


def test_defaults_entry_fields_and_output_folders():
    planned = {p.name: p for p in plan_entries(parse_manifest(MANIFEST, "manifest.yaml"))}
    anna, smoke = planned["voice-anna"].request, planned["smoke-fx"].request
    assert (anna.rank, anna.number_of_steps, anna.trigger_phrase) == (16, 500, "repl4ce")
    assert anna.output_url == "s3://studio/nightly/voice-anna"
    assert smoke.rank == 64 and smoke.output_url == "s3://other/smoke"   # its own fields win
    assert planned["broken"].request is None and "rank" in planned["broken"].problem


def test_json_manifest_is_read_too():
    text = json.dumps({"entries": [{"name": "a", "request": {"training_data_url": "a.zip"}}]})
    [entry] = plan_entries(parse_manifest(text, "m.json"))
    assert entry.request.training_data_url == "a.zip" and entry.request.output_url == ""


@pytest.mark.parametrize("text, expected", [
    ("entries: [", "not valid YAML or JSON"),
    ("entries: []", "entries"),
    ("entries: [{name: 'bad name!', request: {}}]", "name"),
    ("entries: [{name: a}, {name: a}]", "repeated: a"),
    ("entries: [{name: a}]\nextra: 1", "extra"),
], ids=["syntax", "empty", "name-pattern", "duplicate", "unknown-key"])
def test_bad_manifests_are_refused_naming_the_file(text, expected):
    with pytest.raises(InvalidRequest, match="manifest m.yaml") as caught:
        parse_manifest(text, "m.yaml")
    assert expected in caught.value.message


def test_run_names_and_failure_message():
    assert child_run_name("nightly", "voice-anna", datetime(2026, 11, 30, tzinfo=timezone.utc)) == \
        "nightly-voice-anna-2026-11-30"
    outcomes = [EntryOutcome(entry="a", status="trained", billing_units=100),
                EntryOutcome(entry="b", status="invalid", message="rank: must be one of 8, 16"),
                EntryOutcome(entry="c", status="skipped-unchanged")]
    assert failed_message(outcomes) == "1 of 3 entries did not train:\n- b: invalid: rank: must be one of 8, 16"


def test_readme_manifest_is_valid():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Batch retraining", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    planned = plan_entries(parse_manifest(text, "README"))
    assert [p.name for p in planned] == ["voice-anna", "smoke-fx"] and all(p.request for p in planned)
    assert planned[0].request.output_url == "s3://studio-loras/nightly/voice-anna"


@pytest.mark.usefixtures("prefect_harness")
def test_batch_without_workers_trains_in_process(sample_zip, tmp_path, monkeypatch):
    """A local run (no deployments): the changed entry trains as a train-lora subflow; the invalid
    one is reported; the state is Failed naming it; a rerun skips the unchanged entry."""
    import flows.train_lora as train_lora_module
    from flows.retrain_batch import retrain_batch

    trainings = []

    def fake_gpu_flow(plan, clips, run_id, cache):
        trainings.append(run_id)
        staging = cache.path(f"runs/{run_id}/gpu")
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "lora.safetensors").write_bytes(b"lora")
        return {"files": {"lora.safetensors": staging / "lora.safetensors"}, "final_loss": 1.0, "steps": 100,
                "previews": []}

    monkeypatch.setattr(train_lora_module, "run_gpu_flow", fake_gpu_flow)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(json.dumps({
        "output_url": str(tmp_path / "loras"),
        "defaults": {"model": "tiny", "number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9"},
        "entries": [{"name": "good", "request": {"training_data_url": str(sample_zip)}},
                    {"name": "bad", "request": {"training_data_url": str(sample_zip), "rank": 12}}]}))
    state = retrain_batch(str(manifest), return_state=True)
    assert state.is_failed() and "bad: invalid: rank" in state.message, state.message
    assert len(trainings) == 1 and (tmp_path / "loras" / "good" / "result.json").is_file()

    state = retrain_batch(str(manifest), return_state=True)
    assert len(trainings) == 1, "unchanged: skipped"
