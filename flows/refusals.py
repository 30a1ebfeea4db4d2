"""How a flow ends on an expected refusal (lib/core/errors.REFUSALS): one line in the user's words
and a Failed state named for the cause, billed 0; and the run-log filter that keeps Prefect from
saying the same fact four more times."""

from __future__ import annotations

import logging

from prefect import get_run_logger
from prefect.exceptions import FailedRun
from prefect.states import Failed, State

from lib.core.errors import REFUSAL_STATE_NAMES, REFUSALS, ArchiveError, Av2AvError, MediaError, StageFailed
from lib.core.redact import redact_text

# A whole archive or one file refused: said in the dataset report, then as InvalidDataset.
_SAID_IN_THE_REPORT = (ArchiveError.__name__, MediaError.__name__)
_REFUSAL_NAMES = frozenset(REFUSAL_STATE_NAMES) | {kind.__name__ for kind in REFUSALS} | set(_SAID_IN_THE_REPORT)


def refused(error: Av2AvError) -> State:
    """One clear log line and a Failed state named for the cause (billed 0), no traceback."""
    message = redact_text(error.message)  # lib's messages are redacted already; so is an upload's URL here
    get_run_logger().error("%s: %s", error.state_name, message)
    return Failed(name=error.state_name, message=message, data=error)


class QuietRefusals(logging.Filter):
    """Each expected refusal is stated once, by `refused`, in the user's words. Prefect would also
    log it as the task's exception (with a traceback), as the task's and the flow's final state,
    and, when a worker ends a Failed run, as the engine re-raising it: four more copies of one
    fact. Those are dropped here (retry notices stay), and so are the routine "Finished in state
    Completed()" lines of tasks. A Failed state our flow returns (a refusal, a batch with failed
    entries) is re-raised by the engine as FailedRun: said already, dropped too. StageFailed wraps
    real bugs: its traceback stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.name == "prefect.task_runs" and message.startswith("Finished in state Completed("):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, FailedRun):  # the engine re-raising a Failed state a flow of ours returned
            return False
        if isinstance(error, Av2AvError) and not isinstance(error, StageFailed):
            return "Retry" in message  # a transient failure about to be retried is news; the rest is a repeat
        return not (message.startswith("Finished in state") and _names_a_refusal(message))


def _names_a_refusal(message: str) -> bool:
    return any(f"{name}(" in message or f"{name}:" in message for name in _REFUSAL_NAMES)


for _logger in ("prefect.flow_runs", "prefect.task_runs"):
    logging.getLogger(_logger).addFilter(QuietRefusals())
