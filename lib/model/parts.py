"""The model's parts, listed once: every other module reads their names and classes from here.

A part's name is also its subfolder in a diffusers folder (and in lib/model/ltx23/, the shipped
2.3 configs) and its field on `Components`. The text encoder (Gemma 3, a transformers class)
comes from its own folder; the other five are diffusers classes and are what Lightricks' single
file holds. Which stage needs which part is lib/model/lifetime.py's.
"""

from __future__ import annotations

# Load order, and the order the tiny preset seeds its parts in (lib/model/tiny.py): changing it
# changes the tiny weights.
MODULE_NAMES = ("transformer", "vae", "audio_vae", "vocoder", "connectors", "text_encoder")
TEXT_ENCODER = "text_encoder"
CHECKPOINT_PARTS = tuple(name for name in MODULE_NAMES if name != TEXT_ENCODER)  # in Lightricks' file
EXTRAS = ("tokenizer", "scheduler")  # the non-module parts, also a subfolder each


def diffusers_classes() -> dict[str, type]:
    """The diffusers class of every part but the text encoder."""
    from diffusers import AutoencoderKLLTX2Audio, AutoencoderKLLTX2Video, LTX2VideoTransformer3DModel
    from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
    from diffusers.pipelines.ltx2.vocoder import LTX2VocoderWithBWE

    classes = {
        "transformer": LTX2VideoTransformer3DModel,
        "vae": AutoencoderKLLTX2Video,
        "audio_vae": AutoencoderKLLTX2Audio,
        "vocoder": LTX2VocoderWithBWE,
        "connectors": LTX2TextConnectors,
    }
    return {name: classes[name] for name in CHECKPOINT_PARTS}


def text_encoder_class() -> type:
    from transformers import Gemma3ForConditionalGeneration

    return Gemma3ForConditionalGeneration


def build(name: str, config):
    """A part built from its config (a dict, or the text encoder's Gemma3Config) on torch's current
    default device: random weights, or shapes only on the meta device."""
    if name == TEXT_ENCODER:
        return text_encoder_class()(config)
    return diffusers_classes()[name].from_config(config)
