"""How `av2av train` stops on Ctrl-C (SIGINT) or SIGTERM: one line, exit 130 / 143, nothing left.

Both signals raise `Stopped` in the main thread (Prefect turns SIGTERM inside a flow into its own
TerminationSignal: both count). The flow run ends Crashed, uploads are atomic and clean up after
themselves, the temporary server is stopped by flows.local_server, and then the process ends at
once: threads still busy in a task (a decode, a training step) would otherwise hold the exit.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lib.core.progress import LATEST


class Stopped(KeyboardInterrupt):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_stopped(signum, _frame) -> None:
    raise Stopped(signum)


class _SaidByTheCli(logging.Filter):
    """Lines the CLI says itself, in its own words, kept off the terminal's Prefect console: a
    stop's crash report for every task and flow run (4+ ERROR lines) and a refusal's state line
    (`InvalidDataset: …`). The run's own logs on a server keep them."""

    def __init__(self, refusal_names: tuple[str, ...]):
        super().__init__()
        self.prefixes = tuple(f"{name}: " for name in refusal_names)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "aborted by an interrupt signal" in message or "aborted by a termination signal" in message:
            return False
        return not (record.name == "prefect.flow_runs" and message.startswith(self.prefixes))


@contextmanager
def quiet_console(refusal_names: tuple[str, ...]) -> Iterator[None]:
    """Keep what the CLI says itself off Prefect's console handler (on the root logger once Prefect
    has set up logging, i.e. after `import prefect`)."""
    quiet = _SaidByTheCli(refusal_names)
    handlers = [
        handler for handler in logging.getLogger().handlers if type(handler).__name__ == "PrefectConsoleHandler"
    ]
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


@contextmanager
def stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise Stopped here (Prefect raises its TerminationSignal inside a flow)."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def stop_signal(error: BaseException) -> int | None:
    """The signal number behind `error` when it is a stop (ours, Prefect's, or a plain Ctrl-C)."""
    if isinstance(error, Stopped):
        return error.signum
    if isinstance(error, KeyboardInterrupt):
        return signal.SIGINT
    if type(error).__name__ == "TerminationSignal":  # prefect.exceptions: SIGTERM inside a flow
        return getattr(error, "signal", signal.SIGTERM)
    return None


def latest_checkpoint(since: float) -> Path | None:
    from lib.core.storage import work_dir

    found = [
        path
        for path in (work_dir() / "checkpoints").glob("*/checkpoint-*.safetensors")
        if path.stat().st_mtime >= since
    ]
    return max(found, key=lambda path: path.stat().st_mtime, default=None)


def stop_line(since: float) -> str:
    done, total = LATEST.get("training", (0, 0))
    where = f"at step {done} of {total}" if done else "before training started"
    checkpoint = latest_checkpoint(since)
    kept = (
        f"; checkpoint {checkpoint} (resume_from it to continue)"
        if checkpoint
        else "; no checkpoint was written (checkpoint_every makes them)"
        if done
        else ""
    )
    return f"Interrupted {where}{kept}. Nothing was uploaded."


def exit_now(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def started() -> float:
    return time.time()
