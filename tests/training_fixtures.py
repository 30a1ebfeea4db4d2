"""Shared, expensive setup for the training tests: two synthetic triplets conformed at 17 frames,
512x288, encoded once with the tiny preset and kept as `Example`s (one session-scoped fixture).

Tests must never mutate `TrainingData.components`: train on `fresh_transformer(data)`.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from lib.core.cache import Cache
from lib.core.settings import ConditioningSettings
from lib.core.storage import FileRef
from lib.model import Components
from lib.model.conditioning import Example, ModelInputs, build_inputs, pack_audio

CPU = torch.device("cpu")
FRAMES, WIDTH, HEIGHT = 17, 512, 288
# The layout of these tests' examples: references encoded at the target's size (512x288 has no exact
# half, so a request for it trains at 1 too), reference audio at the target's own time positions.
SAME_SIZE_ALIGNED = ConditioningSettings(reference_audio_positions="aligned", reference_downscale=1)


@dataclass
class TrainingData:
    components: Components  # the base tiny model (no LoRA); read-only for tests
    cache_root: Path  # holds conformed/ and latents/
    clips: list[FileRef]  # conformed clips (encode_clip's input)
    latents: list[FileRef]  # their cached latent files
    examples: list[Example]


def conform_sample_triplets(folder: Path, count: int = 2) -> tuple[Path, list[FileRef]]:
    """make_sample_zip -> extract -> match -> check -> conform, as the prepare flow does."""
    from lib.ingest.archive import safe_extract
    from lib.ingest.conform import ConformSettings, check_triplet, conform_triplet
    from lib.ingest.dataset import match_triplets, triplets_from_manifest
    from lib.media.synthetic import make_sample_zip

    zip_path = make_sample_zip(folder / "sample.zip", triplets=count, include_bad=False)
    names = safe_extract(zip_path, folder / "extracted")
    triplets = triplets_from_manifest(match_triplets(names).manifest, folder / "extracted")
    settings = ConformSettings(
        number_of_frames=FRAMES,
        frame_rate=24,
        width=WIDTH,
        height=HEIGHT,
        auto_scale_input=False,
        audio_normalize=True,
        audio_preserve_pitch=True,
    )
    cache_root = folder / "cache"
    results = [conform_triplet(t, check_triplet(t), settings, Cache.at(cache_root)) for t in triplets]
    assert [r.status for r in results] == ["accepted"] * count, [r.message for r in results]
    return cache_root, [r.clip for r in results]


@contextmanager
def torch_threads(count: int):
    """The tiny model's ops are too small to gain from intra-op threads, and on a busy 2-core
    machine spinning OpenMP workers make a run 2-10x slower; results are the same either way."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def single_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def training_data(tmp_path_factory) -> TrainingData:
    from lib.model import build_tiny
    from lib.model.encoding import encode_clip, load_example

    cache_root, clips = conform_sample_triplets(tmp_path_factory.mktemp("training-data"))
    components = build_tiny()
    with torch_threads(1):
        latents = [encode_clip(components, clip, Cache.at(cache_root)) for clip in clips]
    return TrainingData(
        components=components,
        cache_root=cache_root,
        clips=clips,
        latents=latents,
        examples=[load_example(ref.path) for ref in latents],
    )


def fresh_transformer(data: TrainingData):
    """A copy of the base tiny transformer (same weights as a new build_tiny()), safe to train."""
    return copy.deepcopy(data.components.transformer)


def fixed_draw(
    example: Example, seed: int = 0, video_sigma: float = 0.7, audio_sigma: float = 0.6
) -> tuple[torch.Tensor, ...]:
    """Noise levels and noise for one example, independent of any training generator."""
    generator = torch.Generator().manual_seed(seed)
    tokens = example.video_mask.numel()
    video_noise = torch.randn(tokens, example.target_video.shape[0], generator=generator)
    audio_noise = torch.randn(pack_audio(example.target_audio).shape, generator=generator)
    return torch.tensor(video_sigma), torch.tensor(audio_sigma), video_noise, audio_noise


def fixed_inputs(transformer, example: Example, seed: int = 0) -> ModelInputs:
    return build_inputs(transformer, example, *fixed_draw(example, seed), conditioning=SAME_SIZE_ALIGNED)


def evaluation_loss(transformer, examples: list[Example], draws: int = 16, seed: int = 1234) -> float:
    """Mean masked loss over a FIXED sequence of draws (same generator seed every call)."""
    from lib.train.training import training_step

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        losses = [
            training_step(transformer, transformer, examples, generator, CPU, conditioning=SAME_SIZE_ALIGNED)[0].item()
            for _ in range(draws)
        ]
    return sum(losses) / len(losses)


def synthetic_example(
    components: Components,
    frames: int = 2,
    height: int = 2,
    width: int = 3,
    audio_latents: int = 5,
    seed: int = 0,
    reference_scale: int = 1,
) -> Example:
    """A random-latent example with the preset's shapes (no encoding), for forward-pass checks."""
    from lib.model import model_spec

    spec = model_spec(components)
    generator = torch.Generator().manual_seed(seed)
    video_shape = (spec["video_latent_channels"], frames, height, width)
    reference_shape = (spec["video_latent_channels"], frames, height // reference_scale, width // reference_scale)
    audio_shape = (spec["audio_latent_channels"], audio_latents, spec["audio_latent_mel_bins"])
    length, width_text = spec["max_sequence_length"], components.transformer.config.cross_attention_dim
    mask = torch.zeros(frames, height, width, dtype=torch.bool)
    mask[:, : max(1, height // 2)] = True
    return Example(
        target_video=torch.randn(video_shape, generator=generator),
        reference_video=torch.randn(reference_shape, generator=generator),
        target_audio=torch.randn(audio_shape, generator=generator),
        reference_audio=torch.randn(audio_shape, generator=generator),
        video_mask=mask,
        text={
            "encoder_hidden_states": torch.randn(1, length, width_text, generator=generator),
            "audio_encoder_hidden_states": torch.randn(
                1, length, components.transformer.config.audio_cross_attention_dim, generator=generator
            ),
            "encoder_attention_mask": torch.ones(1, length, dtype=torch.int64),
        },
        frame_rate=24.0,
    )


def train_fresh(data: TrainingData, settings, **kwargs):
    """Train a fresh copy of the base tiny transformer; returns (transformer, result)."""
    from lib.train.training import fit

    transformer = fresh_transformer(data)
    return transformer, fit(transformer, data.examples, settings, conditioning=SAME_SIZE_ALIGNED, **kwargs)
