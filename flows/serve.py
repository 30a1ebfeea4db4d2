"""`make serve`: a Prefect server, the pools and deployments, and one worker per pool, on this
machine; Ctrl-C (or SIGTERM) stops every process it started, flow runs included.

Each child gets its own process group, so stopping one group also reaches what it spawned (a
worker runs each flow in a subprocess); children are asked to stop (SIGTERM), then killed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
STOP_GRACE_S = 10


def quiet_telemetry() -> None:
    """Prefect's usage telemetry off unless the user turned it on: a self-hosted trainer often runs
    offline, where the server logs "Failed to send telemetry" and the SDK prints a first-run notice.
    DO_NOT_TRACK=0 and PREFECT_SERVER_ANALYTICS_ENABLED=true turn it back on."""
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _start(*command: str) -> subprocess.Popen:
    return subprocess.Popen(list(command), start_new_session=True)


def _wait_for(url: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise SystemExit(f"the Prefect server did not answer at {url} within {timeout_s:.0f} s")


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> int:
    api = os.environ.setdefault("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    quiet_telemetry()
    children: list[subprocess.Popen] = []
    for stop_signal in (signal.SIGINT, signal.SIGTERM):  # SIGINT too: a background start ignores it
        signal.signal(stop_signal, _interrupt)
    try:
        children.append(_start(str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", "4200"))
        _wait_for(f"{api}/health")
        subprocess.run(["make", "deploy"], check=True)
        children += [_start(str(BIN / "prefect"), "worker", "start", "--pool", pool) for pool in ("cpu", "gpu")]
        print(
            f"Prefect UI: {api.removesuffix('/api')}  (Ctrl-C stops the server, the workers and their runs)", flush=True
        )
        while all(child.poll() is None for child in children):
            time.sleep(1)
        return 1  # something stopped on its own: stop the rest too
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(children)


if __name__ == "__main__":
    sys.exit(main())
