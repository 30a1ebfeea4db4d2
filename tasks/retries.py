"""Retry only what can heal (network hiccups, 5xx), never a user's bad input."""
from __future__ import annotations

from lib.errors import TransientDownloadError


def retry_transient(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: True only for TransientDownloadError (and its upload twin)."""
    try:
        state.result()
    except TransientDownloadError:
        return True
    except BaseException:
        return False
    return False
