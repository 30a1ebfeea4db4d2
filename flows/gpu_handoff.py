"""Hand the heavy half to `train-lora-gpu`: through its deployment (GPU work pool) when this run
itself came from a deployment and the GPU deployment exists, else in this process (CLI, tests,
`flow.serve`). Clips go by cache entry and hash, outputs come back the same way
(`runs/<run id>/gpu/` in the cache): the two workers share the cache *location* (a folder on one
machine, an object-store URL across machines), never a filesystem.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import get_run_logger
from prefect.runtime import deployment, flow_run

from flows.gpu_wait import run_on_gpu_pool
from lib.core.cache import Cache
from lib.core.errors import TrainingDiverged
from lib.core.housekeeping import GPU_RESULT, gpu_entry
from lib.core.plan import RunPlan
from lib.core.storage import FileRef

GPU_DEPLOYMENT = os.environ.get("AV2AV_GPU_DEPLOYMENT", "train-lora-gpu/train-lora-gpu")


def deployment_available(name: str) -> bool:
    """True when this run came from a deployment (so workers exist) and deployment `name` exists."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    if deployment.get_id() is None:  # local run: no workers to hand off to
        return False
    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            return False
    return True


def gpu_memory_declared(gpu_deployment: str = GPU_DEPLOYMENT) -> float | None:
    """GB of GPU memory the heavy half will have: what the GPU deployment declares in its job
    variables (env AV2AV_GPU_MEMORY_GB) when the run is handed to it, else what this machine
    declares or has (lib.train.memory_plan.declared_gpu_memory). None: nothing declared, nothing checked."""
    from lib.train.memory_plan import GPU_MEMORY_ENV, declared_gpu_memory

    if not deployment_available(gpu_deployment):
        return declared_gpu_memory()
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        variables = client.read_deployment_by_name(gpu_deployment).job_variables or {}
    declared = (variables.get("env") or {}).get(GPU_MEMORY_ENV)
    return float(declared) if declared else None


def run_gpu_flow(plan: RunPlan, clips: list[FileRef], run_id: str, cache: Cache) -> dict[str, Path | dict]:
    """Run the GPU half as `<this run's name>-gpu`, giving it this run's id so it links back and
    mirrors its progress here. Returns its result with every file as a local path here."""
    parent_id, name = str(flow_run.get_id() or "") or None, f"{flow_run.get_name() or 'local-run'}-gpu"
    if not deployment_available(GPU_DEPLOYMENT):
        from flows.train_lora_gpu import train_lora_gpu  # torch and the model stack: only in-process

        state = train_lora_gpu.with_options(flow_run_name=name)(
            plan, clips, run_id, cache.location, parent_run_id=parent_id, return_state=True
        )
        if state.name == "TrainingDiverged":
            raise TrainingDiverged(state.message)
        result = state.result()
    else:
        parameters = {
            "plan": plan.model_dump(mode="json"),
            "clips": [c.model_dump() for c in clips],
            "run_id": run_id,
            "cache_url": cache.location,
            "parent_run_id": parent_id,
        }
        run = run_on_gpu_pool(GPU_DEPLOYMENT, parameters, name, get_run_logger().info)
        if run.state and run.state.name == "TrainingDiverged":
            raise TrainingDiverged(run.state.message)
        if not run.state or not run.state.is_completed():
            message = run.state.message if run.state else "no state"
            raise RuntimeError(f"GPU flow run '{run.name}' ended {run.state.name if run.state else '?'}: {message}")
        result = json.loads(cache.open_entry(f"{gpu_entry(run_id)}/{GPU_RESULT}").read_text())
    files = {name: cache.open(FileRef(**ref)) for name, ref in result["files"].items()}
    previews = [cache.open(FileRef(**ref)) for ref in result["previews"]]
    return result | {"files": files, "previews": previews}
