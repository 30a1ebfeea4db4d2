"""The transformer's stream widths and depth, from the shipped configs (no model is built): what a
LoRA file's tensor shapes must match (lib/train/lora_file.py)."""

from __future__ import annotations

from lib.model.configs import part_config


def transformer_widths(model: str) -> tuple[int, int, int]:
    """(video width, audio width, blocks): heads x head size of each stream, and the block count."""
    config = part_config(model, "transformer")
    return (
        config["num_attention_heads"] * config["attention_head_dim"],
        config["audio_num_attention_heads"] * config["audio_attention_head_dim"],
        config["num_layers"],
    )
