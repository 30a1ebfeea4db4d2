"""A training job: the unit the GPU flow runs in-process, or launches under `torchrun` for
multi-GPU (DDP). `python -m lib.train.worker job.json` is the torchrun entry point; `launch` starts
it, `attach_trained_lora` puts what the ranks trained onto the launching process's transformer.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from pydantic import BaseModel, ConfigDict

from lib.core import precision
from lib.core.errors import TrainingDiverged
from lib.core.plan import RunPlan, ValidationInputs
from lib.core.storage import work_dir
from lib.model import process_cache
from lib.model.encoding import load_example
from lib.model.lifetime import free_device_memory
from lib.train.lora_io import add_lora, load_lora_state, lora_state_dict, read_lora, save_lora
from lib.train.training import TrainResult, distributed, fit

DIVERGED_NOTE = "diverged.txt"  # under torchrun: the message the launching task raises again
EXIT_DIVERGED = 3


def distributed_rank() -> int:
    return distributed()[0]


class TrainJob(BaseModel):
    """The run plan as derived on the CPU side, and beside it what only the GPU worker knows: the
    local paths of the training latents and of the validation inputs, and where to write."""

    model_config = ConfigDict(frozen=True)

    plan: RunPlan
    latents: list[str]
    validation: ValidationInputs = ValidationInputs()  # for the periodic reels (in-process training)
    output_dir: str  # lora.safetensors, losses.json
    checkpoint_dir: str | None = None


def checkpoint_folder(run_id: str) -> Path:
    """Where checkpoints are kept on the GPU worker: outside the run's staging folder, which is
    removed after upload, so a run can be resumed from them (README, "Checkpoints")."""
    return work_dir() / "checkpoints" / run_id


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
    result = fit(
        components.transformer,
        examples,
        plan.train,
        checkpoints,
        plan.resume_from,
        on_step,
        conditioning=plan.conditioning,
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


def launch(job: TrainJob, gpus: int) -> list[float]:
    """Train under torchrun, one process per GPU; returns the losses rank 0 wrote. This process's
    model is dropped first (every rank loads its own) and its cached CUDA blocks handed back. A
    diverged run raises TrainingDiverged with the ranks' message."""
    process_cache.forget()
    free_device_memory()
    output = Path(job.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    job_file = output / "train_job.json"
    job_file.write_text(job.model_dump_json())
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={gpus}",
        "-m",
        "lib.train.worker",
        str(job_file),
    ]
    completed = subprocess.run(command, env=os.environ.copy())
    if completed.returncode:
        note = output / DIVERGED_NOTE
        if note.is_file():  # torchrun reports its own exit status, not the worker's
            raise TrainingDiverged(note.read_text())
        raise subprocess.CalledProcessError(completed.returncode, command)
    return json.loads((output / "losses.json").read_text())


def attach_trained_lora(transformer, lora_path: str | Path, seed: int) -> None:
    """The LoRA from `lora_path` onto `transformer` when it carries none (the ranks trained in
    other processes, under torchrun); a transformer trained in this process keeps its own."""
    if getattr(transformer, "peft_config", None):
        return
    state, info = read_lora(lora_path)
    add_lora(transformer, info["rank"], seed)
    load_lora_state(transformer, state)


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
