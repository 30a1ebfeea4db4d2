"""Start a run on the GPU pool and say, on the run the user watches, what it is waiting for.

`run_deployment` with a time-out blocks silently: with `concurrency_limit: 1` and a busy GPU, or
no GPU worker up, the user's run page would show nothing for minutes. Here the run is created,
then watched: every `EVERY_S` seconds while it is not running, one line ("waiting for a GPU
worker: 2 runs ahead (AwaitingConcurrencySlot)"), then one line when a worker takes it. Its own
progress reaches the parent through the GPU flow (tasks/parent_run.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.deployments import run_deployment

EVERY_S = 10.0
POLL_S = 2.0
WAITING = (StateType.SCHEDULED, StateType.PENDING)
AHEAD = (StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING)


def runs_ahead(client, run: FlowRun) -> int:
    """Runs of the same deployment that are waiting or running and were created before `run`."""
    others = client.read_flow_runs(
        deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[run.deployment_id])),
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=list(AHEAD)))),
    )
    return sum(
        1 for other in others if other.id != run.id and other.created and run.created and other.created < run.created
    )


def waiting_line(run: FlowRun, ahead: int) -> str:
    queue = f"{ahead} run{'s' if ahead != 1 else ''} ahead" if ahead else "no run ahead: is a GPU worker up?"
    return f"waiting for a GPU worker: {queue} ({run.state.name if run.state else 'no state'})"


def run_on_gpu_pool(deployment: str, parameters: dict, flow_run_name: str, log: Callable[[str], None]) -> FlowRun:
    """Start `deployment` and wait for its run to end, saying what it waits for; returns the run."""
    run = run_deployment(deployment, parameters=parameters, flow_run_name=flow_run_name, timeout=0)
    said_at, taken = float("-inf"), False
    with get_client(sync_client=True) as client:
        while True:
            run = client.read_flow_run(run.id)
            if run.state and run.state.is_final():
                return run
            if run.state and run.state.type in WAITING and time.monotonic() - said_at >= EVERY_S:
                log(waiting_line(run, runs_ahead(client, run)))
                said_at = time.monotonic()
            elif run.state and run.state.type == StateType.RUNNING and not taken:
                log(f"a GPU worker took the run: {run.name}")
                taken = True
            time.sleep(POLL_S)
