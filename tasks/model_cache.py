"""One model per worker process: encode, train and validate share it (loaded once).

Mapped tasks run in threads, so loading is serialized: two threads must not build the model
twice (or race diffusers' lazy imports).
"""
from __future__ import annotations

import threading

_lock = threading.Lock()
_loaded: dict[tuple[str, str | None, str | None], object] = {}


def components(model: str, source: str | None = None, text_encoder_source: str | None = None):
    with _lock:
        key = (model, source, text_encoder_source)
        if key not in _loaded:
            from lib.model import load_model

            _loaded[key] = load_model(model, source=source, text_encoder_source=text_encoder_source)
        return _loaded[key]


def for_plan(plan):
    """The components a run plan names (its model, weights source and text encoder source)."""
    return components(plan.model, plan.model_source, plan.text_encoder_source)


def forget() -> None:
    """Drop cached models (training mutates them: a LoRA is attached)."""
    with _lock:
        _loaded.clear()
