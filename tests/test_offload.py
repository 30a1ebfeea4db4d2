"""Activation offloading (lib/train/offload.py): the residual stream that gradient checkpointing
keeps per block moves to host memory, and training is bit-for-bit the same."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from lib.train.training import TrainSettings, setup, step
from tests.training_fixtures import SAME_SIZE_ALIGNED, fresh_transformer, single_thread, training_data

__all__ = ["single_thread", "training_data"]
STEPS = 3


def _run(data, offload: bool):
    settings = TrainSettings(rank=8, steps=STEPS, learning_rate=1e-2, seed=5, offload_activations=offload)
    trainer = setup(fresh_transformer(data), settings, conditioning=SAME_SIZE_ALIGNED)
    if not offload:  # the same checkpointed step, on CPU, without moving anything
        trainer.transformer.enable_gradient_checkpointing()
    for _ in range(STEPS):
        step(trainer, data.examples)
    lora = {name: p.detach().clone() for name, p in trainer.transformer.named_parameters() if "lora_" in name}
    return trainer, lora


@pytest.mark.usefixtures("single_thread")
@pytest.mark.slow
def test_offloading_moves_each_blocks_residual_stream_and_trains_bit_for_bit_the_same(training_data):
    kept, kept_lora = _run(training_data, offload=False)
    moved, moved_lora = _run(training_data, offload=True)
    assert kept.transformer.is_gradient_checkpointing and moved.transformer.is_gradient_checkpointing
    assert moved.losses == kept.losses
    assert kept_lora.keys() == moved_lora.keys() and all(torch.equal(kept_lora[k], moved_lora[k]) for k in kept_lora)
    # every block after the first receives the video and audio hidden states of the block before it
    config = moved.transformer.config
    layers = config.num_layers
    assert moved.offload.offloaded_tensors == STEPS * 2 * (layers - 1)
    example = training_data.examples[0]
    video_tokens = example.video_mask.numel() + example.reference_video[0].numel()
    audio_tokens = 2 * example.target_audio.shape[1]  # reference and target audio
    width = config.num_attention_heads * config.attention_head_dim
    audio_width = config.audio_num_attention_heads * config.audio_attention_head_dim
    per_block = (video_tokens * width + audio_tokens * audio_width) * 4  # fp32 on CPU
    assert moved.offload.offloaded_bytes == STEPS * (layers - 1) * per_block


def test_offloading_is_off_unless_asked(training_data):
    trainer = setup(
        fresh_transformer(training_data),
        TrainSettings(rank=8, steps=1, learning_rate=1e-2),
        conditioning=SAME_SIZE_ALIGNED,
    )
    assert trainer.offload is None and not trainer.transformer.is_gradient_checkpointing
    on = dataclasses.replace(trainer.settings, offload_activations=True)
    assert setup(fresh_transformer(training_data), on, conditioning=SAME_SIZE_ALIGNED).offload is not None


def test_the_plans_host_memory_is_what_offloading_moves_per_step(training_data):
    from lib.core.config import TrainRequest
    from lib.train.memory_plan import latent_shapes, plan_memory

    request = TrainRequest(
        training_data_url="unused.zip",
        model="tiny",
        number_of_frames=17,
        resolution="low",
        aspect_ratio="16:9",
        reference_downscale=1,
        offload_activations="on",
    )
    example = training_data.examples[0]
    target, reference, audio = latent_shapes(request)
    assert (target, reference, audio) == (
        tuple(example.target_video.shape[1:]),
        tuple(example.reference_video.shape[1:]),
        example.target_audio.shape[1],
    )
    plan = plan_memory(request, "cuda", suggest=False)
    trainer, _ = _run(training_data, offload=True)
    assert plan.offload_activations and plan.host_bytes * 2 == trainer.offload.offloaded_bytes // STEPS  # bf16 vs fp32


def test_auto_offloads_only_when_the_plan_needs_it_to_fit_the_gpu():
    from lib.core.config import TrainRequest
    from lib.core.plan import parameters_key, plan_run
    from lib.train.memory_plan import GB, offload_decision, plan_memory

    auto = TrainRequest(training_data_url="x.zip", base_precision="int8")
    roomy, tight = plan_memory(auto, "cuda", 80), plan_memory(auto, "cuda", 32)
    assert not roomy.offload_activations and roomy.fits and roomy.host_bytes == 0
    # an int8 base returns fp32 from the attention's output projection (its query is fp32 under
    # CUDA autocast), so from the first block on the residual stream, and what offloading moves, is fp32
    assert tight.offload_activations and 6.4 < tight.host_bytes / GB < 7.0
    assert 3.0 < (roomy.peak - tight.peak) / GB < tight.host_bytes / GB
    assert roomy.offloaded_peak == tight.peak  # `av2av plan` shows what offloading would reach
    off = auto.model_copy(update={"offload_activations": "off"})
    refused = plan_memory(off, "cuda", 32)
    assert refused.peak == roomy.peak and not refused.fits
    assert any(s.startswith("offload_activations=auto") for s in refused.suggestions), refused.suggestions
    # the flow hands the decision to the run's settings; "on" and "off" are the user's word
    assert plan_run(auto, plan_offloads=offload_decision(tight)).train.offload_activations
    assert not plan_run(auto, plan_offloads=offload_decision(roomy)).train.offload_activations
    assert not plan_run(off, plan_offloads=True).train.offload_activations
    assert plan_run(auto.model_copy(update={"offload_activations": "on"})).train.offload_activations
    assert parameters_key(off) == parameters_key(auto)  # bit-identical results: the same run
