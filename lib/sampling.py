"""Validation sampler (DESIGN §6): Euler over the flow-matching schedule, seeded, with CFG for
video and audio (negative prompt) and STG (an extra pass with self-attention skipped in chosen
blocks). The kept region and both references are conditioned by lib.conditioning.build_inputs,
the very code training uses.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch

from lib.conditioning import Example, ModelInputs, build_inputs, pack_audio, pack_video, unpack_audio, unpack_video

VIDEO_GUIDANCE = 3.0   # the LTX-2 pipeline's defaults
AUDIO_GUIDANCE = 7.0
STG_BLOCK = 28         # the pipeline's default; clamped to the model's depth


@dataclass(frozen=True)
class SamplerSettings:
    steps: int = 30
    seed: int = 0
    stg_scale: float = 1.0
    video_guidance: float = VIDEO_GUIDANCE
    audio_guidance: float = AUDIO_GUIDANCE


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


def stg_blocks(transformer) -> list[int]:
    return [min(STG_BLOCK, transformer.config.num_layers - 1)]


def _velocity(transformer, inputs: ModelInputs, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    video, audio = transformer(**inputs.kwargs, **extra)
    return video[0, : inputs.video_tokens].float(), audio[0, : inputs.audio_tokens].float()


def guided_velocity(transformer, cond: ModelInputs, uncond: ModelInputs, settings: SamplerSettings):
    """cond + (g - 1)(cond - uncond) + stg (cond - perturbed), per modality."""
    video, audio = _velocity(transformer, cond)
    video_uncond, audio_uncond = _velocity(transformer, uncond)
    guided_video = video + (settings.video_guidance - 1) * (video - video_uncond)
    guided_audio = audio + (settings.audio_guidance - 1) * (audio - audio_uncond)
    if settings.stg_scale > 0:
        video_stg, audio_stg = _velocity(transformer, cond, spatio_temporal_guidance_blocks=stg_blocks(transformer))
        guided_video = guided_video + settings.stg_scale * (video - video_stg)
        guided_audio = guided_audio + settings.stg_scale * (audio - audio_stg)
    return guided_video, guided_audio


@torch.no_grad()
def sample(transformer, scheduler, example: Example, negative_text: dict[str, torch.Tensor],
           settings: SamplerSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """Generate the masked video region and the whole target audio for `example`.

    `example.target_video` holds the source's latents (its kept tokens stay clean throughout);
    `example.target_audio` only gives the audio shape. Returns unbatched latents
    (C, F, h, w) and (C, L, M), ready for lib.latents.decode_*.
    """
    device = next(transformer.parameters()).device
    generator = torch.Generator().manual_seed(settings.seed)
    clean_video = pack_video(example.target_video)
    video = torch.randn(clean_video.shape, generator=generator).to(device)
    audio = torch.randn(pack_audio(example.target_audio).shape, generator=generator).to(device)
    unconditional = copy.copy(example)
    unconditional.text = negative_text
    sigmas = sigma_schedule(scheduler, settings.steps, len(clean_video)).to(device)
    for sigma, next_sigma in zip(sigmas[:-1], sigmas[1:]):
        state = dict(video_sigma=sigma, audio_sigma=sigma, video_noise=video, audio_noise=audio,
                     noisy_video=video, noisy_audio=audio)
        cond = build_inputs(transformer, example, **state)
        uncond = build_inputs(transformer, unconditional, **state)
        video_velocity, audio_velocity = guided_velocity(transformer, cond, uncond, settings)
        video = video + (next_sigma - sigma) * video_velocity
        audio = audio + (next_sigma - sigma) * audio_velocity
    mask = example.video_mask.reshape(-1, 1).to(device)
    video = torch.where(mask, video, clean_video.to(device))  # kept tokens: exactly the source
    frames, height, width = example.video_mask.shape
    return (unpack_video(video.cpu(), (frames, height, width)),
            unpack_audio(audio.cpu(), example.target_audio.shape[0]))
