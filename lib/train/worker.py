"""A training job: the unit the GPU flow runs in-process, or launches under `torchrun` for
multi-GPU (DDP). `python -m lib.train.worker job.json` is the torchrun entry point.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from lib.core import precision
from lib.core.errors import TrainingDiverged
from lib.core.plan import RunPlan
from lib.model.encoding import load_example
from lib.train.lora_io import lora_state_dict, save_lora
from lib.train.training import TrainResult, distributed, train

DIVERGED_NOTE = "diverged.txt"  # under torchrun: the message the launching task raises again
EXIT_DIVERGED = 3


def distributed_rank() -> int:
    return distributed()[0]


class TrainJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    plan: RunPlan
    latents: list[str]
    output_dir: str  # lora.safetensors, losses.json
    checkpoint_dir: str | None = None


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over keys and raw bytes (any dtype, bf16 included)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(tensors.items()):
        digest.update(key.encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def lora_digest(transformer, dtype: torch.dtype = torch.float32) -> str:
    return tensors_digest(lora_state_dict(transformer, dtype))


def run_job(job: TrainJob, components=None, on_step=None) -> TrainResult:
    """Train; rank 0 writes lora.safetensors and losses.json into job.output_dir."""
    from lib.model import keep_only, open_model

    rank, world = distributed()
    plan = job.plan
    if components is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        components = open_model(
            plan.model,
            device=device,
            source=plan.model_source,
            text_encoder_source=plan.text_encoder_source,
            base_precision=plan.base_precision,
        )
    keep_only(components, "transformer")  # a rank needs nothing else: latents and prompts are cached
    output = Path(job.output_dir)
    output.mkdir(parents=True, exist_ok=True)  # the digests below are written before any atomic write creates it
    examples = [load_example(path) for path in job.latents]
    checkpoints = Path(job.checkpoint_dir) if job.checkpoint_dir else output / "checkpoints"
    result = train(
        components.transformer, examples, plan.train, checkpoints, plan.resume_from, on_step, plan.conditioning
    )
    if world > 1:  # every rank records its LoRA: DDP must leave them identical
        lora_dtype = precision.dtype_named(plan.lora_dtype)
        (output / f"lora-digest-rank{rank}.txt").write_text(lora_digest(components.transformer, lora_dtype))
    if rank == 0:
        save_lora(
            components.transformer,
            output / "lora.safetensors",
            plan.train.rank,
            plan.lora_info,
            precision.dtype_named(plan.lora_dtype),
        )
        (output / "losses.json").write_text(json.dumps(result.losses))
    return result


def main(argv: list[str]) -> int:
    job = TrainJob.model_validate_json(Path(argv[0]).read_text())
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    try:
        run_job(job)
    except TrainingDiverged as error:  # every rank saw the same gradient norm; rank 0 tells the launcher
        if distributed_rank() == 0:
            (Path(job.output_dir) / DIVERGED_NOTE).write_text(error.message)
        return EXIT_DIVERGED
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
