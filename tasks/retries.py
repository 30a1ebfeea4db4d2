"""Retry only what can heal (network hiccups, 5xx), never a user's bad input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from lib.core.errors import TransientDownloadError, TransientError
from lib.core.storage import after_attempts

if TYPE_CHECKING:
    from prefect import Task
    from prefect.client.schemas.objects import State, TaskRun


def retry_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect `retry_condition_fn`: True only for a TransientError (download or upload)."""
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:
        return False
    return False


@contextmanager
def on_last_attempt() -> Iterator[None]:
    """In a retried download task: the last attempt's TransientDownloadError says how many
    attempts were made, the very message `av2av check`'s own retry loop ends with."""
    from prefect.context import TaskRunContext

    try:
        yield
    except TransientDownloadError as error:
        context = TaskRunContext.get()
        attempts = context.task.retries + 1 if context else 1
        if context is None or context.task_run.run_count >= attempts:
            raise after_attempts(error, attempts) from None
        raise
