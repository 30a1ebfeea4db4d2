"""The temporary Prefect server `av2av train` runs for itself when no PREFECT_API_URL is set.

Prefect would start one on first use, in the CLI's own process group, with 20 s to come up: a
Ctrl-C on the terminal then kills it under the running flow (and the CLI retries the dead server
for minutes), SIGTERM or kill -9 of the CLI leaves it running, and a loaded machine misses the
20 s. Here it is started up front, in its own session (a terminal's Ctrl-C reaches only the CLI),
bound to die with the CLI (PR_SET_PDEATHSIG, even on kill -9), given `AV2AV_SERVER_START_TIMEOUT_S`
to start, and stopped when the command ends, however it ends.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from lib.core.progress import announce, still_waiting

START_TIMEOUT_ENV = "AV2AV_SERVER_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 120
_PR_SET_PDEATHSIG = 1


class ServerStartFailed(RuntimeError):
    """The temporary server did not answer in time; the message says what to set."""


def start_timeout_s() -> int:
    return int(os.environ.get(START_TIMEOUT_ENV) or DEFAULT_START_TIMEOUT_S)


def _die_with_parent() -> None:
    """In the child, before exec: a SIGTERM when the CLI dies, whatever kills it (Linux only)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass


@contextmanager
def _detached_children() -> Iterator[None]:
    """Prefect builds the server's command itself; start that process detached from the terminal."""
    original = subprocess.Popen
    subprocess.Popen = partial(original, start_new_session=True, preexec_fn=_die_with_parent)
    try:
        yield
    finally:
        subprocess.Popen = original


@contextmanager
def local_server() -> Iterator[str | None]:
    """Run the block against a temporary server (its API URL is yielded), or against the server
    PREFECT_API_URL names (None is yielded). The temporary server is stopped on the way out."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if PREFECT_API_URL.value():  # a server the user runs (or a test harness): use it
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the instance Prefect's own clients would start: they find it running
    timeout = start_timeout_s()
    began = time.monotonic()
    announce("starting a temporary Prefect server for this run ...")
    try:
        with _detached_children(), still_waiting("still starting the Prefect server"):
            server.start(timeout=timeout)
    except Exception as error:
        server.stop()
        raise ServerStartFailed(
            f"The temporary Prefect server did not start within {timeout} s ({type(error).__name__}). On a "
            f"loaded machine set {START_TIMEOUT_ENV} higher (e.g. {timeout * 3}), or start a server with "
            "`make serve` and set PREFECT_API_URL."
        ) from None
    announce(f"Prefect server up in {time.monotonic() - began:.0f} s")
    try:
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_prefect_services()
        server.stop()


def _drain_prefect_services(timeout_s: float = 10.0) -> None:
    """Send the logs and events still queued while the server is up, so nothing retries a stopped
    server at exit (Prefect drains them at exit otherwise, after the server is gone)."""
    from prefect._internal.concurrency.services import QueueService

    try:
        QueueService.drain_all(timeout=timeout_s, at_exit=False)
    except Exception:  # best effort: what is lost is a few log lines, never the run's outcome
        pass
