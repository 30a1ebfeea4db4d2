"""A run whose loss or LoRA stops being finite ends at once as TrainingDiverged: it says at which
step and what to try, keeps the LoRA as it was before the bad step, uploads nothing, bills 0."""

from __future__ import annotations

import pytest
import torch

import flows.train_lora as train_lora_module
from lib.core.errors import TrainingDiverged
from lib.train import training
from lib.train.lora_io import lora_state_dict, save_lora
from lib.train.training import TrainSettings
from tests.test_pipeline import _request
from tests.training_fixtures import SAME_SIZE_ALIGNED, fresh_transformer, single_thread, training_data

__all__ = ["single_thread", "training_data"]


def poison_step(monkeypatch, at_call: int, value: float = float("nan")) -> None:
    """Make the `at_call`-th training step's loss `value` (NaN by default), as a diverged run's."""
    real, calls = training.training_step, []

    def poisoned(*args, **kwargs):
        loss, loss_terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == at_call:
            loss = loss * value
            loss_terms = {**loss_terms, "loss": loss.item()}
        return loss, loss_terms

    monkeypatch.setattr(training, "training_step", poisoned)


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.slow
def test_a_non_finite_loss_stops_training_at_that_step_with_the_lora_untouched(training_data, monkeypatch, value):
    settings = TrainSettings(rank=8, steps=6, learning_rate=2e-3, seed=0)
    healthy, after_step_2 = fresh_transformer(training_data), {}

    def snapshot(event: dict) -> None:
        if event["step"] == 2:
            after_step_2.update({name: tensor.clone() for name, tensor in lora_state_dict(healthy).items()})

    training.fit(healthy, training_data.examples, settings, on_step=snapshot, conditioning=SAME_SIZE_ALIGNED)
    poison_step(monkeypatch, at_call=3, value=value)
    transformer = fresh_transformer(training_data)
    with pytest.raises(TrainingDiverged) as stopped:
        training.fit(transformer, training_data.examples, settings, conditioning=SAME_SIZE_ALIGNED)
    assert stopped.value.message.startswith("Training diverged at step 3 of 6: the loss is ")
    assert "learning_rate (this run: 0.002; 0.0005 is a safe next try)" in stopped.value.message
    assert after_step_2
    for name, tensor in after_step_2.items():
        assert torch.equal(tensor, lora_state_dict(transformer)[name]), name


def test_a_lora_with_non_finite_weights_is_never_saved(training_data, tmp_path):
    from lib.train.lora_io import add_lora

    transformer = fresh_transformer(training_data)
    add_lora(transformer, 8, 0)
    next(p for n, p in transformer.named_parameters() if "lora_B" in n).data.fill_(float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite weights"):
        save_lora(transformer, tmp_path / "lora.safetensors", 8, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_a_diverged_run_ends_named_uploads_nothing_and_bills_zero(sample_zip, tmp_path, monkeypatch):
    poison_step(monkeypatch, at_call=4)
    out = tmp_path / "out"
    state = train_lora_module.train_lora(_request(sample_zip, out, []), return_state=True)
    assert state.is_failed() and state.name == "TrainingDiverged", (state.name, state.message)
    assert state.message.startswith("Training diverged at step 4 of 100")
    assert not out.exists() or not any(out.iterdir())
