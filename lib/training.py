"""The LoRA training loop (DESIGN §5): flow matching with per-token timesteps on cached latents.

peft LoRA (alpha = rank) on the attention projections; AdamW; warmup then constant or cosine LR;
seeded and reproducible; bf16 autocast + gradient checkpointing on CUDA, fp32 on CPU; DDP when
launched under torchrun; atomic checkpoints that resume bit-for-bit.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lib.checkpoint import load_checkpoint, save_checkpoint
from lib.conditioning import Example, build_inputs, masked_loss, pack_audio, predict
from lib.lora_io import add_lora

# Shifted logit-normal sigmas (the LTX-2 recipe): the shift grows with sequence length.
SHIFT_SEQ_LEN = (1024, 4096)
SHIFT_RANGE = (0.95, 2.05)
UNIFORM_FRACTION = 0.1


@dataclass(frozen=True)
class TrainSettings:
    rank: int
    steps: int
    learning_rate: float
    seed: int = 0
    warmup_steps: int = 0
    schedule: str = "constant"            # or "cosine"
    checkpoint_every: int | None = None
    grad_clip: float = 1.0
    weight_decay: float = 0.0


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    checkpoints: list[str] = field(default_factory=list)


def sequence_shift(tokens: int) -> float:
    (low_len, high_len), (low, high) = SHIFT_SEQ_LEN, SHIFT_RANGE
    fraction = min(max((tokens - low_len) / (high_len - low_len), 0.0), 1.0)
    return low + fraction * (high - low)


def sample_sigma(generator: torch.Generator, tokens: int) -> torch.Tensor:
    """sigmoid(N(shift, 1)) most of the time, uniform for a fraction (keeps the extremes trained)."""
    if torch.rand((), generator=generator) < UNIFORM_FRACTION:
        return torch.rand((), generator=generator)
    return torch.sigmoid(torch.randn((), generator=generator) + sequence_shift(tokens))


def lr_factor(settings: TrainSettings) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.schedule == "cosine":
            progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0
    return factor


def _draw(generator: torch.Generator, examples: list[Example]):
    example = examples[int(torch.randint(len(examples), (), generator=generator))]
    tokens = example.video_mask.numel()
    video_sigma, audio_sigma = sample_sigma(generator, tokens), sample_sigma(generator, tokens)
    video_noise = torch.randn(tokens, example.target_video.shape[0], generator=generator)
    audio_noise = torch.randn(pack_audio(example.target_audio).shape, generator=generator)
    return example, video_sigma, audio_sigma, video_noise, audio_noise


def training_step(transformer, model, examples, generator, device) -> tuple[torch.Tensor, dict]:
    """One example: draw sigma and noise, condition, predict, masked loss (not yet backpropagated)."""
    example, video_sigma, audio_sigma, video_noise, audio_noise = _draw(generator, examples)
    inputs = build_inputs(transformer, example, video_sigma.to(device), audio_sigma.to(device),
                          video_noise.to(device), audio_noise.to(device))
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        video, audio = predict(model, inputs)
    return masked_loss(video, audio, inputs)


def optimizer_step(loss: torch.Tensor, params, optimizer, scheduler, grad_clip: float) -> None:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def _distributed() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


def train(transformer, examples: list[Example], settings: TrainSettings, checkpoint_dir: Path | None = None,
          resume_from: str | Path | None = None, on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train a LoRA on `transformer` in place; returns the loss history."""
    rank, world = _distributed()
    device = next(transformer.parameters()).device
    add_lora(transformer, settings.rank, settings.seed)
    if device.type == "cuda":
        transformer.enable_gradient_checkpointing()
    transformer.train()
    model = torch.nn.parallel.DistributedDataParallel(transformer) if world > 1 else transformer
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings))
    generator = torch.Generator().manual_seed(settings.seed * 1000 + rank)  # ranks see different draws
    result = TrainResult()
    start = 0
    if resume_from:
        start, result.losses = load_checkpoint(resume_from, transformer, optimizer, scheduler, generator)
        if rank > 0:  # the checkpoint holds rank 0's draws; other ranks must keep drawing differently
            generator.manual_seed(settings.seed * 1000 + rank + 7919 * start)
    began = time.perf_counter()
    for step in range(start, settings.steps):
        loss, parts = training_step(transformer, model, examples, generator, device)
        optimizer_step(loss, params, optimizer, scheduler, settings.grad_clip)
        result.losses.append(parts["loss"])
        if on_step is not None and rank == 0:
            elapsed = time.perf_counter() - began
            rate = (step + 1 - start) / max(elapsed, 1e-9)
            on_step({"step": step + 1, "steps": settings.steps, **parts, "it_per_s": rate,
                     "eta_s": (settings.steps - step - 1) / rate, "lr": scheduler.get_last_lr()[0]})
        if checkpoint_dir and settings.checkpoint_every and (step + 1) % settings.checkpoint_every == 0 and rank == 0:
            path = save_checkpoint(checkpoint_dir / f"checkpoint-{step + 1:06d}.safetensors", transformer,
                                   optimizer, scheduler, generator, step + 1, result.losses)
            result.checkpoints.append(str(path))
    transformer.eval()
    result.steps, result.seconds = settings.steps, time.perf_counter() - began
    return result
