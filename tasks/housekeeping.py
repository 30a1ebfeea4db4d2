"""Housekeeping task: remove staging folders that killed or failed runs left behind."""

from __future__ import annotations

import uuid

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from lib.core import housekeeping
from lib.core.cache import Cache


def run_is_alive(run_id: str) -> bool:
    """Whether Prefect says the flow run of this id is still going; True when it cannot tell
    (an unreachable API must never cost a live run its files)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        flow_run_id = uuid.UUID(run_id)
    except ValueError:
        return False  # not a flow run id: a local run, protected by its owner process only
    try:
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(flow_run_id)
    except ObjectNotFound:
        return False
    except Exception:
        return True
    return not (run.state and run.state.is_final())


@task(cache_policy=NO_CACHE)
def sweep_stale_runs(cache: Cache, location: bool = True) -> list[str]:
    """Best effort: a sweep that fails (a flaky bucket listing) is logged and never fails the run."""
    try:
        removed = housekeeping.sweep(cache, run_is_alive, location)
    except Exception as error:
        get_run_logger().warning("Housekeeping skipped this time: %s: %s", type(error).__name__, error)
        return []
    if removed:
        get_run_logger().info(
            "Removed the staging folders of %d finished run(s) older than %s: %s",
            len(removed),
            housekeeping.stale_after_text(),
            ", ".join(removed),
        )
    return removed
