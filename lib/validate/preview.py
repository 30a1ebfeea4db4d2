"""Render validation samples with the current model (LoRA attached) into the reel."""

from __future__ import annotations

from pathlib import Path

from lib.core.clip import load_clip
from lib.model import Components, latents
from lib.model.conditioning import ConditioningSettings
from lib.model.encoding import load_example
from lib.model.lifetime import DECODE_PARTS, acquire
from lib.validate.reel import composite, write_reel
from lib.validate.sampling import SamplerSettings, sample


def render_sample(
    components: Components,
    clip_path: str,
    latents_path: str,
    negative_text: dict,
    settings: SamplerSettings,
    *,
    conditioning: ConditioningSettings,
    on_step=None,
) -> dict:
    """Sample one validation clip (or a generation: the same clip layout); the generated panel keeps
    the source's pixels outside the mask. `on_step(done, steps)`: after each denoising step."""
    clip = load_clip(clip_path)
    example = load_example(latents_path)
    video_latents, audio_latents = sample(
        components.transformer,
        components.scheduler,
        example,
        negative_text,
        settings,
        conditioning=conditioning,
        dtype=components.dtype,
        on_step=on_step,
    )
    generated = latents.decode_video(components, video_latents)
    waveform, sample_rate = latents.decode_audio(components, audio_latents)
    return {
        "source": clip["target"],
        "mask": clip["mask"],
        "reference": clip["reference"],
        "generated": composite(clip["target"], generated, clip["mask"]),
        "raw_generated": generated,
        "audio": waveform,
        "sample_rate": sample_rate,
        "frame_rate": example.frame_rate,
    }


def render_reel(
    components: Components,
    clips: list[str],
    latent_files: list[str],
    negative_text: dict,
    settings: SamplerSettings,
    path: Path,
    *,
    conditioning: ConditioningSettings,
    on_sample=None,
) -> Path:
    """`negative_text`: the negative prompt's text inputs (lib.model.encoding.encode_prompt's file, loaded),
    so rendering needs the transformer and the decoders but never the text encoder."""
    acquire(components, "transformer", *DECODE_PARTS)
    was_training = components.transformer.training
    components.transformer.eval()
    try:
        samples = []
        for clip, latents_file in zip(clips, latent_files):
            samples.append(
                render_sample(components, clip, latents_file, negative_text, settings, conditioning=conditioning)
            )
            if on_sample is not None:
                on_sample(len(samples))
    finally:
        components.transformer.train(was_training)
    return write_reel(path, samples, samples[0]["frame_rate"])
