"""Batch manifests: defaults under every entry, a per-entry output folder, each entry validated on
its own, and refusals that name the manifest and the rule."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from lib.core.batch import EntryOutcome, child_run_name, failed_message, parse_manifest, resolve_entries
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
    resolved = {p.name: p for p in resolve_entries(parse_manifest(MANIFEST, "manifest.yaml"))}
    anna, smoke = resolved["voice-anna"].request, resolved["smoke-fx"].request
    assert (anna.rank, anna.number_of_steps, anna.trigger_phrase) == (16, 500, "repl4ce")
    assert anna.output_url == "s3://studio/nightly/voice-anna"
    assert smoke.rank == 64 and smoke.output_url == "s3://other/smoke"  # its own fields win
    assert resolved["broken"].request is None and "rank" in resolved["broken"].problem


def test_json_manifest_is_read_too():
    text = json.dumps({"entries": [{"name": "a", "request": {"training_data_url": "a.zip"}}]})
    [entry] = resolve_entries(parse_manifest(text, "m.json"))
    assert entry.request.training_data_url == "a.zip" and entry.request.output_url == ""


@pytest.mark.parametrize(
    "text, expected",
    [
        ("entries: [", "not valid YAML or JSON"),
        ("entries: []", "entries"),
        ("entries: [{name: 'bad name!', request: {}}]", "name"),
        ("entries: [{name: a}, {name: a}]", "repeated: a"),
        ("entries: [{name: a}]\nextra: 1", "extra"),
    ],
    ids=["syntax", "empty", "name-pattern", "duplicate", "unknown-key"],
)
def test_bad_manifests_are_refused_naming_the_file(text, expected):
    with pytest.raises(InvalidRequest, match="manifest m.yaml") as caught:
        parse_manifest(text, "m.yaml")
    assert expected in caught.value.message


def test_run_names_and_failure_message():
    assert (
        child_run_name("nightly", "voice-anna", datetime(2026, 11, 30, tzinfo=timezone.utc))
        == "nightly-voice-anna-2026-11-30"
    )
    outcomes = [
        EntryOutcome(entry="a", status="trained", billing_units=100),
        EntryOutcome(entry="b", status="invalid", message="rank: must be one of 8, 16"),
        EntryOutcome(entry="c", status="skipped-unchanged"),
    ]
    assert failed_message(outcomes) == "1 of 3 entries did not train:\n- b: invalid: rank: must be one of 8, 16"


def test_readme_manifest_is_valid():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Batch retraining", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    resolved = resolve_entries(parse_manifest(text, "README"))
    assert [p.name for p in resolved] == ["voice-anna", "smoke-fx"] and all(p.request for p in resolved)
    assert resolved[0].request.output_url == "s3://studio-loras/nightly/voice-anna"


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_batch_without_workers_trains_in_process(sample_zip, tmp_path, monkeypatch):
    """A local run (no deployments): the changed entry trains as a train-lora subflow; the invalid
    one is reported; the state is Failed naming it; a rerun skips the unchanged entry."""
    import flows.train_lora as train_lora_module
    from flows.retrain_batch import retrain_batch
    from lib.core.handback import TrainingGpuResult
    from lib.core.storage import FileRef

    trainings = []

    def fake_gpu_flow(plan, clips, run_id, cache):
        trainings.append(run_id)
        staging = cache.path(f"runs/{run_id}/gpu")
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "lora.safetensors").write_bytes(b"lora")
        return TrainingGpuResult(
            files={"lora.safetensors": FileRef.of(staging / "lora.safetensors")}, final_loss=1.0, steps=100
        )

    monkeypatch.setattr(train_lora_module, "run_gpu_flow", fake_gpu_flow)
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(
        json.dumps(
            {
                "output_url": str(tmp_path / "loras"),
                "defaults": {"model": "tiny", "number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9"},
                "entries": [
                    {"name": "good", "request": {"training_data_url": str(sample_zip)}},
                    {"name": "bad", "request": {"training_data_url": str(sample_zip), "rank": 12}},
                ],
            }
        )
    )
    state = retrain_batch(str(manifest), return_state=True)
    assert state.is_failed() and "bad: invalid: rank" in state.message, state.message
    assert len(trainings) == 1 and (tmp_path / "loras" / "good" / "result.json").is_file()

    state = retrain_batch(str(manifest), return_state=True)
    assert len(trainings) == 1, "unchanged: skipped"


def test_child_lines_keep_the_whole_message():
    from lib.core.batch import child_ended, child_started, still_running

    assert (
        child_started("voice-anna", "nightly-voice-anna-2026-12-03")
        == "voice-anna: train-lora run nightly-voice-anna-2026-12-03 started"
    )
    assert child_ended("a", "n-a", "Completed", True, 252.0) == "a: train-lora run n-a Completed in 4.2 min"
    assert (
        child_ended("a", "n-a", "InvalidDataset", False, 3.0, "0 of 4 triplets usable.\nclip1: no audio")
        == "a: train-lora run n-a InvalidDataset: 0 of 4 triplets usable. clip1: no audio"
    )
    assert (
        still_running({"a": "n-a", "b": "n-b"}, 90.0)
        == "2 train-lora run(s) still running after 1.5 min: a (n-a), b (n-b)"
    )


def _batch_logs_and_summary(run_id, last_line: str):
    """The batch run's log messages (they reach the server in batches: wait for its last line) and its
    batch-summary rows by entry."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 20
        while True:
            logs = [
                log.message
                for log in client.read_logs(
                    log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200
                )
            ]
            if any(line.startswith(last_line) for line in logs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        [artifact] = [
            a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
            if a.key == "batch-summary"
        ]
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    return logs, {row["entry"]: row for row in rows}


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_batch_logs_children_live_and_its_summary_points_at_real_outputs(sample_zip, tmp_path, monkeypatch):
    """Each child's start and end (with its whole failure message) and the still-running line are
    logged on the batch run; a skipped entry's output is where its last successful run wrote it,
    even when the manifest's output_url has moved since."""
    import time

    import flows.retrain_batch as batch_module
    import flows.train_lora as train_lora_module
    from lib.core.errors import TrainingDiverged
    from lib.core.handback import TrainingGpuResult
    from lib.core.storage import FileRef

    def fake_gpu_flow(plan, clips, run_id, cache):
        time.sleep(1.0)  # long enough for a few still-running lines
        if plan.train.rank == 64:
            raise TrainingDiverged("The loss became NaN at step 3.\nTry learning_rate 5e-5.")
        staging = cache.path(f"runs/{run_id}/gpu")
        staging.mkdir(parents=True, exist_ok=True)
        (staging / "lora.safetensors").write_bytes(b"lora")
        return TrainingGpuResult(
            files={"lora.safetensors": FileRef.of(staging / "lora.safetensors")}, final_loss=1.0, steps=100
        )

    monkeypatch.setattr(train_lora_module, "run_gpu_flow", fake_gpu_flow)
    monkeypatch.setattr(batch_module, "PROGRESS_EVERY_S", 0.3)
    manifest = tmp_path / "manifest.yaml"

    def run(output_url: str):
        manifest.write_text(
            json.dumps(
                {
                    "output_url": output_url,
                    "defaults": {"model": "tiny", "number_of_frames": 9, "resolution": "low", "aspect_ratio": "16:9"},
                    "entries": [
                        {"name": "live", "request": {"training_data_url": str(sample_zip), "rank": 8}},
                        {"name": "nan", "request": {"training_data_url": str(sample_zip), "rank": 64}},
                    ],
                }
            )
        )
        state = batch_module.retrain_batch(str(manifest), run_name_prefix="t", return_state=True)
        return (state, *_batch_logs_and_summary(state.state_details.flow_run_id, "nan: failed"))

    state, logs, rows = run(str(tmp_path / "first"))
    today = child_run_name("t", "x")[len("t-x-") :]
    assert state.is_failed()
    assert f"live: train-lora run t-live-{today} started" in logs, logs
    assert any(line.startswith(f"live: train-lora run t-live-{today} Completed in ") for line in logs), logs
    assert (
        f"nan: train-lora run t-nan-{today} TrainingDiverged: The loss became NaN at step 3. "
        "Try learning_rate 5e-5." in logs
    ), logs
    assert any("still running" in line and "live (t-live-" in line for line in logs), logs
    assert rows["nan"]["message"].endswith("Try learning_rate 5e-5."), rows["nan"]  # not cut at the first line
    assert rows["live"]["output"] == str(tmp_path / "first" / "live")

    state, logs, rows = run(str(tmp_path / "moved"))  # output_url does not shape the LoRA: unchanged
    assert rows["live"]["status"] == "skipped-unchanged"
    assert rows["live"]["output"] == str(tmp_path / "first" / "live"), rows["live"]
    assert (tmp_path / "first" / "live" / "result.json").is_file()
