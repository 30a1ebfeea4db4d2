"""Pixels, waveforms and captions to the latents the transformer trains on, and back.

Every function takes the `Components` from lib.model and normalizes exactly as the diffusers
pipeline does, so cached latents are interchangeable with the pipeline's own:
- video: z_norm = (z - latents_mean[c]) * scaling_factor / latents_std[c], per latent channel;
- audio: the pipeline packs [B, C, L, M] to [B, L, C*M] tokens and applies (C*M,) statistics,
  i.e. z_norm[c, l, m] = (z[c, l, m] - mean[c*M + m]) / std[c*M + m];
both from the VAE posterior's mode (deterministic). Outputs are float32 on the CPU (cacheable);
the models run on components.device in components.dtype.
"""

from __future__ import annotations

import librosa
import numpy as np
import torch

from lib.model.components import Components, model_spec, to_pipeline

# The audio VAE's input features (diffusers ships no waveform -> mel code for it; see log_mel).
MEL_SAMPLE_RATE = 16_000
MEL_N_FFT = 1024
MEL_HOP = 160  # 100 mel frames per second
MEL_F_MAX = 8_000.0
MEL_LOG_FLOOR = 1e-5
TILED_DECODE_PX = 768 * 768


def log_mel(waveform: np.ndarray, n_mels: int) -> torch.Tensor:
    """(2, S) float32 waveform at 16 kHz -> (1, 2, S // 160 + 1, n_mels) log-mel, the audio VAE's input.

    Magnitude (power 1) STFT with a 1024-point Hann window, hop 160, centred with reflect padding;
    `n_mels` Slaney-scale, Slaney-normalized mel bands from 0 to 8 kHz; then log(max(mel, 1e-5)).
    Time is on axis 2 and mel bins last. A mono (1, S) or (S,) input is duplicated to stereo.
    """
    audio = np.asarray(waveform, dtype=np.float32)
    audio = np.broadcast_to(audio.reshape(-1, audio.shape[-1]), (2, audio.shape[-1]))
    mel = librosa.feature.melspectrogram(
        y=np.ascontiguousarray(audio),
        sr=MEL_SAMPLE_RATE,
        n_fft=MEL_N_FFT,
        win_length=MEL_N_FFT,
        hop_length=MEL_HOP,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=n_mels,
        fmin=0.0,
        fmax=MEL_F_MAX,
        htk=False,
        norm="slaney",
    )  # (2, n_mels, T)
    mel = torch.from_numpy(np.log(np.maximum(mel, MEL_LOG_FLOOR)).astype(np.float32))
    return mel.transpose(1, 2).unsqueeze(0).contiguous()


