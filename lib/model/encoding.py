"""Latent pre-encoding, cached on disk by content (docs/architecture.md, "Formats").

One `.safetensors` per conformed clip under `<cache>/latents/<key>/`, key = hash of the conformed
clip's content key + the model identity + the encoder settings. A rerun with other training
parameters finds every file and encodes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from lib.core.cache import Cache, content_key
from lib.core.clip import clip_metadata, load_clip
from lib.core.storage import FileRef
from lib.media.masks import token_mask
from lib.model import latents
from lib.model.components import Components, model_spec
from lib.model.conditioning import Example
from lib.model.lifetime import MEDIA_ENCODE_PARTS, TEXT_PARTS, acquire, exclusive

# Explicit code version (lib.core.cache.content_key): bump when the encoded bytes change for the same clip and model.
ENCODER_VERSION = "4"
TEXT_KEYS = ("encoder_hidden_states", "audio_encoder_hidden_states", "encoder_attention_mask")


def latent_mask(mask: np.ndarray, temporal: int = 8, spatial: int = 32) -> torch.Tensor:
    """bool (N, H, W) pixels -> bool latent tokens, 1 = regenerated (lib.media.masks.token_mask)."""
    return torch.from_numpy(token_mask(np.asarray(mask, dtype=bool), temporal, spatial))


def reference_size(height: int, width: int, downscale: int, multiple: int = 32) -> tuple[int, int]:
    """Pixel size the reference video is encoded at: exactly 1/downscale of the bucket (768x768 ->
    384x384), so its positions are the target's scaled by the integer factor, as Lightricks' code
    has it. The request never plans an inexact one (TrainRequest.reference_downscale_factor)."""
    if height % (downscale * multiple) or width % (downscale * multiple):
        raise ValueError(
            f"a {width}x{height} clip has no exact 1/{downscale} reference on the VAE's {multiple}-px grid"
        )
    return height // downscale, width // downscale


def downscale_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, height, width, 3) uint8, antialiased (area-like) bilinear."""
    if frames.shape[1:3] == (height, width):
        return frames
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True)
    return resized.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def latent_key(clip: FileRef, components: Components, reference_downscale: int = 1) -> str:
    return content_key(
        "latents", ENCODER_VERSION, clip=clip.sha256, model=components.identity, reference_downscale=reference_downscale
    )


def latents_entry(clip: FileRef, components: Components, reference_downscale: int = 1) -> str:
    return f"latents/{latent_key(clip, components, reference_downscale)}/latents.safetensors"


def prompt_entry(prompt: str, components: Components) -> str:
    key = content_key("prompt", ENCODER_VERSION, prompt=prompt, model=components.identity)
    return f"prompts/{key}/text.safetensors"


def encode_prompt(components: Components, prompt: str, cache: Cache) -> FileRef:
    """The transformer's text inputs for `prompt` (a caption or the negative prompt), cached by
    content like latents, so the text encoder is loaded only for prompts never seen before."""
    entry = prompt_entry(prompt, components)
    key = entry.split("/")[1]
    if not cache.sync(entry):
        with exclusive(components, f"prompt-{key}"):
            text = latents.encode_prompts(acquire(components, *TEXT_PARTS), [prompt])
        with cache.writing(entry) as partial:
            save_file({name: text[name][0].contiguous() for name in TEXT_KEYS}, partial)
    return cache.ref(entry, key)


def load_prompt(path: str | Path) -> dict[str, torch.Tensor]:
    """`encode_prompt`'s file -> the text inputs, batch first (1, T, D)."""
    return {name: tensor[None] for name, tensor in load_file(str(path)).items()}


def encode_captions(components: Components, clips: list[FileRef], cache: Cache, reference_downscale: int = 1) -> int:
    """Encode the captions of clips whose latents are not cached yet; returns how many clips that was.
    Run before `encode_clip`, it lets the text encoder be released before the VAEs are loaded."""
    pending = [clip for clip in clips if not cache.sync(latents_entry(clip, components, reference_downscale))]
    for clip in pending:
        encode_prompt(components, clip_metadata(str(cache.open(clip))).get("caption", ""), cache)
    return len(pending)


def encode_clip(components: Components, clip: FileRef, cache: Cache, reference_downscale: int = 1) -> FileRef:
    """Encode one conformed clip (unless its latents are in the cache, here or at the location) and
    return its latents file. The clip is read through the cache: this worker need not have made it."""
    key = latent_key(clip, components, reference_downscale)
    entry = latents_entry(clip, components, reference_downscale)
    if cache.sync(entry):
        return cache.ref(entry, key)
    clip_path = str(cache.open(clip))
    metadata = clip_metadata(clip_path)
    text = load_prompt(cache.open(encode_prompt(components, metadata.get("caption", ""), cache)))
    with exclusive(components, f"clip-{key}"):
        tensors = _encode(acquire(components, *MEDIA_ENCODE_PARTS), clip_path, reference_downscale)
    tensors |= {name: text[name][0] for name in TEXT_KEYS}
    with cache.writing(entry) as partial:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            partial,
            metadata={k: v for k, v in metadata.items() if k in ("name", "caption", "frame_rate")},
        )
    return cache.ref(entry, key)


def _encode(components: Components, clip_path: str, reference_downscale: int) -> dict[str, torch.Tensor]:
    clip = load_clip(clip_path)
    spec = model_spec(components)
    _, height, width, _ = clip["reference"].shape
    reference = downscale_frames(
        clip["reference"], *reference_size(height, width, reference_downscale, spec["spatial_compression"])
    )
    return {
        "target_video": latents.encode_video(components, clip["target"]),
        "reference_video": latents.encode_video(components, reference),
        "target_audio": latents.encode_audio(components, clip["target_audio"]),
        "reference_audio": latents.encode_audio(components, clip["reference_audio"]),
        "video_mask": latent_mask(clip["mask"], spec["temporal_compression"], spec["spatial_compression"]),
    }


def load_example(path: str | Path) -> Example:
    tensors = load_file(str(path))
    metadata = clip_metadata(str(path))
    return Example(
        target_video=tensors["target_video"],
        reference_video=tensors["reference_video"],
        target_audio=tensors["target_audio"],
        reference_audio=tensors["reference_audio"],
        video_mask=tensors["video_mask"],
        frame_rate=float(metadata.get("frame_rate", 24)),
        text={name: tensors[name][None] for name in TEXT_KEYS},
    )
