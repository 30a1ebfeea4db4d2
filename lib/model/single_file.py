"""Lightricks' single-file LTX-2.3 checkpoint <-> diffusers components.

Lightricks ships 2.3 as one `.safetensors` (transformer and text connectors under
`model.diffusion_model.`, then `vae.`, `audio_vae.`, `vocoder.`), Gemma separately. diffusers
0.42.1's single-file mapping knows 2.0 only (no `prompt_adaln`, no VAE up_blocks 7/8, nothing
for the BWE vocoder or the connectors) and loads non-strictly (missing weights stay on the meta
device). So the rename tables here are those of diffusers' `scripts/convert_ltx2_to_diffusers.py`
for version 2.3, applied the way that script applies them (in order, substring replace, special
handlers after), and every component is loaded strictly.

`to_lightricks_layout` is the inverse, used to write a single file (tests, export); it checks
that the forward mapping gives every key back.
"""
from __future__ import annotations

import re

TRANSFORMER_PREFIX = "model.diffusion_model."
CONNECTOR_PREFIXES = ("video_embeddings_connector", "audio_embeddings_connector", "transformer_1d_blocks",
                      "text_embedding_projection", "connectors.")
COMPONENT_PREFIXES = {"vae": "vae.", "audio_vae": "audio_vae.", "vocoder": "vocoder."}

_TRANSFORMER_20 = {
    "patchify_proj": "proj_in", "audio_patchify_proj": "audio_proj_in",
    "av_ca_video_scale_shift_adaln_single": "av_cross_attn_video_scale_shift",
    "av_ca_a2v_gate_adaln_single": "av_cross_attn_video_a2v_gate",
    "av_ca_audio_scale_shift_adaln_single": "av_cross_attn_audio_scale_shift",
    "av_ca_v2a_gate_adaln_single": "av_cross_attn_audio_v2a_gate",
    "scale_shift_table_a2v_ca_video": "video_a2v_cross_attn_scale_shift_table",
    "scale_shift_table_a2v_ca_audio": "audio_a2v_cross_attn_scale_shift_table",
    "q_norm": "norm_q", "k_norm": "norm_k",
}
RENAMES = {
    "transformer": {**_TRANSFORMER_20, "audio_prompt_adaln_single": "audio_prompt_adaln",
                    "prompt_adaln_single": "prompt_adaln"},
    "connectors": {
        "connectors.": "", "video_embeddings_connector": "video_connector",
        "audio_embeddings_connector": "audio_connector", "transformer_1d_blocks": "transformer_blocks",
        "text_embedding_projection.audio_aggregate_embed": "audio_text_proj_in",
        "text_embedding_projection.video_aggregate_embed": "video_text_proj_in",
        "q_norm": "norm_q", "k_norm": "norm_k"},
    "vae": {
        "down_blocks.0": "down_blocks.0", "down_blocks.1": "down_blocks.0.downsamplers.0",
        "down_blocks.2": "down_blocks.1", "down_blocks.3": "down_blocks.1.downsamplers.0",
        "down_blocks.4": "down_blocks.2", "down_blocks.5": "down_blocks.2.downsamplers.0",
        "down_blocks.6": "down_blocks.3", "down_blocks.7": "down_blocks.3.downsamplers.0",
        "down_blocks.8": "mid_block",
        "up_blocks.0": "mid_block", "up_blocks.1": "up_blocks.0.upsamplers.0", "up_blocks.2": "up_blocks.0",
        "up_blocks.3": "up_blocks.1.upsamplers.0", "up_blocks.4": "up_blocks.1",
        "up_blocks.5": "up_blocks.2.upsamplers.0", "up_blocks.6": "up_blocks.2",
        "last_time_embedder": "time_embedder", "last_scale_shift_table": "scale_shift_table",
        "res_blocks": "resnets", "per_channel_statistics.mean-of-means": "latents_mean",
        "per_channel_statistics.std-of-means": "latents_std",
        "up_blocks.7": "up_blocks.3.upsamplers.0", "up_blocks.8": "up_blocks.3"},
    "audio_vae": {"per_channel_statistics.mean-of-means": "latents_mean",
                  "per_channel_statistics.std-of-means": "latents_std"},
    "vocoder": {"resblocks": "resnets", "conv_pre": "conv_in", "conv_post": "conv_out", "act_post": "act_out",
                "downsample.lowpass": "downsample"},
}
# Statistics the diffusers VAEs do not keep (the conversion script drops them too).
DROPPED = ("per_channel_statistics.channel", "per_channel_statistics.mean-of-stds")


def split_checkpoint(keys) -> dict[str, list[str]]:
    """Checkpoint keys per diffusers component (unknown keys under "unknown")."""
    parts: dict[str, list[str]] = {name: [] for name in ("transformer", "connectors", *COMPONENT_PREFIXES, "unknown")}
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
    key = key.removeprefix(TRANSFORMER_PREFIX) if component in ("transformer", "connectors") \
        else key.removeprefix(COMPONENT_PREFIXES[component])
    if any(dropped in key for dropped in DROPPED):
        return None
    for old, new in RENAMES[component].items():
        key = key.replace(old, new)
    return _structural(component, key, forward=True)


# Renames that are not plain substring swaps: a leading module name, and the vocoder's blocks.
STRUCTURAL = {"transformer": (("adaln_single.", "time_embed."), ("audio_adaln_single.", "audio_time_embed.")),
              "vocoder": ((".ups.", ".upsamplers."),)}


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
    original = pattern.sub(lambda match: inverse[match.group(0)], key)   # one pass: no chained renames
    original = _structural(component, original, forward=False)
    prefix = TRANSFORMER_PREFIX if component in ("transformer", "connectors") else COMPONENT_PREFIXES[component]
    original = prefix + original
    if to_diffusers_key(component, original) != key:
        raise ValueError(f"{component} key {key!r} has no Lightricks name that maps back to it")
    return original


def _inverse_table(component: str, key: str) -> dict[str, str]:
    table = RENAMES[component]
    if component == "vae":   # "mid_block" is down_blocks.8 in the encoder and up_blocks.0 in the decoder
        excluded = "up_blocks" if key.startswith("encoder.") else "down_blocks"
        table = {old: new for old, new in table.items() if not old.startswith(excluded)}
    return {new: old for old, new in table.items() if new and new != old}
