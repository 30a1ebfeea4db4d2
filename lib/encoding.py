"""Latent pre-encoding, cached on disk by content (DESIGN §5, "Latents").

One `.safetensors` per conformed clip under `<cache>/latents/<key>/`, key = hash of the conformed
clip's content key + the model identity + the encoder settings. A rerun with other training
parameters finds every file and encodes nothing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lib import latents
from lib.conditioning import Example
from lib.conform import clip_metadata
from lib.model import Components, model_spec
from lib.storage import FileRef, atomic_file

ENCODER_VERSION = "1"  # bump when encoded bytes change for the same clip and model
TEXT_KEYS = ("encoder_hidden_states", "audio_encoder_hidden_states", "encoder_attention_mask")


def latent_mask(mask: np.ndarray, temporal: int = 8, spatial: int = 32) -> torch.Tensor:
    """bool (N, H, W) pixels -> bool (1 + (N-1)/temporal, H/spatial, W/spatial) tokens.

    A token is regenerated if any of its pixels is: frame 0 alone, then groups of `temporal`
    frames (the video VAE's causal layout), and `spatial` x `spatial` cells.
    """
    pixels = torch.from_numpy(np.ascontiguousarray(mask)).float()
    first = pixels[:1]
    rest = pixels[1:].reshape(-1, temporal, *pixels.shape[1:]).amax(dim=1)
    grouped = torch.cat([first, rest])[None]  # (1, F, H, W)
    return torch.nn.functional.max_pool2d(grouped, spatial)[0] > 0


def latent_key(clip: FileRef, components: Components) -> str:
    identity = {"clip": clip.sha256, "model": components.identity, "encoder": ENCODER_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def encode_clip(components: Components, clip: FileRef, cache_root: Path) -> FileRef:
    """Encode one conformed clip (unless cached) and return its latents file."""
    key = latent_key(clip, components)
    path = cache_root / "latents" / key / "latents.safetensors"
    if path.is_file():
        return FileRef(path=str(path), sha256=key, size=path.stat().st_size)
    tensors = _encode(components, clip.path)
    metadata = {k: v for k, v in clip_metadata(clip.path).items() if k in ("name", "caption", "frame_rate")}
    with atomic_file(path) as partial:
        save_file({k: v.contiguous() for k, v in tensors.items()}, partial, metadata=metadata)
    return FileRef(path=str(path), sha256=key, size=path.stat().st_size)


def _encode(components: Components, clip_path: str) -> dict[str, torch.Tensor]:
    from safetensors.numpy import load_file as load_numpy

    clip = load_numpy(clip_path)
    spec = model_spec(components)
    caption = clip_metadata(clip_path).get("caption", "")
    text = latents.encode_prompts(components, [caption])
    return {
        "target_video": latents.encode_video(components, clip["target"]),
        "reference_video": latents.encode_video(components, clip["reference"]),
        "target_audio": latents.encode_audio(components, clip["target_audio"]),
        "reference_audio": latents.encode_audio(components, clip["reference_audio"]),
        "video_mask": latent_mask(clip["mask"], spec["temporal_compression"], spec["spatial_compression"]),
        **{name: text[name][0] for name in TEXT_KEYS},
    }


def load_example(path: str | Path) -> Example:
    tensors = load_file(str(path))
    metadata = clip_metadata(str(path))
    return Example(
        target_video=tensors["target_video"], reference_video=tensors["reference_video"],
        target_audio=tensors["target_audio"], reference_audio=tensors["reference_audio"],
        video_mask=tensors["video_mask"], frame_rate=float(metadata.get("frame_rate", 24)),
        text={name: tensors[name][None] for name in TEXT_KEYS})
