"""What a running flow knows about itself: its name, its staging id, and the pipeline stage it is
in (a stage: fetch, prepare dataset, training, upload; not a training step)."""

from __future__ import annotations

from contextlib import contextmanager

from prefect import get_run_logger
from prefect.runtime import flow_run

from lib.core.errors import Av2AvError, StageFailed
from lib.core.progress import announce
from lib.core.redact import redact_text


@contextmanager
def stage(name: str):
    """Says the stage began (CLI and run page alike); errors name the stage: ours keep their type
    (and 422 text), others are wrapped."""
    announce(f"{name} ...", get_run_logger().info)
    try:
        yield
    except Av2AvError:
        raise
    except Exception as error:
        raise StageFailed(redact_text(f"Stage '{name}' failed: {type(error).__name__}: {error}")) from error


def run_name() -> str:
    return flow_run.get_name() or "local-run"


def staging_id() -> str:
    """Names this run's private staging folder, `runs/<id>` in the cache (concurrent runs never
    share one; housekeeping asks Prefect whether the run of that id is still going)."""
    return str(flow_run.get_id() or run_name())
