"""Training runs on the tiny preset, CPU only: resume bit for bit, two-rank DDP, and the latent
cache under a rerun (docs/architecture.md, "Training"); test_training.py has the loss itself."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.core.cache import Cache
from lib.model import latents as latents_module
from lib.model.encoding import encode_clip, latent_key
from lib.train.lora_io import lora_state_dict, read_lora
from lib.train.training import TrainSettings
from lib.train.worker import TrainJob, tensors_digest
from tests.training_fixtures import single_thread, train_fresh, training_data

__all__ = ["single_thread", "training_data"]  # fixtures, imported so pytest finds them here
pytestmark = pytest.mark.usefixtures("single_thread")
PROJECT = Path(__file__).resolve().parents[1]


# --- 5. resume ------------------------------------------------------------------------------


@pytest.mark.slow
def test_resume_from_checkpoint_is_bit_for_bit(training_data, tmp_path):
    # the checkpoint (step 3) falls inside the warmup: resuming must restore the schedule's position
    settings = TrainSettings(rank=8, steps=6, learning_rate=5e-3, seed=3, warmup_steps=4, checkpoint_every=3)
    torch.manual_seed(0)
    full, full_result = train_fresh(training_data, settings, checkpoint_dir=tmp_path / "full")
    assert [Path(p).name for p in full_result.checkpoints] == [
        "checkpoint-000003.safetensors",
        "checkpoint-000006.safetensors",
    ]
    assert sorted(p.name for p in (tmp_path / "full").iterdir()) == [Path(p).name for p in full_result.checkpoints]

    torch.manual_seed(1)  # a different global RNG state: everything must come from the checkpoint
    resumed, resumed_result = train_fresh(
        training_data, settings, checkpoint_dir=tmp_path / "resumed", resume_from=full_result.checkpoints[0]
    )
    assert resumed_result.losses == full_result.losses
    expected, actual = lora_state_dict(full), lora_state_dict(resumed)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert [Path(p).name for p in resumed_result.checkpoints] == ["checkpoint-000006.safetensors"]


# --- 6. DDP ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_cpu_processes_keep_identical_loras(training_data, tmp_path):
    steps = 5
    output = tmp_path / "out"
    from lib.core.config import TrainRequest
    from lib.core.plan import plan_run

    request = TrainRequest(
        training_data_url="unused.zip", model="tiny", rank=8, number_of_steps=100, learning_rate=5e-3
    )
    plan = plan_run(request)
    plan = plan.model_copy(update={"train": dataclasses.replace(plan.train, steps=steps, warmup_steps=0)})
    job = TrainJob(plan=plan, latents=[ref.path for ref in training_data.latents], output_dir=str(output))
    job_file = tmp_path / "job.json"
    job_file.write_text(job.model_dump_json())
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(PROJECT)}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "lib.train.worker",
        str(job_file),
    ]
    completed = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=240)
    assert completed.returncode == 0, completed.stderr[-4000:]

    digests = [(output / f"lora-digest-rank{rank}.txt").read_text() for rank in (0, 1)]
    assert digests[0] == digests[1]
    tensors, _ = read_lora(output / "lora.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}  # the default lora_dtype
    assert tensors_digest(tensors) == digests[0]  # the file is what both ranks hold
    assert len(json.loads((output / "losses.json").read_text())) == steps


# --- 7. latent cache ------------------------------------------------------------------------


class _Encoded(Exception):
    pass


def _refuse_encoding(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise _Encoded("an encoder ran although the latents were cached")

    for name in ("encode_video", "encode_audio", "encode_prompts"):
        monkeypatch.setattr(latents_module, name, refuse)


def test_latent_cache_hit_encodes_nothing(training_data, monkeypatch):
    from lib.model import build_tiny

    _refuse_encoding(monkeypatch)
    components = training_data.components
    for clip, cached in zip(training_data.clips, training_data.latents):
        assert encode_clip(components, clip, Cache.at(training_data.cache_root)) == cached

    other = build_tiny(seed=1)
    assert other.identity != components.identity
    keys = {latent_key(clip, components) for clip in training_data.clips}
    other_keys = {latent_key(clip, other) for clip in training_data.clips}
    assert len(keys) == len(other_keys) == 2 and not keys & other_keys
    with pytest.raises(_Encoded):  # another model's latents are not there yet
        encode_clip(other, training_data.clips[0], Cache.at(training_data.cache_root))


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_flow_rerun_with_other_training_parameters_reuses_latents(training_data, tmp_path, monkeypatch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from flows.train_lora_gpu import train_lora_gpu
    from lib.core.config import TrainRequest
    from lib.core.plan import plan_run

    monkeypatch.setenv("AV2AV_CACHE_DIR", str(training_data.cache_root))  # where the latents already are
    _refuse_encoding(monkeypatch)

    def train_with_rank(rank: int) -> dict[str, str]:
        request = TrainRequest(
            training_data_url="unused.zip",
            model="tiny",
            number_of_frames=17,
            resolution="low",
            aspect_ratio="16:9",
            rank=rank,
            number_of_steps=100,
            output_url=str(tmp_path / f"rank{rank}"),
            reference_downscale=1,
        )
        state = train_lora_gpu(
            plan_run(request), training_data.clips, f"rank{rank}", str(training_data.cache_root), return_state=True
        )
        assert state.is_completed(), state.message
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        return {task_run.name: task_run.state.name for task_run in runs}

    train_with_rank(8)
    second = train_with_rank(16)
    encodes = {name: state for name, state in second.items() if name.startswith("encode-")}
    # Served by the content-addressed latent cache (clip + model identity); the encoders raise if called.
    assert len(encodes) == 2 and set(encodes.values()) == {"Completed"}, second
    tensors, info = read_lora(training_data.cache_root / "runs" / "rank16" / "gpu" / "lora.safetensors")
    assert info["rank"] == 16 and all(t.shape[0] == 16 for k, t in tensors.items() if ".lora_A." in k)
