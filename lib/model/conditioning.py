"""In-context conditioning, shared by training and validation sampling (docs in README, "Conditioning").

One example becomes one transformer call, reference tokens first as Lightricks' IC-LoRA strategy
(ltx-trainer `flexible.py`) lays them out:
- video tokens = [reference (clean, timestep 0) | target (noised where mask = 1, clean with
  timestep 0 where mask = 0)]. The reference covers the target's frame: a reference encoded at
  1/`reference_downscale` resolution gets its spatial positions scaled back up, so token for token
  it sits over the same pixels;
- audio tokens = [reference (clean, timestep 0) | target (noised)]. `reference_audio_positions`:
  "aligned" gives the reference the target's own time positions (flexible.py), "before" puts it on
  negative time ending REFERENCE_AUDIO_GAP_S before 0 (Lightricks' Dub-It convention).
Loss (training) is on regenerated video tokens and target audio tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lib.core.settings import REFERENCE_AUDIO_GAP_S, ConditioningSettings

TIMESTEP_SCALE = 1000.0  # the transformer's timesteps and sigma are on 0..1000
__all__ = ["REFERENCE_AUDIO_GAP_S", "ConditioningSettings"]  # re-exported: the settings live in lib.core.settings


@dataclass
class Example:
    """Latents of one triplet, unbatched, as cached (see lib/model/encoding.py)."""

    target_video: torch.Tensor  # (C, F, h, w) normalized
    reference_video: torch.Tensor  # (C, F, h, w)
    target_audio: torch.Tensor  # (Ca, L, M)
    reference_audio: torch.Tensor  # (Ca, L, M)
    video_mask: torch.Tensor  # (F, h, w) bool, True = regenerate
    text: dict[
        str, torch.Tensor
    ]  # encoder_hidden_states, audio_encoder_hidden_states, encoder_attention_mask (1, T, ·)
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
    video_tokens: int  # the target tokens, last in the sequence (after the reference)
    audio_tokens: int
    video_mask: torch.Tensor  # (Nv,) float, 1 = regenerated (in the loss), 0 = kept
    video_velocity: torch.Tensor  # (Nv, C) flow-matching target eps - x0
    audio_velocity: torch.Tensor  # (La, D)


def reference_audio_coords(transformer, length: int, positions: str, device) -> torch.Tensor:
    """Time coordinates of `length` reference audio latents under the chosen convention.

    "before" is built by hand: prepare_audio_coords clamps negative shifts to 0.
    """
    coords = transformer.audio_rope.prepare_audio_coords(1, length, device)
    if positions == "aligned":
        return coords
    return coords - (coords[..., -1:, 1:2] + REFERENCE_AUDIO_GAP_S)


def reference_video_coords(
    transformer, target_shape: tuple[int, int, int], reference_shape: tuple[int, int, int], frame_rate: float, device
) -> torch.Tensor:
    """The reference's own grid, its height and width positions scaled onto the target's pixels."""
    frames, height, width = reference_shape
    coords = transformer.rope.prepare_video_coords(1, frames, height, width, device, fps=frame_rate)
    scale = torch.tensor([1.0, target_shape[1] / height, target_shape[2] / width], device=device)
    return coords * scale.to(coords.dtype)[None, :, None, None]


def build_inputs(
    transformer,
    example: Example,
    video_sigma: torch.Tensor,
    audio_sigma: torch.Tensor,
    video_noise: torch.Tensor,
    audio_noise: torch.Tensor,
    noisy_video: torch.Tensor | None = None,
    noisy_audio: torch.Tensor | None = None,
    *,
    conditioning: ConditioningSettings,
    dtype: torch.dtype = torch.float32,
) -> ModelInputs:
    """Assemble the transformer call for one example at noise levels (video_sigma, audio_sigma) in [0, 1].

    Training passes clean latents + noise; the sampler passes its current `noisy_*` tokens instead
    (kept video tokens are always reset to the clean target, as in training). Latents and text go
    in as `dtype` (the base's compute dtype); the loss targets stay fp32.
    """
    device = video_noise.device
    target_shape = tuple(example.video_mask.shape)
    mask = example.video_mask.reshape(-1).to(device=device, dtype=torch.float32)
    clean_video = pack_video(example.target_video).to(device, torch.float32)
    clean_audio = pack_audio(example.target_audio).to(device, torch.float32)
    if noisy_video is None:
        noisy_video = (1 - video_sigma) * clean_video + video_sigma * video_noise
    if noisy_audio is None:
        noisy_audio = (1 - audio_sigma) * clean_audio + audio_sigma * audio_noise
    noisy_video = torch.where(mask[:, None] > 0, noisy_video.float(), clean_video)
    reference_video = pack_video(example.reference_video).to(device, torch.float32)
    reference_audio = pack_audio(example.reference_audio).to(device, torch.float32)

    frames, height, width = target_shape
    video_coords = transformer.rope.prepare_video_coords(1, frames, height, width, device, fps=example.frame_rate)
    reference_coords = reference_video_coords(
        transformer, target_shape, tuple(example.reference_video.shape[1:]), example.frame_rate, device
    )
    audio_coords = transformer.audio_rope.prepare_audio_coords(1, clean_audio.shape[0], device)
    reference_audio_coords_ = reference_audio_coords(
        transformer, len(reference_audio), conditioning.reference_audio_positions, device
    )
    video_t = (video_sigma * TIMESTEP_SCALE).float()
    audio_t = (audio_sigma * TIMESTEP_SCALE).float()
    kwargs = dict(
        hidden_states=torch.cat([reference_video, noisy_video])[None].to(dtype),
        audio_hidden_states=torch.cat([reference_audio, noisy_audio])[None].to(dtype),
        timestep=torch.cat([torch.zeros(len(reference_video), device=device), video_t * mask])[None],
        audio_timestep=torch.cat([torch.zeros(len(reference_audio), device=device), audio_t.expand(len(clean_audio))])[
            None
        ],
        sigma=video_t.reshape(1),
        audio_sigma=audio_t.reshape(1),
        video_coords=torch.cat([reference_coords, video_coords], dim=2),
        audio_coords=torch.cat([reference_audio_coords_, audio_coords], dim=2),
        fps=example.frame_rate,
        use_cross_timestep=True,
        return_dict=False,
        **{name: _text_input(tensor, device, dtype) for name, tensor in example.text.items()},
        audio_encoder_attention_mask=example.text["encoder_attention_mask"].to(device),
    )
    return ModelInputs(
        kwargs=kwargs,
        video_tokens=len(clean_video),
        audio_tokens=len(clean_audio),
        video_mask=mask,
        video_velocity=video_noise.float() - clean_video,
        audio_velocity=audio_noise.float() - clean_audio,
    )


def _text_input(tensor: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    # Embeddings take the model's dtype; the attention mask keeps its own.
    return tensor.to(device, dtype) if tensor.is_floating_point() else tensor.to(device)


def predict(transformer, inputs: ModelInputs, **extra) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 velocity predictions for the target tokens only (they come last): (Nv, C) video, (La, D) audio."""
    video, audio = transformer(**inputs.kwargs, **extra)
    return video[0, -inputs.video_tokens :].float(), audio[0, -inputs.audio_tokens :].float()


def masked_loss(
    video_prediction: torch.Tensor, audio_prediction: torch.Tensor, inputs: ModelInputs
) -> tuple[torch.Tensor, dict[str, float]]:
    """MSE on regenerated video tokens + MSE on target audio tokens, each averaged over its tokens."""
    video_error = (video_prediction.float() - inputs.video_velocity.float()).pow(2).mean(dim=1)
    regenerated = inputs.video_mask.float()
    video_loss = (video_error * regenerated).sum() / regenerated.sum().clamp(min=1)
    audio_loss = (audio_prediction.float() - inputs.audio_velocity.float()).pow(2).mean()
    loss = video_loss + audio_loss
    return loss, {"loss": loss.item(), "video_loss": video_loss.item(), "audio_loss": audio_loss.item()}
