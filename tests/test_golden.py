"""Golden values for the tiny preset: a numeric drift after a torch, diffusers or peft upgrade (or
an unintended change here) fails these even when every behavioural test still passes.

After an intended change, refresh them with
    AV2AV_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_golden.py
and commit tests/golden.json with the change that moved them.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pytest

from lib.train.training import TrainSettings, fit
from tests.training_fixtures import SAME_SIZE_ALIGNED, single_thread, training_data

__all__ = ["single_thread", "training_data"]
pytestmark = pytest.mark.usefixtures("single_thread")
GOLDEN = Path(__file__).with_name("golden.json")
UPDATE = os.environ.get("AV2AV_UPDATE_GOLDEN") == "1"


def _check(name: str, values: list[float], rtol: float) -> None:
    stored = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if UPDATE:
        GOLDEN.write_text(json.dumps({**stored, name: values}, indent=2, sort_keys=True) + "\n")
        return
    assert name in stored, f"no golden values for {name}: run with AV2AV_UPDATE_GOLDEN=1 (see this file's docstring)"
    assert values == pytest.approx(stored[name], rel=rtol, abs=1e-6), (name, values, stored[name])


@pytest.mark.slow
def test_seeded_training_losses(training_data):
    transformer = copy.deepcopy(training_data.components.transformer)
    settings = TrainSettings(rank=8, steps=8, learning_rate=1e-2, seed=0, warmup_steps=2)
    result = fit(transformer, training_data.examples, settings, conditioning=SAME_SIZE_ALIGNED)
    _check("training_losses_rank8_8steps", result.losses, rtol=1e-4)


def test_sampler_output(training_data):
    from lib.model.latents import encode_prompts
    from lib.validate.sampling import SamplerSettings, sample

    components = training_data.components
    negative = encode_prompts(components, ["worst quality"])
    video, audio = sample(
        components.transformer,
        components.scheduler,
        training_data.examples[0],
        negative,
        SamplerSettings(steps=3, seed=0),
        conditioning=SAME_SIZE_ALIGNED,
    )
    summary = [
        video.double().sum().item(),
        video.double().abs().sum().item(),
        audio.double().sum().item(),
        audio.double().abs().sum().item(),
    ]
    _check("sampler_3steps_sums", summary, rtol=1e-4)
