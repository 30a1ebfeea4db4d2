"""Lightricks' single-file LTX-2.3 checkpoint <-> diffusers components.

Lightricks ships 2.3 as one `.safetensors` (transformer and text connectors under
`model.diffusion_model.`, then `vae.`, `audio_vae.`, `vocoder.`), Gemma separately. diffusers
0.42.1's single-file mapping knows 2.0 only (no `prompt_adaln`, no VAE up_blocks 7/8, nothing
for the BWE vocoder or the connectors) and loads non-strictly (missing weights stay on the meta
device). So the rename tables here are those of diffusers' `scripts/convert_ltx2_to_diffusers.py`
for version 2.3, applied the way that script applies them (in order, substring replace, special
handlers after), and every component is loaded strictly.

`to_lightricks_key` is the inverse, used to write a single file (tests, export); it checks
that the forward mapping gives every key back. The text projection (`text_embedding_projection.*`)
sits at the top level in Lightricks' files, not under `model.diffusion_model.`; files written by
earlier versions of this project put it there, and both places are read.

Lightricks' own metadata says what a file is: `config` (the architecture, which ltx-core builds
from) and, in newer files, `model_version`; LTX-2.5 files also name their Gemma 4
(`gemma_source_checkpoint`). `checkpoint_version` reads them, `lightricks_config` writes the
`config` of a diffusers transformer + connectors, and `config_differences` compares the two.
Files written here also carry every part's diffusers config (`CONFIGS_METADATA_KEY`), so any
size round-trips; `diffusers_configs` reads them, or the shipped 2.3 ones.
"""

from __future__ import annotations

import json
import re

from lib.model.configs import LTX23_CONFIG_DIR
from lib.model.parts import CHECKPOINT_PARTS, diffusers_classes

CONFIGS_METADATA_KEY = "av2av_diffusers_configs"
TRANSFORMER_PREFIX = "model.diffusion_model."
CONNECTOR_PREFIXES = (
    "video_embeddings_connector",
    "audio_embeddings_connector",
    "transformer_1d_blocks",
    "text_embedding_projection",
    "connectors.",
)
COMPONENT_PREFIXES = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}
TEXT_PROJECTION = "text_embedding_projection."

_TRANSFORMER_20 = {
    "patchify_proj": "proj_in",
    "audio_patchify_proj": "audio_proj_in",
    "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
    "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
    "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
    "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
    "scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
    "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
    "q_norm": "norm_q",
    "k_norm": "norm_k",
}
RENAMES = {
    "transformer": {
        **_TRANSFORMER_20,
        "audio_prompt_adaln_single": "audio_prompt_adaln",
        "prompt_adaln_single": "prompt_adaln",
    },
    "connectors": {
        "connectors.": "",
        "video_embeddings_connector": "video_connector",
        "audio_embeddings_connector": "audio_connector",
        "transformer_1d_blocks": "transformer_blocks",
        "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
        "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",
        "q_norm": "norm_q",
        "k_norm": "norm_k",
    },
    "vae": {
        "down_blocks.0": "down_blocks.0",
        "down_blocks.1": "down_blocks.0.downsamplers.0",
        "down_blocks.2": "down_blocks.1",
        "down_blocks.3": "down_blocks.1.downsamplers.0",
        "down_blocks.4": "down_blocks.2",
        "down_blocks.5": "down_blocks.2.downsamplers.0",
        "down_blocks.6": "down_blocks.3",
        "down_blocks.7": "down_blocks.3.downsamplers.0",
        "down_blocks.8": "mid_block",
        "up_blocks.0": "mid_block",
        "up_blocks.1": "up_blocks.0.upsamplers.0",
        "up_blocks.2": "up_blocks.0",
        "up_blocks.3": "up_blocks.1.upsamplers.0",
        "up_blocks.4": "up_blocks.1",
        "up_blocks.5": "up_blocks.2.upsamplers.0",
        "up_blocks.6": "up_blocks.2",
        "last_time_embedder": "time_embedder",
        "last_scale_shift_table": "scale_shift_table",
        "res_blocks": "resnets",
        "per_channel_statistics.mean-of-means": "latents_mean",
        "per_channel_statistics.std-of-means": "latents_std",
        "up_blocks.7": "up_blocks.3.upsamplers.0",
        "up_blocks.8": "up_blocks.3",
    },
    "audio_vae": {
        "per_channel_statistics.mean-of-means": "latents_mean",
        "per_channel_statistics.std-of-means": "latents_std",
    },
    "vocoder": {
        "resblocks": "resnets",
        "conv_pre": "conv_in",
        "conv_post": "conv_out",
        "act_post": "act_out",
        "downsample.lowpass": "downsample",
    },
}
# Statistics the diffusers VAEs do not keep (the conversion script drops them too).
DROPPED = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")


