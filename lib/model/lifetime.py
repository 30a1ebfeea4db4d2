"""Which parts of the model are on the device, and for how long.

At real size the parts do not fit together on a 24–32 GB card (text encoder 24 GB in bf16,
transformer 38 GB), and no stage needs them all: captions and prompts need the text encoder and
connectors, clips the two VAEs, training the transformer alone, validation the transformer plus
the decoders. So a part is loaded when a stage asks for it (`acquire`) and dropped when a stage
is done (`release`: the module is freed and the CUDA cache emptied). `model_spec` and the cache
identity are computed when the model is opened, so they never need a released part.

The `Ledger` records every load, release and encode with its bytes and time; tests and the
memory plan read it. `exclusive` serializes encodes per device: Prefect maps tasks onto threads,
and two VAE encodes at once on one GPU would double the activation peak for nothing.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from lib.core.progress import announce
from lib.model.parts import MODULE_NAMES
from lib.model.quantize import module_bytes

TEXT_PARTS = ("text_encoder", "connectors")
MEDIA_ENCODE_PARTS = ("vae", "audio_vae")
DECODE_PARTS = ("vae", "audio_vae", "vocoder")
# What each stage of a training run keeps resident (lib/train/memory_plan.py plans each).
STAGE_PARTS = {
    "text": TEXT_PARTS,
    "encode": MEDIA_ENCODE_PARTS,
    "train": ("transformer",),
    "validate": ("transformer", *DECODE_PARTS),
}
_device_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@dataclass
class Ledger:
    """What happened to the model's parts, in order: (seconds, event, part, bytes)."""

    events: list[tuple[float, str, str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, event: str, part: str, size: int = 0) -> None:
        with self._lock:
            self.events.append((time.perf_counter(), event, part, size))

    def spans(self, kind: str) -> list[tuple[float, float]]:
        """(start, end) of every `<kind>-start` / `<kind>-end` pair, in start order."""
        starts, spans = {}, []
        for moment, event, part, _ in self.events:
            if event == f"{kind}-start":
                starts[part] = moment
            elif event == f"{kind}-end" and part in starts:
                spans.append((starts.pop(part), moment))
        return sorted(spans)


def resident(components) -> dict[str, int]:
    """Bytes of every part now loaded (a released part is None)."""
    return {name: module_bytes(part) for name in MODULE_NAMES if (part := getattr(components, name)) is not None}


def acquire(components, *names: str):
    """Load the named parts that are not resident; returns `components` for chaining."""
    for name in names:
        if getattr(components, name) is None:
            if components.loader is None:
                raise RuntimeError(f"the model's {name} was released and this model cannot reload it")
            began = time.perf_counter()
            announce(f"loading the model's {name} ...")
            module = components.loader(name)
            setattr(components, name, module)
            components.ledger.record("load", name, module_bytes(module))
            announce(
                f"loaded the model's {name}: {_size(module_bytes(module))} on {components.device} "
                f"in {time.perf_counter() - began:.0f} s"
            )
    return components


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def release(components, *names: str) -> None:
    """Drop the named parts (a part without a loader to bring it back is kept)."""
    dropped = False
    for name in names:
        part = getattr(components, name)
        if part is not None and components.loader is not None:
            size = module_bytes(part)
            setattr(components, name, None)
            components.ledger.record("release", name, size)
            dropped = True
    if dropped:
        free_device_memory(components.device)


def keep_only(components, *names: str):
    """Release every part but `names`, then load `names`: the residency a stage wants."""
    release(components, *(name for name in MODULE_NAMES if name not in names))
    return acquire(components, *names)


def free_device_memory(device: torch.device | str | None = None) -> None:
    """Collect garbage and return cached CUDA blocks, so another process (a torchrun rank) or the
    next part finds the memory free."""
    gc.collect()
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.empty_cache()


@contextmanager
def exclusive(components, what: str):
    """One encode at a time per device; the ledger records its span as `encode-start/-end`."""
    with _device_locks[str(components.device)]:
        components.ledger.record("encode-start", what)
        try:
            yield
        finally:
            components.ledger.record("encode-end", what)
