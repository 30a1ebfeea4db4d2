"""Validation sampler: Euler over the flow-matching schedule, seeded, with the LTX-2 pipeline's
guidance terms and defaults (the diffusers LTX-2 pipeline's `__call__`, Lightricks' IC-LoRA validation):
CFG (video 3, audio 7, against the negative prompt), STG (self-attention skipped in chosen blocks),
modality isolation (3: audio<->video cross-attention switched off) and guidance rescale (0.7).
As in the pipeline, the terms are combined on the predicted clean latents (x0) and the rescale
matches the guided prediction's spread to the conditional one's.

The kept region and both references are conditioned by lib.model.conditioning.build_inputs, the very
code training uses, with the same reference conventions.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from lib.core import precision
from lib.core.settings import SamplerSettings
from lib.model.conditioning import (
    ConditioningSettings,
    Example,
    ModelInputs,
    build_inputs,
    pack_audio,
    pack_video,
    predict,
    unpack_audio,
    unpack_video,
)

__all__ = ["SamplerSettings"]  # re-exported: the settings live in lib.core.settings


def sigma_schedule(scheduler, steps: int, tokens: int) -> torch.Tensor:
    """steps+1 sigmas from 1 to 0, shifted for the sequence length as the pipeline does."""
    if steps < 2:
        raise ValueError("the sampler needs at least 2 steps (1 step divides by zero with shift_terminal)")
    scheduler = copy.deepcopy(scheduler)
    config = scheduler.config
    slope = (config.max_shift - config.base_shift) / (config.max_image_seq_len - config.base_image_seq_len)
    mu = config.base_shift + slope * (tokens - config.base_image_seq_len)
    scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    return scheduler.sigmas.float()


def _pass_arguments(transformer, settings: SamplerSettings) -> dict[str, dict]:
    block = min(settings.stg_block, transformer.config.num_layers - 1)
    return {
        "cond": {},
        "uncond": {},
        "stg": {"spatio_temporal_guidance_blocks": [block]},
        "modality": {"isolate_modalities": True},
    }


def _rescale(guided: torch.Tensor, cond: torch.Tensor, factor: float, rows: torch.Tensor | None) -> torch.Tensor:
    """Pull the guided prediction's std back towards the conditional one's (2305.08891 §3.4)."""
    if factor <= 0:
        return guided
    selected = (lambda t: t[rows]) if rows is not None else (lambda t: t)
    ratio = selected(cond).std() / selected(guided).std().clamp(min=1e-12)
    return factor * guided * ratio + (1 - factor) * guided


def guided_x0(
    transformer,
    cond: ModelInputs,
    uncond: ModelInputs | None,
    settings: SamplerSettings,
    sigma: torch.Tensor,
    video: torch.Tensor,
    audio: torch.Tensor,
):
    """Guided clean-latent predictions (video, audio) at noise level `sigma` from states (video, audio)."""
    arguments = _pass_arguments(transformer, settings)
    x0 = {}
    for name in settings.passes():
        inputs = uncond if name == "uncond" else cond
        video_v, audio_v = predict(transformer, inputs, **arguments[name])
        x0[name] = (video - sigma * video_v, audio - sigma * audio_v)
    scales = {
        "uncond": (settings.video_guidance - 1, settings.audio_guidance - 1),
        "stg": (settings.stg_scale, settings.stg_scale),
        "modality": (settings.modality_scale - 1, settings.modality_scale - 1),
    }
    guided = list(x0["cond"])
    for name, (video_scale, audio_scale) in scales.items():
        if name in x0:
            guided[0] = guided[0] + video_scale * (x0["cond"][0] - x0[name][0])
            guided[1] = guided[1] + audio_scale * (x0["cond"][1] - x0[name][1])
    regenerated = cond.video_mask > 0
    return (
        _rescale(guided[0], x0["cond"][0], settings.guidance_rescale, regenerated),
        _rescale(guided[1], x0["cond"][1], settings.guidance_rescale, None),
    )


@torch.no_grad()
def sample(
    transformer,
    scheduler,
    example: Example,
    negative_text: dict[str, torch.Tensor],
    settings: SamplerSettings,
    *,
    conditioning: ConditioningSettings,
    dtype: torch.dtype | None = None,
    on_step=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the masked video region and the whole target audio for `example`.

    `example.target_video` holds the source's latents (its kept tokens stay clean throughout);
    `example.target_audio` only gives the audio shape. The state is kept in fp32; the model sees
    it in its own `dtype` under autocast. `on_step(done, steps)` is called after each step (progress).
    Returns unbatched fp32 latents (C, F, h, w) and (C, L, M), ready for lib.model.latents.decode_*.
    """
    first = next(transformer.parameters())
    device, dtype = first.device, dtype or first.dtype
    generator = torch.Generator().manual_seed(settings.seed)
    clean_video = pack_video(example.target_video).float()
    video = torch.randn(clean_video.shape, generator=generator).to(device)
    audio = torch.randn(pack_audio(example.target_audio).shape, generator=generator).to(device)
    unconditional = copy.copy(example)
    unconditional.text = negative_text
    sigmas = sigma_schedule(scheduler, settings.steps, len(clean_video)).to(device)
    for done, (sigma, next_sigma) in enumerate(zip(sigmas[:-1], sigmas[1:]), 1):
        state = dict(
            video_sigma=sigma,
            audio_sigma=sigma,
            video_noise=video,
            audio_noise=audio,
            noisy_video=video,
            noisy_audio=audio,
            conditioning=conditioning,
            dtype=dtype,
        )
        cond = build_inputs(transformer, example, **state)
        # The negative-prompt call only when CFG is on: building it is a full input assembly per step.
        uncond = build_inputs(transformer, unconditional, **state) if "uncond" in settings.passes() else None
        with precision.autocast(device, dtype):
            video_x0, audio_x0 = guided_x0(transformer, cond, uncond, settings, sigma, video, audio)
        # Euler on the velocity implied by the guided x0: v = (x_t - x0) / sigma.
        video = video + (next_sigma - sigma) * (video - video_x0) / sigma
        audio = audio + (next_sigma - sigma) * (audio - audio_x0) / sigma
        if on_step is not None:
            on_step(done, settings.steps)
    mask = example.video_mask.reshape(-1, 1).to(device)
    video = torch.where(mask, video, clean_video.to(device))  # kept tokens: exactly the source
    frames, height, width = example.video_mask.shape
    return (
        unpack_video(video.cpu(), (frames, height, width)),
        unpack_audio(audio.cpu(), example.target_audio.shape[0]),
    )