def split_checkpoint(keys) -> dict[str, list[str]]:
    """Checkpoint keys per diffusers component (unknown keys under "unknown")."""
    parts: dict[str, list[str]] = {name: [] for name in (*CHECKPOINT_PARTS, "unknown")}
    for key in keys:
        if key.startswith(TRANSFORMER_PREFIX) or key.startswith(CONNECTOR_PREFIXES):
            inner = key.removeprefix(TRANSFORMER_PREFIX)
            parts["connectors" if inner.startswith(CONNECTOR_PREFIXES) else "transformer"].append(key)
            continue
        owner = next((name for name, prefix in COMPONENT_PREFIXES.items() if key.startswith(prefix)), "unknown")
        parts[owner].append(key)
    return parts


def to_diffusers_key(component: str, key: str) -> str | None:
    """One checkpoint key -> its diffusers name (None: a key diffusers does not keep)."""
    key = (
        key.removeprefix(TRANSFORMER_PREFIX)
        if component in ("transformer", "connectors")
        else key.removeprefix(COMPONENT_PREFIXES[component])
    )
    if any(dropped in key for dropped in DROPPED):
        return None
    for old, new in RENAMES[component].items():
        key = key.replace(old, new)
    return _structural(component, key, forward=True)


# Renames that are not plain substring swaps: a leading module name, and the vocoder's blocks.
STRUCTURAL = {
    "transformer": (("adaln_single.", "time_embed."), ("audio_adaln_single.", "audio_time_embed.")),
    "vocoder": ((".ups.", ".upsamplers."),),
}


def _structural(component: str, key: str, forward: bool) -> str:
    for pair in STRUCTURAL.get(component, ()):
        old, new = pair if forward else pair[::-1]
        if component == "vocoder":
            key = key.replace(old, new)
        elif key.startswith(old):
            key = new + key.removeprefix(old)
    return key


def to_lightricks_key(component: str, key: str) -> str:
    """The inverse of `to_diffusers_key` (for writing a single file); raises if it does not round-trip."""
    inverse = _inverse_table(component, key)
    pattern = re.compile("|".join(re.escape(name) for name in sorted(inverse, key=len, reverse=True)))
    original = pattern.sub(lambda match: inverse[match.group(0)], key)  # one pass: no chained renames
    original = _structural(component, original, forward=False)
    original = _prefix(component, original) + original
    if to_diffusers_key(component, original) != key:
        raise ValueError(f"{component} key {key!r} has no Lightricks name that maps back to it")
    return original


def _prefix(component: str, lightricks_key: str) -> str:
    if lightricks_key.startswith(TEXT_PROJECTION):
        return ""  # top level in Lightricks' files: ltx-core's text encoder builder reads it there
    return TRANSFORMER_PREFIX if component in ("transformer", "connectors") else COMPONENT_PREFIXES[component]


