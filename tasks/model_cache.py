"""One model per worker process: encode, train and validate share it (loaded once)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=2)
def components(model: str, source: str | None = None):
    from lib.model import load_model

    return load_model(model, source=source)


def forget() -> None:
    """Drop the cached model (training mutates it: a LoRA is attached)."""
    components.cache_clear()
