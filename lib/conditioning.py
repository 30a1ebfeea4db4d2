"""In-context conditioning (DESIGN §5), shared by training and validation sampling.

One example becomes one transformer call:
- video tokens = [target (noised where mask = 1, clean with timestep 0 where mask = 0) |
  reference (clean, timestep 0)], the reference at the *same* positions as the target;
- audio tokens = [target (noised) | reference (clean, timestep 0)], the reference placed on the
  time axis *before* the target, ending REFERENCE_AUDIO_GAP_S before 0, so the two never share
  a position.
Loss (training) is on regenerated video tokens and target audio tokens only.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TIMESTEP_SCALE = 1000.0        # the transformer's timesteps and sigma are on 0..1000
REFERENCE_AUDIO_GAP_S = 0.04   # gap between the reference audio's end and the target's start
REFERENCE_AUDIO_PLACEMENT = {"placement": "before_target", "gap_s": REFERENCE_AUDIO_GAP_S}


@dataclass
class Example:
    """Latents of one triplet, unbatched, as cached (see lib/encoding.py)."""

    target_video: torch.Tensor      # (C, F, h, w) normalized
    reference_video: torch.Tensor   # (C, F, h, w)
    target_audio: torch.Tensor      # (Ca, L, M)
    reference_audio: torch.Tensor   # (Ca, L, M)
    video_mask: torch.Tensor        # (F, h, w) bool, True = regenerate
    text: dict[str, torch.Tensor]   # encoder_hidden_states, audio_encoder_hidden_states, encoder_attention_mask (1, T, ·)
    frame_rate: float


def pack_video(latents: torch.Tensor) -> torch.Tensor:
    """(C, F, h, w) -> (F*h*w, C) tokens, frame-major then rows then columns (the rope's order)."""
    return latents.flatten(1).transpose(0, 1)


def unpack_video(tokens: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    frames, height, width = shape
    return tokens.transpose(0, 1).reshape(-1, frames, height, width)


def pack_audio(latents: torch.Tensor) -> torch.Tensor:
    """(C, L, M) -> (L, C*M): feature index c*M + m, as the pipeline packs audio latents."""
    return latents.permute(1, 0, 2).flatten(1)


def unpack_audio(tokens: torch.Tensor, channels: int) -> torch.Tensor:
    return tokens.reshape(tokens.shape[0], channels, -1).permute(1, 0, 2)


@dataclass
class ModelInputs:
    """Keyword arguments for one transformer call, plus what the loss needs."""

    kwargs: dict
    video_tokens: int              # the target's video tokens come first in the output
    audio_tokens: int
    video_mask: torch.Tensor       # (Nv,) float, 1 = regenerated (in the loss), 0 = kept
    video_velocity: torch.Tensor   # (Nv, C) flow-matching target eps - x0
    audio_velocity: torch.Tensor   # (La, D)


def reference_audio_coords(transformer, length: int, device) -> torch.Tensor:
    """Coordinates of `length` reference audio latents, shifted to end GAP seconds before 0.

    Built by hand: prepare_audio_coords clamps negative shifts to 0.
    """
    coords = transformer.audio_rope.prepare_audio_coords(1, length, device)
    return coords - (coords[..., -1:, 1:2] + REFERENCE_AUDIO_GAP_S)


def build_inputs(transformer, example: Example, video_sigma: torch.Tensor, audio_sigma: torch.Tensor,
                 video_noise: torch.Tensor, audio_noise: torch.Tensor,
                 noisy_video: torch.Tensor | None = None, noisy_audio: torch.Tensor | None = None) -> ModelInputs:
    """Assemble the transformer call for one example at noise levels (video_sigma, audio_sigma) in [0, 1].

    Training passes clean latents + noise; the sampler passes its current `noisy_*` tokens instead
    (kept video tokens are always reset to the clean target, as in training).
    """
    device = video_noise.device
    frames, height, width = example.video_mask.shape
    mask = example.video_mask.reshape(-1).to(device=device, dtype=video_noise.dtype)
    clean_video = pack_video(example.target_video).to(device, video_noise.dtype)
    clean_audio = pack_audio(example.target_audio).to(device, audio_noise.dtype)
    if noisy_video is None:
        noisy_video = (1 - video_sigma) * clean_video + video_sigma * video_noise
    if noisy_audio is None:
        noisy_audio = (1 - audio_sigma) * clean_audio + audio_sigma * audio_noise
    noisy_video = torch.where(mask[:, None] > 0, noisy_video, clean_video)
    reference_video = pack_video(example.reference_video).to(device, video_noise.dtype)
    reference_audio = pack_audio(example.reference_audio).to(device, audio_noise.dtype)

    video_coords = transformer.rope.prepare_video_coords(1, frames, height, width, device, fps=example.frame_rate)
    audio_coords = transformer.audio_rope.prepare_audio_coords(1, clean_audio.shape[0], device)
    video_t = video_sigma * TIMESTEP_SCALE
    audio_t = audio_sigma * TIMESTEP_SCALE
    kwargs = dict(
        hidden_states=torch.cat([noisy_video, reference_video])[None],
        audio_hidden_states=torch.cat([noisy_audio, reference_audio])[None],
        timestep=torch.cat([video_t * mask, torch.zeros(len(reference_video), device=device)])[None],
        audio_timestep=torch.cat([audio_t.expand(len(clean_audio)),
                                  torch.zeros(len(reference_audio), device=device)])[None],
        sigma=video_t.reshape(1), audio_sigma=audio_t.reshape(1),
        video_coords=torch.cat([video_coords, video_coords], dim=2),
        audio_coords=torch.cat([audio_coords, reference_audio_coords(transformer, len(reference_audio), device)], dim=2),
        fps=example.frame_rate, use_cross_timestep=True, return_dict=False,
        **{name: tensor.to(device) for name, tensor in example.text.items()},
        audio_encoder_attention_mask=example.text["encoder_attention_mask"].to(device),
    )
    return ModelInputs(kwargs=kwargs, video_tokens=len(clean_video), audio_tokens=len(clean_audio),
                       video_mask=mask, video_velocity=video_noise - clean_video,
                       audio_velocity=audio_noise - clean_audio)


def predict(transformer, inputs: ModelInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Velocity predictions for the target tokens only: (Nv, C) video, (La, D) audio."""
    video, audio = transformer(**inputs.kwargs)
    return video[0, : inputs.video_tokens], audio[0, : inputs.audio_tokens]


def masked_loss(video_prediction: torch.Tensor, audio_prediction: torch.Tensor,
                inputs: ModelInputs) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE on regenerated video tokens + MSE on target audio tokens, each averaged over its tokens."""
    video_error = (video_prediction.float() - inputs.video_velocity.float()).pow(2).mean(dim=1)
    regenerated = inputs.video_mask.float()
    video_loss = (video_error * regenerated).sum() / regenerated.sum().clamp(min=1)
    audio_loss = (audio_prediction.float() - inputs.audio_velocity.float()).pow(2).mean()
    loss = video_loss + audio_loss
    return loss, {"loss": loss.item(), "video_loss": video_loss.item(), "audio_loss": audio_loss.item()}
