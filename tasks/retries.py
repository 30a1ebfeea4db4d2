"""Retry only what can heal (network hiccups, 5xx), never a user's bad input."""
from __future__ import annotations

from lib.core.errors import TransientError


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: True only for a TransientError (download or upload)."""
    try:
        state.result()
    except TransientError:
        return True
    except BaseException:
        return False
    return False
