"""The LoRA training loop (docs/architecture.md, "Training"): flow matching with per-token
timesteps on cached latents.

peft LoRA (alpha = rank) on the attention projections and FFNs; AdamW (or 8-bit AdamW) with
ltx-trainer's weight decay and linear decay of the rate to a tenth, after a short warmup; seeded and reproducible; bf16 autocast + gradient checkpointing on CUDA
(optionally offloading the checkpointed inputs to host memory), fp32 on CPU; DDP when launched
under torchrun; atomic checkpoints that resume bit-for-bit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from lib.core import precision
from lib.core.errors import TrainingDiverged
from lib.core.settings import TrainSettings
from lib.model.conditioning import ConditioningSettings, Example, build_inputs, masked_loss, pack_audio, predict
from lib.train.checkpoint import load_checkpoint, save_checkpoint
from lib.train.lora_io import add_lora
from lib.train.offload import BlockInputOffload

__all__ = ["TrainSettings"]  # re-exported: the settings live in lib.core.settings

# Shifted logit-normal sigmas, the LTX-2 recipe (ltx-trainer's ShiftedLogitNormalTimestepSampler):
# the shift is linear in the modality's own token count through (1024, 0.95) and (4096, 2.05),
# clamped at neither end (6,912 video tokens -> 3.06; 93 audio latents -> 0.62); samples are
# stretched between the 0.5th and 99.9th percentiles of the shifted normal, reflected at EPS,
# with a uniform fallback 10 % of the time.
SHIFT_SEQ_LEN = (1024, 4096)
SHIFT_RANGE = (0.95, 2.05)
UNIFORM_FRACTION = 0.1
SIGMA_EPS = 1e-3
MIN_8BIT_SIZE = 4096  # bitsandbytes' default: smaller tensors keep fp32 moments (all of the tiny preset's)
NORMAL_LOW, NORMAL_HIGH = -2.5758, 3.0902  # 0.5th and 99.9th percentiles of N(0, 1)


@dataclass
class TrainResult:
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    checkpoints: list[str] = field(default_factory=list)


def sequence_shift(tokens: int) -> float:
    (low_len, high_len), (low, high) = SHIFT_SEQ_LEN, SHIFT_RANGE
    return low + (tokens - low_len) * (high - low) / (high_len - low_len)


def sample_sigmas(generator: torch.Generator, tokens: int, count: int = 1) -> torch.Tensor:
    """`count` noise levels in (0, 1] for a sequence of `tokens` tokens of one modality."""
    shift = sequence_shift(tokens)
    logit_normal = torch.sigmoid(torch.randn(count, generator=generator, dtype=torch.float64) + shift)
    low, high = (torch.sigmoid(torch.tensor(shift + bound, dtype=torch.float64)) for bound in (NORMAL_LOW, NORMAL_HIGH))
    stretched = (logit_normal - low) / (high - low)
    stretched = torch.where(stretched >= SIGMA_EPS, stretched, 2 * SIGMA_EPS - stretched).clamp(0, 1)
    uniform = (1 - SIGMA_EPS) * torch.rand(count, generator=generator, dtype=torch.float64) + SIGMA_EPS
    use_uniform = torch.rand(count, generator=generator, dtype=torch.float64) < UNIFORM_FRACTION
    return torch.where(use_uniform, uniform, stretched).float()


def lr_factor(settings: TrainSettings) -> Callable[[int], float]:
    """The rate's multiplier for 0-based `step`: a linear warmup, then ltx-trainer's `LinearLR`
    (1.0 down to `lr_end_factor`) over the steps that remain."""
    decay_steps = max(settings.steps - settings.warmup_steps, 1)

    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress = min(step - settings.warmup_steps, decay_steps) / decay_steps
        return 1.0 + (settings.lr_end_factor - 1.0) * progress

    return factor


def _draw(generator: torch.Generator, examples: list[Example]):
    """One example, and per modality its own sigma (from its own token count) and noise."""
    example = examples[int(torch.randint(len(examples), (), generator=generator))]
    video_tokens = example.video_mask.numel()
    audio_shape = pack_audio(example.target_audio).shape
    video_sigma = sample_sigmas(generator, video_tokens)[0]
    audio_sigma = sample_sigmas(generator, audio_shape[0])[0]
    video_noise = torch.randn(video_tokens, example.target_video.shape[0], generator=generator)
    audio_noise = torch.randn(audio_shape, generator=generator)
    return example, video_sigma, audio_sigma, video_noise, audio_noise


def training_step(
    transformer,
    model,
    examples,
    generator,
    device,
    *,
    conditioning: ConditioningSettings,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, dict]:
    """One example: draw sigma and noise, condition, predict, masked loss (not yet backpropagated).

    `dtype` is the frozen base's compute dtype: inputs are cast to it and the forward runs under
    autocast, while the fp32 LoRA weights receive fp32 gradients.
    """
    example, video_sigma, audio_sigma, video_noise, audio_noise = _draw(generator, examples)
    inputs = build_inputs(
        transformer,
        example,
        video_sigma.to(device),
        audio_sigma.to(device),
        video_noise.to(device),
        audio_noise.to(device),
        conditioning=conditioning,
        dtype=dtype,
    )
    with precision.autocast(device, dtype):
        video, audio = predict(model, inputs)
    return masked_loss(video, audio, inputs)


def optimizer_step(loss: torch.Tensor, params, optimizer, scheduler, grad_clip: float) -> float:
    """Backpropagate, clip and step; returns the gradient norm. A non-finite norm (a NaN or
    infinite loss on any rank reaches every rank's norm through DDP's all-reduce) skips the update,
    so the LoRA and the last checkpoint stay as they were, and the caller stops the run."""
    loss.backward()
    norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    if math.isfinite(norm):
        optimizer.step()
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return norm


def diverged(trainer: "Trainer", loss: float, grad_norm: float) -> TrainingDiverged:
    done = len(trainer.losses) + 1
    rate = trainer.settings.learning_rate
    return TrainingDiverged(
        f"Training diverged at step {done} of {trainer.settings.steps}: the loss is {loss:g} and the gradient "
        f"norm {grad_norm:g}. Nothing was uploaded and nothing is billed. Try a lower learning_rate (this run: "
        f"{rate:g}; {rate / 4:g} is a safe next try), and check the dataset report for unusual clips."
    )


def build_optimizer(params, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW with fp32 state, or bitsandbytes' AdamW8bit (block-wise 8-bit moments: 2 bytes per
    LoRA parameter instead of 8)."""
    if settings.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay, min_8bit_size=MIN_8BIT_SIZE
        )
    return torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)


