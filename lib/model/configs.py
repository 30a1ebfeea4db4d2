"""Model configurations: the tiny random preset (tests, demo, CI) and the real LTX-2.3.

Tiny configs satisfy the classes' shape rules (attention widths, register counts, the
vocoder's BWE stage). The real 2.3 configs are those of diffusers'
`scripts/convert_ltx2_to_diffusers.py` (version "2.3"), shipped in
lib/model/ltx23/<component>/config.json so a Lightricks single-file checkpoint loads without a
download and the real architecture can be built on the meta device.
"""

from __future__ import annotations

import json
from pathlib import Path

from lib.model.parts import TEXT_ENCODER

LTX23_CONFIG_DIR = Path(__file__).with_name("ltx23")
MAX_SEQUENCE_LENGTH = 1024  # LTX2Pipeline's default prompt length
TINY_MAX_SEQUENCE_LENGTH = 32  # a multiple of the tiny connectors' 8 registers; keeps tests cheap

# What makes a transformer 2.3 rather than 2.0; checked when loading a folder.
LTX23_FLAGS = dict(
    gated_attn=True,
    audio_gated_attn=True,
    cross_attn_mod=True,
    audio_cross_attn_mod=True,
    use_prompt_embeddings=False,
    perturbed_attn=True,
    rope_type="split",
)

# --- tiny configs: the smallest that satisfy the shape rules (widths, registers, BWE) ---
TINY_TRANSFORMER = dict(
    in_channels=8,
    out_channels=8,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=2,
    attention_head_dim=8,
    cross_attention_dim=16,
    vae_scale_factors=(8, 32, 32),
    pos_embed_max_pos=20,
    base_height=2048,
    base_width=2048,
    audio_in_channels=16,
    audio_out_channels=16,
    audio_patch_size=1,
    audio_patch_size_t=1,
    audio_num_attention_heads=2,
    audio_attention_head_dim=8,
    audio_cross_attention_dim=16,
    audio_scale_factor=4,
    audio_pos_embed_max_pos=20,
    audio_sampling_rate=16000,
    audio_hop_length=160,
    num_layers=2,
    activation_fn="gelu-approximate",
    qk_norm="rms_norm_across_heads",
    norm_elementwise_affine=False,
    norm_eps=1e-6,
    caption_channels=32,
    attention_bias=True,
    attention_out_bias=True,
    rope_theta=10000.0,
    rope_double_precision=True,
    causal_offset=1,
    timestep_scale_multiplier=1000,
    cross_attn_timestep_scale_multiplier=1000,
    **LTX23_FLAGS,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=8,
    block_out_channels=(8, 16, 32, 32),
    down_block_types=("LTX2VideoDownBlock3D",) * 4,
    decoder_block_out_channels=(8, 16, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1),
    decoder_layers_per_block=(1, 1, 1, 1, 1),
    spatio_temporal_scaling=(True,) * 4,
    decoder_spatio_temporal_scaling=(True,) * 4,
    decoder_inject_noise=(False,) * 5,
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_type=("spatiotemporal", "spatiotemporal", "temporal", "spatial"),
    upsample_residual=(False,) * 4,
    upsample_factor=(2, 2, 1, 2),
    timestep_conditioning=False,
    patch_size=4,
    patch_size_t=1,
    resnet_norm_eps=1e-6,
    encoder_causal=True,
    decoder_causal=False,
    encoder_spatial_padding_mode="zeros",
    decoder_spatial_padding_mode="zeros",
    # Must be explicit: unless told, the LTX-2 video VAE derives its ratios (64/16) from the scaling flags.
    spatial_compression_ratio=32,
    temporal_compression_ratio=8,
)
TINY_AUDIO_VAE = dict(
    base_channels=16,
    output_channels=2,
    ch_mult=(1, 2, 4),
    num_res_blocks=1,
    attn_resolutions=None,
    in_channels=2,
    resolution=256,
    latent_channels=4,
    norm_type="pixel",
    causality_axis="height",
    dropout=0.0,
    mid_block_add_attention=False,
    sample_rate=16000,
    mel_hop_length=160,
    is_causal=True,
    mel_bins=16,
    double_z=True,
)
TINY_VOCODER = dict(
    in_channels=32,
    hidden_channels=64,
    out_channels=2,
    upsample_kernel_sizes=[11, 4, 4, 4, 4, 4],
    upsample_factors=[5, 2, 2, 2, 2, 2],
    resnet_kernel_sizes=[3],
    resnet_dilations=[[1]],
    act_fn="snakebeta",
    antialias=True,
    antialias_ratio=2,
    antialias_kernel_size=12,
    final_act_fn=None,
    final_bias=False,
    bwe_in_channels=32,
    bwe_hidden_channels=32,
    bwe_out_channels=2,
    bwe_upsample_kernel_sizes=[12, 11, 4, 4, 4],
    bwe_upsample_factors=[6, 5, 2, 2, 2],
    bwe_resnet_kernel_sizes=[3],
    bwe_resnet_dilations=[[1]],
    bwe_act_fn="snakebeta",
    bwe_antialias=True,
    bwe_final_act_fn=None,
    bwe_final_bias=False,
    filter_length=512,
    hop_length=80,
    window_length=512,
    num_mel_channels=16,
    input_sampling_rate=16000,
    output_sampling_rate=48000,
)
TINY_CONNECTORS = dict(
    caption_channels=32,
    text_proj_in_factor=3,  # Gemma hidden_size, num_hidden_layers + 1
    video_connector_num_attention_heads=2,
    video_connector_attention_head_dim=8,
    video_connector_num_layers=1,
    video_connector_num_learnable_registers=8,
    video_gated_attn=True,
    audio_connector_num_attention_heads=2,
    audio_connector_attention_head_dim=8,
    audio_connector_num_layers=1,
    audio_connector_num_learnable_registers=8,
    audio_gated_attn=True,
    connector_rope_base_seq_len=4096,
    rope_theta=10000.0,
    rope_double_precision=True,
    causal_temporal_positioning=False,
    rope_type="split",
    per_modality_projections=True,
    video_hidden_dim=16,
    audio_hidden_dim=16,
    proj_bias=True,
)
TINY_SCHEDULER = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.95,
    max_shift=2.05,
    base_image_seq_len=1024,
    max_image_seq_len=4096,
    shift_terminal=0.1,
    time_shift_type="exponential",
)
TINY_GEMMA_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    max_position_embeddings=256,
    sliding_window=16,
    pad_token_id=0,
)
# Gemma3ForConditionalGeneration insists on a vision tower even for text (transformers requires it).
TINY_GEMMA_VISION = dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
)
TINY_SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_image>",
    "<end_of_image>",
    "<image_soft_token>",
)


