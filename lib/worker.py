"""A training job: the unit the GPU flow runs in-process, or launches under `torchrun` for
multi-GPU (DDP). `python -m lib.worker job.json` is the torchrun entry point.
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

from lib.encoding import load_example
from lib.lora_io import lora_state_dict, save_lora
from lib.training import TrainResult, TrainSettings, train


class TrainJob(BaseModel):
    model_config = ConfigDict(frozen=True)

    model: str
    model_source: str | None = None
    latents: list[str]
    settings: dict              # TrainSettings fields
    output_dir: str
    resume_from: str | None = None
    lora_info: dict = {}        # metadata for the LoRA file: base model, trigger phrase, ...


def lora_digest(transformer) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(lora_state_dict(transformer).items()):
        digest.update(key.encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def run_job(job: TrainJob, components=None, on_step=None) -> TrainResult:
    """Train; rank 0 writes lora.safetensors and losses.json into job.output_dir."""
    from lib.model import load_model

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if components is None:
        device = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"
        components = load_model(job.model, device=device, source=job.model_source)
    settings = TrainSettings(**job.settings)
    output = Path(job.output_dir)
    output.mkdir(parents=True, exist_ok=True)  # the digests below are written before any atomic write creates it
    examples = [load_example(path) for path in job.latents]
    result = train(components.transformer, examples, settings, output / "checkpoints", job.resume_from, on_step)
    if world > 1:  # every rank records its LoRA: DDP must leave them identical
        (output / f"lora-digest-rank{rank}.txt").write_text(lora_digest(components.transformer))
    if rank == 0:
        save_lora(components.transformer, output / "lora.safetensors", settings.rank, job.lora_info)
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
    finally:
        if distributed:
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