@torch.no_grad()
def encode_video(components: Components, frames: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB, N = 8k+1, H and W multiples of 32 -> normalized (C, (N-1)/8+1, H/32, W/32)."""
    _check_video_shape(components, frames.shape)
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(components.device)
    pixels = pixels.permute(3, 0, 1, 2).unsqueeze(0).float() / 127.5 - 1.0  # (1, 3, N, H, W) in [-1, 1]
    vae = components.vae
    latents = vae.encode(pixels.to(components.dtype)).latent_dist.mode()
    mean, std = _video_stats(vae, latents)
    latents = (latents - mean) * vae.config.scaling_factor / std
    return latents[0].float().cpu()


@torch.no_grad()
def decode_video(components: Components, latents: torch.Tensor) -> np.ndarray:
    """Normalized (C, F, h, w) -> (8(F-1)+1, 32h, 32w, 3) uint8 RGB."""
    vae = components.vae
    latents = latents.unsqueeze(0).to(components.device, components.dtype)
    mean, std = _video_stats(vae, latents)
    latents = latents * std / vae.config.scaling_factor + mean
    # Above TILED_DECODE_PX pixels per frame, decode in overlapping tiles (diffusers' blending):
    # a 960x960x89 reel would otherwise need tens of GB of decoder activations.
    _, _, _, height, width = latents.shape
    spatial = model_spec(components)["spatial_compression"]
    if height * width * spatial * spatial > TILED_DECODE_PX:
        vae.enable_tiling()
    else:
        vae.disable_tiling()
    # A timestep-conditioned decoder gets the pipeline's default decode_timestep (0, no noise).
    temb = (
        torch.zeros(1, device=components.device, dtype=components.dtype) if vae.config.timestep_conditioning else None
    )
    video = vae.decode(latents, temb).sample[0].float().clamp(-1.0, 1.0)  # (3, N, H, W)
    return ((video + 1.0) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).cpu().numpy()


@torch.no_grad()
def encode_audio(components: Components, waveform: np.ndarray) -> torch.Tensor:
    """(2, S) float32 at 16 kHz -> normalized (C, ceil(T_mel / 4), mel_bins / 4), about 25 latents/s."""
    audio_vae = components.audio_vae
    mel = log_mel(waveform, n_mels=audio_vae.config.mel_bins).to(components.device, components.dtype)
    latents = audio_vae.encode(mel).latent_dist.mode()  # (1, C, L, M)
    mean, std = _audio_stats(audio_vae, latents)
    return ((latents - mean) / std)[0].float().cpu()


@torch.no_grad()
def decode_audio(components: Components, latents: torch.Tensor) -> tuple[np.ndarray, int]:
    """Normalized (C, L, M) -> ((2, S) float32 waveform, the vocoder's sample rate)."""
    latents = latents.unsqueeze(0).to(components.device, components.dtype)
    mean, std = _audio_stats(components.audio_vae, latents)
    mel = components.audio_vae.decode(latents * std + mean).sample  # (1, 2, 4L - 3, mel_bins)
    waveform = components.vocoder(mel)  # (1, 2, S)
    return waveform[0].float().cpu().numpy(), int(model_spec(components)["vocoder_sample_rate"])


@torch.no_grad()
def encode_prompts(components: Components, prompts: list[str]) -> dict[str, torch.Tensor]:
    """Captions -> the text inputs the pipeline hands the transformer, batch first (B, T, D).

    Keys are the transformer's argument names; the pipeline passes the same mask as
    `audio_encoder_attention_mask`.
    """
    pipe = to_pipeline(components)
    embeds, mask, _, _ = pipe.encode_prompt(
        prompt=list(prompts),
        do_classifier_free_guidance=False,
        max_sequence_length=model_spec(components)["max_sequence_length"],
        device=components.device,
    )
    padding_side = getattr(components.tokenizer, "padding_side", "left")
    video, audio, mask = components.connectors(embeds, mask, padding_side=padding_side)
    return {
        "encoder_hidden_states": video.float().cpu(),
        "audio_encoder_hidden_states": audio.float().cpu(),
        "encoder_attention_mask": mask.cpu(),
    }


def _video_stats(vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Per latent channel, broadcast over [B, C, F, H, W].
    shape = (1, -1, 1, 1, 1)
    return (
        vae.latents_mean.view(shape).to(like.device, like.dtype),
        vae.latents_std.view(shape).to(like.device, like.dtype),
    )


def _audio_stats(audio_vae, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # The pipeline's token feature index is c * M + m (transpose(1, 2).flatten(2, 3)), so its
    # (C*M,) statistics reshape to (1, C, 1, M) over [B, C, L, M] with identical results.
    _, channels, _, mel_bins = like.shape
    shape = (1, channels, 1, mel_bins)
    return (
        audio_vae.latents_mean.view(shape).to(like.device, like.dtype),
        audio_vae.latents_std.view(shape).to(like.device, like.dtype),
    )


def _check_video_shape(components: Components, shape: tuple[int, ...]) -> None:
    # The VAE itself fails with an opaque reshape error on these (frames not 8k+1, or sides not multiples of 32).
    spec = model_spec(components)
    spatial, temporal = spec["spatial_compression"], spec["temporal_compression"]
    if len(shape) != 4 or shape[3] != 3:
        raise ValueError(f"frames must be (N, H, W, 3) uint8, got shape {shape}")
    n, h, w, _ = shape
    if (n - 1) % temporal or h % spatial or w % spatial:
        raise ValueError(f"need N = {temporal}k+1 frames and H, W multiples of {spatial}; got N={n}, {w}x{h}")