def _inverse_table(component: str, key: str) -> dict[str, str]:
    table = RENAMES[component]
    if component == "vae":  # "mid_block" is down_blocks.8 in the encoder and up_blocks.0 in the decoder
        excluded = "up_blocks" if key.startswith("encoder.") else "down_blocks"
        table = {old: new for old, new in table.items() if not old.startswith(excluded)}
    return {new: old for old, new in table.items() if new and new != old}


# --- our metadata: every part's diffusers config -----------------------------------------------------


def diffusers_configs(metadata: dict[str, str]) -> dict[str, dict]:
    """Every part's diffusers config: those the file names (files written by
    lib.model.loading.save_single_file do, so other architectures such as the tiny preset
    round-trip), else the real 2.3 ones shipped here."""
    if CONFIGS_METADATA_KEY in metadata:
        return json.loads(metadata[CONFIGS_METADATA_KEY])
    return {name: cls.load_config(str(LTX23_CONFIG_DIR / name)) for name, cls in diffusers_classes().items()}


def declared_configs_json(metadata: dict[str, str]) -> dict[str, dict]:
    """The transformer and connectors configs `diffusers_configs` would give, read as plain JSON (no
    diffusers import: an early check stays cheap)."""
    if CONFIGS_METADATA_KEY in metadata:
        return json.loads(metadata[CONFIGS_METADATA_KEY])
    return {
        name: json.loads((LTX23_CONFIG_DIR / name / "config.json").read_text())
        for name in ("transformer", "connectors")
    }


# --- Lightricks' metadata: which LTX a file is, and the `config` ltx-core builds from ---------------

LIGHTRICKS_CONFIG_KEY = "config"
VERSION_KEY = "model_version"
GEMMA_SOURCE_KEY = "gemma_source_checkpoint"  # LTX-2.5 onwards: the Gemma 4 the file was trained with
LTX23_MODEL_VERSION = "2.3.0"
# What 2.3 added to 2.0's transformer section (ltx-core: the V2 feature extractor, prompt AdaLN).
LTX23_MARKERS = {"caption_proj_before_connector": True, "cross_attention_adaln": True}

# Values ltx-core 1.0.0 checks (`check_config_value`) or that no diffusers config varies, spelled as
# in Lightricks' released 2.3 file.
_FIXED = {
    "_class_name": "AVTransformer3DModel",
    "dropout": 0.0,
    "attention_type": "default",
    "num_vector_embeds": None,
    "num_embeds_ada_norm": 1000,
    "use_linear_projection": False,
    "only_cross_attention": False,
    "cross_attention_norm": True,
    "double_self_attention": False,
    "upcast_attention": False,
    "qk_norm": "rms_norm",
    "standardization_norm": "rms_norm",
    "positional_embedding_type": "rope",
    "use_audio_video_cross_attention": True,
    "share_ff": False,
    "av_cross_ada_norm": True,
    "use_middle_indices_grid": True,
    "use_embeddings_connector": True,
}
# Lightricks name <- diffusers (component, name), where the value carries over as is.
_SAME = {
    name: ("transformer", name)
    for name in (
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "num_layers",
        "cross_attention_dim",
        "norm_eps",
        "caption_channels",
        "activation_fn",
        "attention_bias",
        "norm_elementwise_affine",
        "audio_num_attention_heads",
        "audio_attention_head_dim",
        "audio_in_channels",
        "audio_out_channels",
        "audio_cross_attention_dim",
        "timestep_scale_multiplier",
        "rope_type",
    )
} | {
    "positional_embedding_theta": ("transformer", "rope_theta"),
    "av_ca_timestep_scale_multiplier": ("transformer", "cross_attn_timestep_scale_multiplier"),
    "apply_gated_attention": ("transformer", "gated_attn"),
    "cross_attention_adaln": ("transformer", "cross_attn_mod"),
    "connector_num_attention_heads": ("connectors", "video_connector_num_attention_heads"),
    "connector_attention_head_dim": ("connectors", "video_connector_attention_head_dim"),
    "connector_num_layers": ("connectors", "video_connector_num_layers"),
    "connector_num_learnable_registers": ("connectors", "video_connector_num_learnable_registers"),
    "connector_apply_gated_attention": ("connectors", "video_gated_attn"),
    "audio_connector_num_attention_heads": ("connectors", "audio_connector_num_attention_heads"),
    "audio_connector_attention_head_dim": ("connectors", "audio_connector_attention_head_dim"),
    "audio_connector_num_layers": ("connectors", "audio_connector_num_layers"),
}
# 2.3's text projection sits before the connectors (ltx-core's FeatureExtractorV2 needs all four).
_PROJECTION_BEFORE_CONNECTOR = {
    "caption_proj_before_connector": True,
    "caption_projection_first_linear": False,
    "caption_proj_input_norm": False,
    "caption_projection_second_linear": False,
    "text_encoder_norm_type": "per_token_rms",
}


