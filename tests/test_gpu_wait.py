"""The run the user watches says what its GPU half waits for: a busy GPU (runs ahead of it) or no
GPU worker at all, within seconds, instead of a silent page."""

from __future__ import annotations

import time

import pytest
from prefect import flow

import flows.gpu_wait as gpu_wait

pytestmark = pytest.mark.usefixtures("prefect_harness")


@flow(name="gpu-wait-probe")
def probe() -> None:
    pass


class Heard(Exception):
    pass


def test_a_run_waiting_for_a_busy_gpu_says_so_within_seconds(monkeypatch):
    from prefect.deployments import run_deployment

    deployment_id = probe.to_deployment(name="no-worker").apply()
    assert deployment_id
    run_deployment("gpu-wait-probe/no-worker", flow_run_name="ahead", timeout=0)  # takes the only slot
    monkeypatch.setattr(gpu_wait, "POLL_S", 0.2)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        raise Heard

    began = time.monotonic()
    with pytest.raises(Heard):
        gpu_wait.run_on_gpu_pool("gpu-wait-probe/no-worker", {}, "mine", log)
    assert time.monotonic() - began < 10
    assert lines == ["waiting for a GPU worker: 1 run ahead (Scheduled)"]


def test_the_waiting_line_without_a_queue_asks_about_the_worker():
    from prefect.client.schemas.objects import FlowRun
    from prefect.states import Scheduled

    run = FlowRun(name="x", flow_id="00000000-0000-0000-0000-000000000000", state=Scheduled())
    assert gpu_wait.waiting_line(run, 0) == "waiting for a GPU worker: no run ahead: is a GPU worker up? (Scheduled)"