def distributed() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless running under torchrun with a process group."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


@dataclass
class Trainer:
    """Everything `setup` prepares and `step` advances (torchtune's recipe split: setup, step, fit)."""

    transformer: torch.nn.Module  # the base with the LoRA attached (trained in place)
    model: torch.nn.Module  # the same, wrapped in DDP when there are several ranks
    params: list[torch.nn.Parameter]  # the LoRA's, fp32
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # draws examples, noise levels and noise
    settings: TrainSettings
    conditioning: ConditioningSettings
    device: torch.device
    dtype: torch.dtype  # the frozen base's compute dtype
    rank: int = 0
    start: int = 0  # steps already done (a resumed run)
    losses: list[float] = field(default_factory=list)
    offload: BlockInputOffload | None = None  # what activation offloading moved, when it is on


def setup(
    transformer,
    settings: TrainSettings,
    resume_from: str | Path | None = None,
    *,
    conditioning: ConditioningSettings,
) -> Trainer:
    """Attach the LoRA, build optimizer and schedule, seed, and resume when asked."""
    rank, world = distributed()
    device, dtype = next(transformer.parameters()).device, next(transformer.parameters()).dtype
    add_lora(transformer, settings.rank, settings.seed)
    offload = BlockInputOffload() if settings.offload_activations else None
    if device.type == "cuda" or offload is not None:  # offloading moves what checkpointing keeps
        transformer.enable_gradient_checkpointing(offload)
    transformer.train()
    model = torch.nn.parallel.DistributedDataParallel(transformer) if world > 1 else transformer
    params = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, settings)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(settings))
    trainer = Trainer(
        transformer,
        model,
        params,
        optimizer,
        scheduler,
        torch.Generator().manual_seed(settings.seed * 1000 + rank),  # ranks see different draws
        settings,
        conditioning,
        device,
        dtype,
        rank,
        offload=offload,
    )
    if resume_from:
        trainer.start, trainer.losses = load_checkpoint(
            resume_from, transformer, optimizer, trainer.scheduler, trainer.generator
        )
        if rank > 0:  # the checkpoint holds rank 0's draws; other ranks must keep drawing differently
            trainer.generator.manual_seed(settings.seed * 1000 + rank + 7919 * trainer.start)
    return trainer


def step(trainer: Trainer, examples: list[Example]) -> dict:
    """One optimizer step on one drawn example; returns the loss terms."""
    loss, loss_terms = training_step(
        trainer.transformer,
        trainer.model,
        examples,
        trainer.generator,
        trainer.device,
        conditioning=trainer.conditioning,
        dtype=trainer.dtype,
    )
    grad_norm = optimizer_step(loss, trainer.params, trainer.optimizer, trainer.scheduler, trainer.settings.grad_clip)
    if not (math.isfinite(loss_terms["loss"]) and math.isfinite(grad_norm)):
        raise diverged(trainer, loss_terms["loss"], grad_norm)
    trainer.losses.append(loss_terms["loss"])
    return loss_terms


def fit(
    transformer,
    examples: list[Example],
    settings: TrainSettings,
    checkpoint_dir: Path | None = None,
    resume_from: str | Path | None = None,
    on_step: Callable[[dict], None] | None = None,
    *,
    conditioning: ConditioningSettings,
) -> TrainResult:
    """Train an fp32 LoRA on `transformer` (whatever dtype its base is in) in place: setup, then
    `step` until `settings.steps`, reporting progress and writing checkpoints on rank 0."""
    trainer = setup(transformer, settings, resume_from, conditioning=conditioning)
    result = TrainResult(losses=trainer.losses)
    began = time.perf_counter()
    for done in range(trainer.start + 1, settings.steps + 1):
        loss_terms = step(trainer, examples)
        if trainer.rank == 0:
            _report(on_step, trainer, loss_terms, done, time.perf_counter() - began)
            if checkpoint_dir and settings.checkpoint_every and done % settings.checkpoint_every == 0:
                path = save_checkpoint(
                    checkpoint_dir / f"checkpoint-{done:06d}.safetensors",
                    transformer,
                    trainer.optimizer,
                    trainer.scheduler,
                    trainer.generator,
                    done,
                    trainer.losses,
                )
                result.checkpoints.append(str(path))
    transformer.eval()
    result.steps = settings.steps
    return result


def _report(on_step, trainer: Trainer, loss_terms: dict, done: int, elapsed: float) -> None:
    if on_step is None:
        return
    rate = (done - trainer.start) / max(elapsed, 1e-9)
    on_step(
        {
            "step": done,
            "steps": trainer.settings.steps,
            **loss_terms,
            "it_per_s": rate,
            "eta_s": (trainer.settings.steps - done) / rate,
            "lr": trainer.scheduler.get_last_lr()[0],
        }
    )