def lightricks_config(configs: dict[str, dict]) -> dict:
    """The `config` metadata of a single file holding these diffusers transformer and connectors:
    the sections ltx-core builds the transformer, the connectors and the text projection from."""
    transformer = configs["transformer"]
    section = {**_FIXED, **{name: _plain(configs[part][key]) for name, (part, key) in _SAME.items()}}
    section.update(
        positional_embedding_max_pos=[
            transformer["pos_embed_max_pos"],
            transformer["base_height"],
            transformer["base_width"],
        ],
        audio_positional_embedding_max_pos=[transformer["audio_pos_embed_max_pos"]],
        frequencies_precision="float64" if transformer["rope_double_precision"] else "float32",
        connector_positional_embedding_max_pos=[configs["connectors"]["connector_rope_base_seq_len"]],
    )
    if not transformer["use_prompt_embeddings"]:
        section.update(_PROJECTION_BEFORE_CONNECTOR)
    return {"transformer": section}


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def checkpoint_version(metadata: dict[str, str]) -> tuple[str, str] | None:
    """(LTX version, the metadata that says so) of a Lightricks file; None when it says nothing
    (files written by earlier versions of this project)."""
    declared = metadata.get(VERSION_KEY)
    if declared:
        numbers = re.match(r"\d+(?:[.-]\d+)?", declared)
        return (numbers.group(0).replace("-", ".") if numbers else declared), f"{VERSION_KEY}={declared!r}"
    if GEMMA_SOURCE_KEY in metadata:  # only 2.5 onwards names its Gemma
        declared = _json(metadata[GEMMA_SOURCE_KEY]).get("ltx_version") or "2.5"
        return ".".join(str(declared).split(".")[:2]), f"{GEMMA_SOURCE_KEY} (a Gemma 4 text encoder)"
    transformer = _json(metadata.get(LIGHTRICKS_CONFIG_KEY)).get("transformer")
    if not isinstance(transformer, dict):
        return None
    present = {key: transformer.get(key) for key in LTX23_MARKERS}
    if present == LTX23_MARKERS:
        return "2.3", f"config {LTX23_MARKERS}"
    if not any(present.values()):
        return "2.0", f"config without {', '.join(LTX23_MARKERS)}"
    return "unknown", f"config {present}"


def lightricks_section(metadata: dict[str, str]) -> dict:
    """The transformer section of a file's `config` ({} when there is none)."""
    section = _json(metadata.get(LIGHTRICKS_CONFIG_KEY)).get("transformer")
    return section if isinstance(section, dict) else {}


def config_differences(section: dict, configs: dict[str, dict]) -> dict[str, tuple]:
    """{key: (the file's value, the value these diffusers configs imply)} over the keys both name."""
    if not section:
        return {}
    expected = lightricks_config(configs)["transformer"]
    return {
        key: (section[key], value)
        for key, value in expected.items()
        if key in section and not key.startswith("_") and section[key] != value
    }


def _json(text: str | None) -> dict:
    try:
        value = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}
