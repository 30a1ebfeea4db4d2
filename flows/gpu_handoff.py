"""Hand the heavy half of a flow to its GPU flow (`train-lora-gpu`, `generate-gpu`): through its
deployment (GPU work pool) when this run itself came from a deployment and the GPU deployment
exists, else in this process (CLI, tests, `flow.serve`). Inputs go by cache entry and hash, the
result comes back typed (lib/core/handback.py: its files as cache references, in
`runs/<run id>/gpu/`): the two workers share the cache *location* (a folder on one machine, an
object-store URL across machines), never a filesystem.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Generic

from prefect import get_run_logger
from prefect.runtime import deployment, flow_run
from pydantic import BaseModel

from flows.gpu_wait import run_on_gpu_pool
from flows.run_context import run_name
from lib.core.cache import Cache
from lib.core.errors import Av2AvError, TrainingDiverged
from lib.core.handback import Result, TrainingGpuResult, handed_back
from lib.core.plan import RunPlan
from lib.core.storage import FileRef

GPU_DEPLOYMENT = os.environ.get("AV2AV_GPU_DEPLOYMENT", "train-lora-gpu/train-lora-gpu")


@dataclass(frozen=True)
class GpuFlow(Generic[Result]):
    """A GPU flow as its CPU flow hands work to it."""

    deployment: str  # its deployment on the GPU pool
    entrypoint: str  # "module:flow", imported only to run it in this process (torch and the model stack)
    refusal: type[Av2AvError]  # its expected refusal: a Failed state of this class's name, raised here again
    result: type[Result]  # what it returns (and writes to the cache for a CPU flow in another process)


TRAIN_LORA_GPU = GpuFlow(GPU_DEPLOYMENT, "flows.train_lora_gpu:train_lora_gpu", TrainingDiverged, TrainingGpuResult)


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


def hand_off(gpu: GpuFlow[Result], parameters: dict[str, Any], run_id: str, cache: Cache) -> Result:
    """Run `gpu` as `<this run's name>-gpu` with `parameters` (its own; the run id, the cache
    location and this run's id are added, so it links back and mirrors its progress here) and
    wait for it. Returns its typed result; its expected refusal is raised again here."""
    parent_id, name = str(flow_run.get_id() or "") or None, f"{run_name()}-gpu"
    common = {"run_id": run_id, "cache_url": cache.location, "parent_run_id": parent_id}
    if not deployment_available(gpu.deployment):
        module, _, attribute = gpu.entrypoint.partition(":")
        gpu_flow = getattr(importlib.import_module(module), attribute)
        state = gpu_flow.with_options(flow_run_name=name)(**parameters, **common, return_state=True)
        if state.name == gpu.refusal.state_name:
            raise gpu.refusal(state.message)
        return gpu.result.model_validate(state.result())
    run = run_on_gpu_pool(gpu.deployment, _jsonable(parameters | common), name, get_run_logger().info)
    if run.state and run.state.name == gpu.refusal.state_name:
        raise gpu.refusal(run.state.message)
    if not run.state or not run.state.is_completed():
        message = run.state.message if run.state else "no state"
        raise RuntimeError(f"GPU flow run '{run.name}' ended {run.state.name if run.state else '?'}: {message}")
    return handed_back(cache, run_id, gpu.result)


def _jsonable(parameters: dict[str, Any]) -> dict[str, Any]:
    """Deployment parameters: models (and lists of them) as their JSON documents."""

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return [plain(item) for item in value] if isinstance(value, list) else value

    return {key: plain(value) for key, value in parameters.items()}


def run_gpu_flow(plan: RunPlan, clips: list[FileRef], run_id: str, cache: Cache) -> TrainingGpuResult:
    """`train-lora-gpu` on the run plan and the conformed clips; what it trained, as cache references."""
    return hand_off(TRAIN_LORA_GPU, {"plan": plan, "clips": clips}, run_id, cache)
