"""The real model's code path: a bf16 base with fp32 LoRA weights, on the tiny preset on CPU."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from lib.core.config import TrainRequest, ValidationSample
from lib.model import load_model, to_pipeline
from lib.model.conditioning import build_inputs
from lib.train.lora_io import add_lora, read_lora, save_lora
from lib.train.training import TrainSettings, fit, optimizer_step, training_step
from tests.training_fixtures import CPU, SAME_SIZE_ALIGNED, fixed_draw, fixed_inputs, single_thread, training_data

__all__ = ["single_thread", "training_data"]
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def bf16():
    return load_model("tiny", device="cpu", dtype=torch.bfloat16)


@pytest.mark.slow
def test_lora_weights_and_optimizer_state_are_fp32_on_a_bf16_base(bf16, training_data):
    transformer = copy.deepcopy(bf16.transformer)
    add_lora(transformer, rank=8, seed=0)
    lora = {name: p for name, p in transformer.named_parameters() if p.requires_grad}
    assert lora and {p.dtype for p in lora.values()} == {torch.float32}
    assert {p.dtype for p in transformer.parameters() if not p.requires_grad} == {torch.bfloat16}
    # lora_B starts at 0; put it where bf16 cannot resolve a 2e-4 step (spacing at 0.1 is 4.9e-4)
    with torch.no_grad():
        for name, parameter in lora.items():
            if ".lora_B." in name:
                parameter.fill_(0.1)
    optimizer = torch.optim.AdamW(list(lora.values()), lr=2e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    loss, _ = training_step(
        transformer,
        transformer,
        training_data.examples,
        torch.Generator().manual_seed(0),
        CPU,
        conditioning=SAME_SIZE_ALIGNED,
        dtype=torch.bfloat16,
    )
    optimizer_step(loss, list(lora.values()), optimizer, scheduler, grad_clip=1.0)
    lora_b = {name: p for name, p in lora.items() if ".lora_B." in name}
    assert all((p != 0.1).all() for p in lora_b.values()), "a lora_B element did not move"
    assert {v.dtype for state in optimizer.state.values() for v in state.values() if v.ndim} == {torch.float32}


def test_training_keeps_lora_fp32_and_the_file_is_bf16(bf16, training_data, tmp_path):
    from lib.model import build_tiny

    transformer = copy.deepcopy(bf16.transformer)
    dtypes = set()

    def inspect(event):
        dtypes.update(p.dtype for name, p in transformer.named_parameters() if "lora_" in name)

    result = fit(
        transformer,
        training_data.examples,
        TrainSettings(rank=8, steps=6, learning_rate=1e-2),
        on_step=inspect,
        conditioning=SAME_SIZE_ALIGNED,
    )
    assert dtypes == {torch.float32} and len(result.losses) == 6
    path = save_lora(transformer, tmp_path / "lora.safetensors", 8, {"base_model": "tiny"})
    tensors, _ = read_lora(path)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}

    # The bf16 file loads into the (fp32) tiny pipeline and reproduces the trained model's output
    # to bf16 precision: the trained model itself runs a bf16 base.
    pipe = to_pipeline(build_tiny())
    pipe.load_lora_weights(str(path))
    example = training_data.examples[0]
    inputs = fixed_inputs(pipe.transformer, example)
    trained_inputs = build_inputs(
        transformer, example, *fixed_draw(example), conditioning=SAME_SIZE_ALIGNED, dtype=torch.bfloat16
    )
    with torch.no_grad():
        loaded = pipe.transformer(**inputs.kwargs)
        base = build_tiny().transformer(**inputs.kwargs)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            trained = transformer(**trained_inputs.kwargs)
    for got, want, untrained in zip(loaded, trained, base):
        scale = want.float().abs().max().item()
        error = (got - want.float()).abs().max().item()
        print(
            f"bf16 LoRA in fp32 pipeline vs trained bf16 model: max error {error:.3g} (scale {scale:.3g}); "
            f"LoRA effect {(got - untrained).abs().max().item():.3g}"
        )
        assert error <= 0.03 * scale  # bf16: 8 bits of mantissa, through 2 blocks
        assert (got - untrained).abs().max().item() > 3 * error  # the LoRA's effect is well above that


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_bf16_end_to_end_encode_train_periodic_and_final_reel(training_data, tmp_path, monkeypatch):
    """encode -> train -> periodic reel -> final reel through the GPU flow, the base in bf16."""
    import dataclasses

    from flows.train_lora_gpu import train_lora_gpu
    from lib.core.cache import Cache
    from lib.core.plan import plan_run, validation_conform_settings
    from lib.ingest.validation import prepare_samples
    from lib.media.synthetic import make_box_mask, make_clip
    from lib.publish.outputs import files_to_upload

    monkeypatch.setenv("AV2AV_COMPUTE_DTYPE", "bf16")
    cache = Cache.at(training_data.cache_root)  # where the training clips are
    monkeypatch.setenv("AV2AV_CACHE_DIR", cache.location)
    sample = ValidationSample(
        prompt="a square",
        video_url=str(make_clip(tmp_path / "s.mp4", 0.5, seed=1)),
        mask_url=str(make_box_mask(tmp_path / "m.png", (320, 180), (0.3, 0.3, 0.7, 0.7))),
        reference_video_url=str(make_clip(tmp_path / "r.mp4", 0.5, seed=2)),
    )
    request = TrainRequest(
        training_data_url="unused.zip",
        model="tiny",
        number_of_frames=17,
        resolution="low",
        aspect_ratio="16:9",
        validation=[sample],
        validation_number_of_frames=9,
        validation_resolution="low",
        validation_aspect_ratio="16:9",
        validation_every=2,
        validation_steps=2,
        reference_audio_positions="before",
        checkpoint_every=2,
    )
    validation_clips = prepare_samples(request.validation, validation_conform_settings(request), cache)
    plan = plan_run(request, validation_clips)
    plan = plan.model_copy(update={"train": dataclasses.replace(plan.train, steps=4, warmup_steps=0)})
    run_id = f"bf16-{tmp_path.name}"
    output = cache.path(f"runs/{run_id}/gpu")
    result = train_lora_gpu(plan, training_data.clips[:1], run_id, cache.location)
    # checkpoints stay on the worker (upload_checkpoints is off by default)
    assert set(result.files) == {"lora.safetensors", "loss.png", "validation.mp4", "validation-step000002.mp4"}
    assert result.steps == 4
    kept = sorted(p.name for p in Path(result.checkpoints_kept_in).iterdir())
    assert kept == ["checkpoint-000002.safetensors", "checkpoint-000004.safetensors"]
    assert not str(result.checkpoints_kept_in).startswith(str(output))  # outlives the staging folder
    checkpoints = sorted(Path(result.checkpoints_kept_in).iterdir())
    assert set(files_to_upload(output, checkpoints, upload_checkpoints=True)) == set(result.files) | {
        "checkpoints/checkpoint-000002.safetensors",
        "checkpoints/checkpoint-000004.safetensors",
    }
    with safe_open(str(output / "lora.safetensors"), framework="pt") as handle:
        metadata = handle.metadata()
        assert {handle.get_tensor(k).dtype for k in handle.keys()} == {torch.bfloat16}
    info = json.loads(metadata["av2av"])
    # 512x288 has no exact half: the reference trains at full resolution, and the file says so
    assert info["reference_audio_positions"] == "before" and info["reference_downscale"] == 1
    assert metadata["reference_downscale_factor"] == "1"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_norms_change_no_output_bit_and_no_weight(dtype, training_data):
    """The loaded transformer runs its weight-less RMSNorms as torch's kernel (less kept for
    backward); the output is bit-identical to diffusers' own and the state dict is the same."""
    from diffusers.models.normalization import RMSNorm

    stock = copy.deepcopy(training_data.components.transformer).to(dtype)
    loaded = load_model("tiny", device="cpu", dtype=dtype).transformer
    assert any(type(m) is RMSNorm and m.weight is None for m in stock.modules())
    assert not any(type(m) is RMSNorm and m.weight is None for m in loaded.modules())
    from lib.model.fused_norm import FusedRMSNorm

    assert sum(type(m) is FusedRMSNorm for m in loaded.modules()) == 8 * loaded.config.num_layers
    assert stock.state_dict().keys() == loaded.state_dict().keys()
    inputs = fixed_inputs(stock, training_data.examples[0])
    kwargs = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.kwargs.items()}
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(stock(**kwargs), loaded(**kwargs)))
