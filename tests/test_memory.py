"""Fitting the real model in 24-32 GB: component lifetime (the ledger), a quantized frozen base,
the 8-bit optimizer, and the memory plan (`av2av plan`, the refusal before any GPU work)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lib.core.config import TrainRequest
from lib.core.errors import InvalidRequest
from lib.model import build_tiny, load_model, to_pipeline
from lib.train.lora_io import read_lora, save_lora
from lib.train.training import TrainSettings, fit
from tests.training_fixtures import SAME_SIZE_ALIGNED, evaluation_loss, fixed_inputs, single_thread, training_data

__all__ = ["single_thread", "training_data"]
ROOT = Path(__file__).resolve().parents[1]
QUANTIZED_WEIGHT = {"int8": "Int8Tensor", "fp8": "Float8Tensor", "nf4": "Params4bit"}


@pytest.mark.usefixtures("prefect_harness", "single_thread")
@pytest.mark.slow
def test_gpu_flow_keeps_only_the_transformer_while_training_and_encodes_one_at_a_time(
    training_data, tmp_path, monkeypatch
):
    import lib.train.training
    from flows.train_lora_gpu import train_lora_gpu
    from lib.core.plan import plan_run
    from lib.model import process_cache, resident

    shutil.copytree(training_data.cache_root / "conformed", tmp_path / "conformed")  # clips only: encode afresh
    monkeypatch.setenv("AV2AV_CACHE_DIR", str(tmp_path))
    request = TrainRequest(
        training_data_url="unused.zip",
        model="tiny",
        number_of_frames=17,
        resolution="low",
        aspect_ratio="16:9",
        number_of_steps=100,
        validation_steps=2,
        reference_downscale=1,
    )
    plan = plan_run(request, [training_data.clips[0]])
    plan = plan.model_copy(update={"train": dataclasses.replace(plan.train, steps=3)})
    seen, original_step = [], lib.train.training.training_step

    def recording_step(*args, **kwargs):
        components = process_cache.for_plan(plan)
        seen.append((set(resident(components)), components.ledger))
        return original_step(*args, **kwargs)

    monkeypatch.setattr(lib.train.training, "training_step", recording_step)
    process_cache.forget()
    state = train_lora_gpu(plan, training_data.clips, "ledger", str(tmp_path), return_state=True)
    assert state.is_completed(), state.message
    assert len(seen) == 3 and all(parts == {"transformer"} for parts, _ in seen), seen
    ledger = seen[0][1]
    encodes = ledger.spans("encode")
    # the distinct captions and the negative prompt, then the 2 distinct clips (the validation
    # sample is a training clip here); mapped onto threads, yet never two at once on one device
    assert len(encodes) >= 4
    assert all(later[0] >= earlier[1] for earlier, later in zip(encodes, encodes[1:])), encodes
    order = [(event, part) for _, event, part, _ in ledger.events if event in ("load", "release")]
    assert order.index(("release", "text_encoder")) < order.index(("load", "vae")), order
    assert order.index(("release", "vae")) < order.index(("load", "transformer")), order
    assert ("load", "vocoder") in order[order.index(("load", "transformer")) :], "decoders back for validation"
    assert (tmp_path / "runs" / "ledger" / "gpu" / "validation.mp4").is_file()


@pytest.mark.usefixtures("single_thread")
@pytest.mark.parametrize("precision", ["int8", "fp8", "nf4"])
@pytest.mark.slow
def test_quantized_base_trains_and_its_lora_loads_into_the_unquantized_pipeline(precision, training_data, tmp_path):
    quantized = load_model("tiny", device="cpu", base_precision=precision)
    transformer = quantized.transformer
    weight = transformer.transformer_blocks[0].attn1.to_q.weight
    assert type(weight).__name__ == QUANTIZED_WEIGHT[precision]
    before = evaluation_loss(transformer, training_data.examples)
    settings = TrainSettings(rank=8, steps=20, learning_rate=1e-2)
    result = fit(transformer, training_data.examples, settings, conditioning=SAME_SIZE_ALIGNED)
    after = evaluation_loss(transformer, training_data.examples)
    print(f"{precision}: evaluation loss {before:.4f} -> {after:.4f}")
    assert len(result.losses) == 20 and after < 0.95 * before
    assert {p.dtype for n, p in transformer.named_parameters() if "lora_" in n} == {torch.float32}
    path = save_lora(transformer, tmp_path / "lora.safetensors", 8, {"base_model": "tiny"}, torch.float32)
    tensors, _ = read_lora(path)
    assert all("lora_" in key for key in tensors)

    pipe = to_pipeline(build_tiny())
    pipe.load_lora_weights(str(path))
    example = training_data.examples[0]
    inputs = fixed_inputs(pipe.transformer, example)
    with torch.no_grad():
        loaded = pipe.transformer(**inputs.kwargs)[0]
        trained = transformer(**inputs.kwargs)[0]
        base = build_tiny().transformer(**inputs.kwargs)[0]
    effect, mismatch = (loaded - base).abs().max().item(), (loaded - trained).abs().max().item()
    print(f"{precision}: LoRA effect {effect:.3g}; unquantized-with-LoRA vs quantized-trained {mismatch:.3g}")
    assert effect > 1e-2 and mismatch < effect  # the LoRA changes the output; the base's rounding is smaller


@pytest.mark.usefixtures("single_thread")
@pytest.mark.slow
def test_adamw8bit_keeps_8bit_state_trains_and_resumes_from_its_checkpoint(training_data, tmp_path, monkeypatch):
    from safetensors import safe_open

    import lib.train.training

    monkeypatch.setattr(lib.train.training, "MIN_8BIT_SIZE", 0)  # the tiny LoRA's tensors are under the 4096 default
    settings = TrainSettings(rank=8, steps=12, learning_rate=1e-2, optimizer="adamw8bit", checkpoint_every=6)
    transformer = copy.deepcopy(training_data.components.transformer)
    before = evaluation_loss(transformer, training_data.examples)
    result = fit(transformer, training_data.examples, settings, checkpoint_dir=tmp_path, conditioning=SAME_SIZE_ALIGNED)
    assert evaluation_loss(transformer, training_data.examples) < 0.95 * before
    with safe_open(result.checkpoints[0], framework="pt") as handle:
        dtypes = {handle.get_tensor(k).dtype for k in handle.keys() if k.startswith("optim.")}
    assert torch.uint8 in dtypes, dtypes  # the 8-bit moments
    resumed = fit(
        copy.deepcopy(training_data.components.transformer),
        training_data.examples,
        settings,
        resume_from=result.checkpoints[0],
        conditioning=SAME_SIZE_ALIGNED,
    )
    assert resumed.losses == result.losses  # the nested 8-bit state came back exactly


def test_fp8_on_a_gpu_older_than_ada_is_refused_naming_what_it_needs(monkeypatch):
    from lib.model.quantize import check_base_precision

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    with pytest.raises(InvalidRequest) as refused:
        check_base_precision("fp8", "cuda")
    assert "base_precision: fp8" in str(refused.value) and "8.9" in str(refused.value)
    assert "A100" in str(refused.value) and "H100" in str(refused.value) and "int8 or nf4" in str(refused.value)
    check_base_precision("int8", "cuda")  # int8 runs there


@pytest.mark.slow
def test_plan_counts_the_real_architecture_and_orders_the_precisions():
    from lib.train.memory_plan import GB, plan_memory

    plans = {
        p: plan_memory(TrainRequest(training_data_url="x.zip", base_precision=p), "cuda", suggest=False)
        for p in ("bf16", "int8", "fp8", "nf4")
    }
    rows = {row.name: row for row in plans["bf16"].rows}
    assert round(rows["transformer"].parameters / 1e9, 2) == 18.99
    assert round(rows["connectors"].parameters / 1e9, 2) == 3.17
    assert round(rows["text_encoder"].parameters / 1e9, 1) == 12.2
    assert round(rows["LoRA rank 32: weights + grads + adamw"].parameters / 1e9, 2) == 0.31
    assert rows["transformer"].bytes == 2 * rows["transformer"].parameters
    peaks = {p: plan.peak / GB for p, plan in plans.items()}
    print("default request, peak GB:", {p: round(v, 1) for p, v in peaks.items()})
    assert peaks["nf4"] < peaks["int8"] <= peaks["fp8"] < peaks["bf16"] <= 80
    assert all(plan.peak_stage == "train" for plan in plans.values())


@pytest.mark.slow
def test_plan_is_within_20_percent_of_a_real_tiny_training_steps_peak_rss():
    """bench/gpu.py --preset tiny: the project's training loop on CPU, each precision in its own
    process; peak RSS growth over the step vs what the plan predicts for it."""
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--preset", "tiny", "--precisions", "bf16", "int8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps(report["results"]))
    for precision, result in report["results"].items():
        assert "error" not in result, result
        assert 0.8 <= result["measured_over_planned"] <= 1.2, (precision, result)
        assert result["model_tflop_per_step"] > 0 and result["median_step_s"] > 0


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.slow
def test_train_lora_refuses_a_request_over_the_declared_gpu_memory_before_any_work(tmp_path, monkeypatch):
    from flows.train_lora import train_lora

    monkeypatch.setenv("AV2AV_GPU_MEMORY_GB", "24")
    request = TrainRequest(training_data_url=str(tmp_path / "never-fetched.zip"), output_url=str(tmp_path / "out"))
    state = train_lora(request, return_state=True)
    assert state.is_failed() and state.name == "InvalidRequest", state.message
    assert "24 GB" in state.message and "Settings that fit: base_precision=nf4" in state.message, state.message
    assert not (tmp_path / "out").exists()  # nothing written, nothing billed


def test_av2av_plan_exit_status_table_and_json(tmp_path, capsys):
    from flows.cli import main

    config = tmp_path / "request.json"
    config.write_text(json.dumps({"training_data_url": "x.zip", "base_precision": "nf4"}))
    assert main(["plan", "--config", str(config), "--gpu-memory", "80"]) == 0
    table = capsys.readouterr().out
    assert "transformer" in table and "fits in 80 GB" in table and "peak:" in table
    assert main(["plan", "--config", str(config), "--gpu-memory", "12", "--json"]) == 2
    document = json.loads(capsys.readouterr().out)
    assert document["fits"] is False and document["gpu_memory_gb"] == 12 and document["peak_stage"] == "train"
    assert {row["name"] for row in document["rows"]} >= {"transformer", "text_encoder", "vae"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("autocast", [False, True], ids=["plain", "autocast"])
def test_fused_norms_match_diffusers_bit_for_bit_in_the_inputs_dtype_under_cudas_autocast_policy(dtype, autocast):
    """CUDA autocast runs rms_norm in fp32 (torch >= 2.12); the CPU's does not, so its policy is
    emulated (bench/real_width_block.cuda_emulation). Diffusers' norm returns the input's dtype
    either way; so must the fused one, with the same bits."""
    from diffusers.models.normalization import RMSNorm

    from bench.real_width_block import cuda_emulation
    from lib.model.fused_norm import FusedRMSNorm, fuse_rms_norms

    stock = torch.nn.Sequential(RMSNorm(256, eps=1e-6, elementwise_affine=False))
    fused = fuse_rms_norms(copy.deepcopy(stock))
    assert type(fused[0]) is FusedRMSNorm and not list(fused.parameters())
    hidden = (torch.randn(4, 33, 256, generator=torch.Generator().manual_seed(0)) * 7 + 1).to(dtype)
    with cuda_emulation(fused_kernel=False), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        expected, got = stock(hidden), fused(hidden)
        plain = torch.nn.RMSNorm(256, eps=1e-6, elementwise_affine=False)(hidden)
    assert plain.dtype == (torch.float32 if autocast else dtype)  # the emulated policy is live
    assert expected.dtype == got.dtype == dtype
    assert torch.equal(got, expected)


def test_the_meta_count_keeps_what_a_fused_norm_keeps_under_cuda_autocast():
    """On the meta device the plan runs CUDA's autocast policy: the fused norm keeps its bf16
    input and an fp32 rstd per row and returns bf16; torch's RMSNorm there gets an fp32 copy of
    its input (kept) and returns fp32."""
    from lib.model.fused_norm import FusedRMSNorm
    from lib.train.step_cost import _Saved, _Step

    rows, width = 96, 512
    for norm, kept, out_dtype in (
        (FusedRMSNorm(torch.Size([width]), 1e-6), rows * 4, torch.bfloat16),
        (torch.nn.RMSNorm(width, elementwise_affine=False), rows * (width + 1) * 4, torch.float32),
    ):
        with torch.device("meta"):
            model = torch.nn.Sequential(torch.nn.Linear(width, width), norm).to(torch.bfloat16)
            hidden = torch.empty(1, rows, width, dtype=torch.bfloat16, requires_grad=True)
        saved = _Saved(model, norm)
        with saved, _Step(torch.bfloat16, True, set(), "bf16").around(model):
            output = model(hidden)
        own, inputs, _ = saved.totals()
        assert output.dtype == out_dtype, norm
        assert (own, inputs) == (kept, rows * width * 2 if out_dtype == torch.bfloat16 else 0), norm
