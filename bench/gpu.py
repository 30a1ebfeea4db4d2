"""GPU acceptance: the full-size LTX-2.3 transformer with random weights (no download) trained
with the project's own loop (lib.train.training.fit: LoRA, AdamW, gradient checkpointing on CUDA) at
the default request (medium 1:1, 89 frames, rank 32), once per base precision. Per precision:
peak memory, median step time, MFU (model FLOPs from a meta-device FLOP count ÷ the device's
dense bf16 peak) and the memory plan's prediction (`av2av plan`) with measured ÷ predicted.

    python bench/gpu.py                  # on a GPU: bf16, int8, fp8 (Ada/Hopper only), nf4
    python bench/gpu.py --precisions int8+offload nf4+offload   # with activation offloading on
    python bench/gpu.py --preset tiny    # on CPU: the tiny preset at 49 frames, 768x768 (tests)

Each precision runs in its own process, so one's memory never counts against the next; on CPU
the peak is the process's peak RSS growth during training. Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

# Dense bf16 peaks (no sparsity), by device-name substring.
PEAK_BF16_FLOPS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "L4": 121e12,
    "RTX 4090": 165e12,
    "A6000": 155e12,
}
GB = 1e9


def request_for(preset: str, variant: str):
    """The request a variant ("int8", "int8+offload") measures: the defaults, or the tiny preset's."""
    from lib.core.config import TrainRequest

    precision, _, offload = variant.partition("+")
    fields = {
        "training_data_url": "bench.zip",
        "base_precision": precision,
        "offload_activations": "on" if offload == "offload" else "off",
    }
    if preset == "tiny":
        fields.update(model="tiny", resolution="medium", aspect_ratio="1:1", number_of_frames=49)
    return TrainRequest(**fields)


def synthetic_examples(request, transformer, count: int = 2):
    from lib.model.conditioning import Example
    from lib.train.memory_plan import latent_shapes

    target, reference, audio = latent_shapes(request)
    config = transformer.config
    text = 32 if request.model == "tiny" else 1024
    mel = 4 if request.model == "tiny" else 16
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    return [
        Example(
            target_video=rand(config.in_channels, *target),
            reference_video=rand(config.in_channels, *reference),
            target_audio=rand(config.audio_in_channels // mel, audio, mel),
            reference_audio=rand(config.audio_in_channels // mel, audio, mel),
            video_mask=torch.rand(target, generator=generator) < 0.5,
            text={
                "encoder_hidden_states": rand(1, text, config.cross_attention_dim),
                "audio_encoder_hidden_states": rand(1, text, config.audio_cross_attention_dim),
                "encoder_attention_mask": torch.ones(1, text, dtype=torch.int64),
            },
            frame_rate=24.0,
        )
        for _ in range(count)
    ]


def rss_bytes() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(preset: str, precision: str, steps: int) -> dict:
    """Train `steps` steps in this process; peak memory, step times, losses."""
    from lib.core.settings import ConditioningSettings
    from lib.model.part_loaders import random_transformer
    from lib.train.training import TrainSettings, fit

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    request = request_for(preset, precision)
    transformer = random_transformer(request.model, device, dtype, request.base_precision)
    examples = synthetic_examples(request, transformer)
    stamps = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    baseline = rss_bytes()
    settings = TrainSettings(
        rank=request.rank,
        steps=steps,
        learning_rate=1e-4,
        optimizer=request.optimizer,
        offload_activations=request.offload_activations == "on",
    )
    conditioning = ConditioningSettings(
        reference_audio_positions=request.reference_audio_positions,
        reference_downscale=request.reference_downscale_factor,
    )
    result = fit(
        transformer,
        examples,
        settings,
        on_step=lambda event: stamps.append(time.perf_counter()),
        conditioning=conditioning,
    )
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline
    times = [b - a for a, b in zip(stamps, stamps[1:])][1:] or [0.0]  # the first steps warm up
    return {
        "peak_bytes": peak,
        "step_s": statistics.median(times),
        "losses": result.losses,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def predicted(preset: str, precision: str) -> tuple[int, int]:
    """(bytes the plan predicts for what `measure` measures, model FLOPs per step)."""
    from lib.train.memory_plan import latent_shapes, plan_memory
    from lib.train.step_cost import count_step_flops

    request = request_for(preset, precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan = plan_memory(request, device, suggest=False)
    train_rows = [row for row in plan.rows if "train" in row.stages]
    # On CPU the baseline is taken after the transformer exists: only the step's own memory grows.
    predicted_bytes = sum(row.bytes for row in train_rows if device == "cuda" or row.name != "transformer")
    return predicted_bytes, count_step_flops(request.model, *latent_shapes(request), request.rank)


def child_environment() -> dict:
    # glibc keeps freed heap chunks below its (adaptive) mmap threshold, so peak RSS would count
    # allocator slack as memory the step needed; from 64 KiB up, allocations are mmapped and
    # handed back on free, and RSS follows what is live. (No effect on CUDA memory.)
    return {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}


def precisions_for(preset: str) -> list[str]:
    if torch.cuda.is_available() and torch.cuda.get_device_capability() < (8, 9):
        return ["bf16", "int8", "nf4"]  # fp8 needs Ada or Hopper
    return ["bf16", "int8", "fp8", "nf4"]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=("ltx-2.3", "tiny"), default="ltx-2.3")
    parser.add_argument("--steps", type=int, default=None, help="steps per precision (20 on GPU, 3 on CPU)")
    parser.add_argument("--precisions", nargs="*", default=None)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: measure one precision, print JSON
    args = parser.parse_args(argv)
    steps = args.steps or (20 if torch.cuda.is_available() else 3)
    if args.preset == "tiny" and any("+offload" in v for v in args.precisions or ()):
        parser.error("+offload needs gradient checkpointing, which the CPU plan of the tiny preset does not model")
    if args.one:
        print(json.dumps(measure(args.preset, args.one, steps)))
        return 0
    results = {}
    for precision in args.precisions or precisions_for(args.preset):
        began = time.perf_counter()
        child = subprocess.run(
            [sys.executable, __file__, "--preset", args.preset, "--steps", str(steps), "--one", precision],
            capture_output=True,
            text=True,
            env=child_environment(),
        )
        if child.returncode:
            results[precision] = {"error": (child.stderr or child.stdout).strip().splitlines()[-1:]}
            continue
        measured = json.loads(child.stdout.strip().splitlines()[-1])
        plan_bytes, flops = predicted(args.preset, precision)
        peak_flops = next((v for k, v in PEAK_BF16_FLOPS.items() if k in measured["device"]), None)
        results[precision] = {
            "peak_gb": round(measured["peak_bytes"] / GB, 3),
            "plan_gb": round(plan_bytes / GB, 3),
            "measured_over_planned": round(measured["peak_bytes"] / plan_bytes, 3),
            "median_step_s": round(measured["step_s"], 3),
            "model_tflop_per_step": round(flops / 1e12, 3),
            "mfu": round(flops / measured["step_s"] / peak_flops, 3) if peak_flops and measured["step_s"] else None,
            "loss_first": round(measured["losses"][0], 4),
            "loss_last": round(measured["losses"][-1], 4),
            "device": measured["device"],
            "wall_s": round(time.perf_counter() - began, 1),
        }
    print(json.dumps({"preset": args.preset, "steps": steps, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
