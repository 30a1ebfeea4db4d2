"""The tiny preset: every 2.3 class with tiny random weights (configs in lib/model/configs.py),
small enough for CPU tests, the demo and CI."""

from __future__ import annotations

import torch

from lib.model.components import Components, assemble
from lib.model.configs import TINY_MAX_SEQUENCE_LENGTH, TINY_SCHEDULER, part_config, tiny_vocab
from lib.model.parts import MODULE_NAMES, TEXT_ENCODER, diffusers_classes, text_encoder_class


def build_tiny(seed: int = 0) -> Components:
    """Every 2.3 class with tiny random weights (fp32, CPU, eval). Same seed, same weights."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    classes = {**diffusers_classes(), TEXT_ENCODER: text_encoder_class()}
    parts = {}
    # Each part gets its own seed so one part's weights don't depend on how the others were built;
    # fork_rng keeps the caller's global RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        for index, name in enumerate(MODULE_NAMES):
            config = part_config("tiny", name)
            torch.manual_seed(seed * 1000 + index)
            parts[name] = (classes[name](config) if name == TEXT_ENCODER else classes[name](**config)).eval()
        _randomize_latent_stats(parts["vae"], parts["audio_vae"])
    parts["tokenizer"] = _tiny_tokenizer()
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler(**TINY_SCHEDULER)
    return assemble(parts, "tiny", f"seed{seed}", torch.device("cpu"), torch.float32)


def _tiny_tokenizer():
    from transformers import GemmaTokenizer

    tokenizer = GemmaTokenizer(vocab=tiny_vocab(), merges=[])
    # model_max_length travels with the saved tokenizer; model_spec reads it for the prompt length.
    tokenizer.model_max_length = TINY_MAX_SEQUENCE_LENGTH
    return tokenizer


def _randomize_latent_stats(vae, audio_vae) -> None:
    # Real checkpoints carry dataset statistics; the classes default to mean 0 / std 1, which would
    # let a missing or misplaced normalization pass every test. Make them non-trivial.
    for module in (vae, audio_vae):
        size = module.latents_mean.shape
        module.latents_mean.copy_(0.1 * torch.randn(size))
        module.latents_std.copy_(0.75 + 0.5 * torch.rand(size))
