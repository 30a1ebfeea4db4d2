"""The conformed clip: the one file format between the CPU side, which writes it (lib.ingest),
and the GPU side, which encodes it (lib.model.encoding) and renders validation panels from it
(lib.validate). One `.safetensors` per triplet or validation sample:

- `target`, `reference`: uint8 (N, H, W, 3) frames at the bucket size;
- `mask`: bool (N, H, W), True = regenerate;
- `target_audio`, `reference_audio`: float32 (2, S) at 16 kHz;
- metadata (strings): name, caption, frame_rate, sample_rate.
"""

from __future__ import annotations

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from lib.core.cache import Cache
from lib.core.storage import FileRef

CLIP_ARRAYS = ("target", "reference", "mask", "target_audio", "reference_audio")


def save_clip(cache: Cache, entry: str, arrays: dict[str, np.ndarray], metadata: dict[str, str], key: str) -> FileRef:
    """Write atomically, then publish to the cache location. The ref's hash is the content key
    (inputs + recipe): it names these bytes as well as their sha256 would, without reading them back."""
    missing = set(CLIP_ARRAYS) - set(arrays)
    if missing:
        raise ValueError(f"a conformed clip needs {sorted(missing)} too")
    with cache.writing(entry) as partial:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, partial, metadata=metadata)
    return cache.ref(entry, key)


def load_clip(path: str) -> dict[str, np.ndarray]:
    """The clip's arrays, by the names above."""
    return load_file(str(path))


def clip_metadata(path: str) -> dict[str, str]:
    """The string metadata stored with a conformed clip (name, caption, frame_rate, sample_rate)."""
    with safe_open(str(path), framework="np") as handle:
        return handle.metadata() or {}
