"""The run the user started (`train-lora`) shows what its GPU sub-run is doing: the sub-run
writes its progress lines and progress artifact to that parent run too, and leaves it a link to
itself. Without this the user's run sits silent while the work happens in a run with another name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run

PROGRESS_KEY = "training-progress"


def ui_link(run_id: str, name: str) -> str:
    """A markdown link to a flow run in the UI, or the plain name when no UI address is known."""
    from prefect.settings import get_current_settings

    ui_url = get_current_settings().ui_url
    return f"[{name}]({ui_url.rstrip('/')}/runs/flow-run/{run_id})" if ui_url else f"`{name}`"


class ParentRun:
    """Logs and artifacts of the parent flow run (no-op when there is none)."""

    def __init__(self, parent_id: str | None):
        self.id = UUID(parent_id) if parent_id and parent_id != str(flow_run.get_id()) else None
        self.logger: logging.LoggerAdapter | None = None
        if self.id is not None:
            with get_client(sync_client=True) as client:
                self.logger = flow_run_logger(flow_run=client.read_flow_run(self.id))

    def info(self, message: str) -> None:
        if self.logger is not None:
            self.logger.info(message)

    def artifact(self, kind: str, data, description: str, key: str | None = None) -> UUID | None:
        if self.id is None:
            return None
        with get_client(sync_client=True) as client:
            created = client.create_artifact(
                ArtifactCreate(type=kind, data=data, description=description, key=key, flow_run_id=self.id)
            )
        return created.id

    def link_child(self, sentence: str) -> None:
        """A markdown artifact on the parent that opens this (GPU) run: `sentence` says what runs
        there, with `{link}` where the run's link goes."""
        name, run_id = flow_run.get_name(), flow_run.get_id()
        if run_id is None:
            return
        self.artifact(
            "markdown",
            sentence.format(link=ui_link(run_id, name)),
            "The GPU sub-run of this run",
            key="gpu-run",
        )
        self.info(f"GPU sub-run: {name} (its logs hold the details; progress is mirrored here)")


def run_and_parent_logger(parent: ParentRun) -> Callable[[str], None]:
    """Log to this run and mirror the line onto the run the user started."""
    logger = get_run_logger()

    def log(line: str) -> None:
        logger.info(line)
        parent.info(line)

    return log


def progress_artifacts(parent: ParentRun, description: str, key: str) -> Callable[[float], None]:
    """A progress artifact on this run and on the parent; the returned call sets both (percent)."""
    artifacts = [create_progress_artifact(progress=0.0, key=key, description=description)]
    artifacts += [a for a in [parent.artifact("progress", 0.0, description, key=key)] if a]

    def update(percent: float) -> None:
        for artifact_id in artifacts:
            update_progress_artifact(artifact_id=artifact_id, progress=percent)

    return update
