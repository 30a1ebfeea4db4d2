"""One model per worker process: encode, train and validate share it (loaded once).

Mapped tasks run in threads, so loading is serialized: two threads must not build the model
twice (or race diffusers' lazy imports).
"""

from __future__ import annotations

import threading

_lock = threading.Lock()
_loaded: dict[tuple[str, str | None, str | None, str], object] = {}


def components(
    model: str, source: str | None = None, text_encoder_source: str | None = None, base_precision: str = "bf16"
):
    """The model, opened with no part loaded: each stage acquires the parts it needs and releases
    them (lib.model.lifetime); its ledger records what was resident when."""
    with _lock:
        key = (model, source, text_encoder_source, base_precision)
        if key not in _loaded:
            from lib.model import open_model

            _loaded[key] = open_model(
                model, source=source, text_encoder_source=text_encoder_source, base_precision=base_precision
            )
        return _loaded[key]


def for_plan(plan):
    """The components a run plan names (its model, weights source, text encoder source, precision):
    a training run's RunPlan or a generation's GeneratePlan."""
    return components(plan.model, plan.model_source, plan.text_encoder_source, plan.base_precision)


def forget() -> None:
    """Drop cached models (training mutates them: a LoRA is attached)."""
    with _lock:
        _loaded.clear()