def tiny_vocab() -> dict[str, int]:
    """The tiny tokenizer's vocabulary: specials, then byte fallback for anything, then "▁" and a-z
    so plain words stay short."""
    tokens = [*TINY_SPECIALS, *(f"<0x{b:02X}>" for b in range(256)), "▁", *"abcdefghijklmnopqrstuvwxyz"]
    return {token: index for index, token in enumerate(tokens)}


def tiny_text_encoder_config():
    """The tiny preset's Gemma3Config."""
    from transformers import Gemma3Config

    return Gemma3Config(
        text_config=dict(vocab_size=len(tiny_vocab()), **TINY_GEMMA_TEXT),
        vision_config=TINY_GEMMA_VISION,
        mm_tokens_per_image=4,
        boi_token_index=5,
        eoi_token_index=6,
        image_token_index=7,
    )


_TINY = {
    "transformer": TINY_TRANSFORMER,
    "vae": TINY_VAE,
    "audio_vae": TINY_AUDIO_VAE,
    "vocoder": TINY_VOCODER,
    "connectors": TINY_CONNECTORS,
}


def part_config(model: str, name: str):
    """The config `name` of `model` ("tiny" or "ltx-2.3") is built from, without building it: a
    plain dict (the shipped config.json at real size), or for the text encoder a Gemma3Config."""
    if name == TEXT_ENCODER:
        return tiny_text_encoder_config() if model == "tiny" else _shipped_gemma_config()
    if model == "tiny":
        return _TINY[name]
    return json.loads((LTX23_CONFIG_DIR / name / "config.json").read_text())


def _shipped_gemma_config():
    from transformers import Gemma3Config

    found = json.loads((LTX23_CONFIG_DIR / TEXT_ENCODER / "config.json").read_text())
    return Gemma3Config(**{k: v for k, v in found.items() if k not in ("architectures", "model_type")})


def max_sequence_length(model: str) -> int:
    """The prompt length, in tokens, the text encoder is run at for `model`."""
    return TINY_MAX_SEQUENCE_LENGTH if model == "tiny" else MAX_SEQUENCE_LENGTH
