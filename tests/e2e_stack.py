"""The end-to-end stack, shared by the e2e test files (one per session, the `stack` fixture in
conftest.py): `prefect server start`, the work pools and the deployments of prefect.yaml (exactly
as `make deploy`), one process worker per pool, datasets served over loopback HTTP, and a REST
client to start runs as a user (or the UI) would.

The two workers are set up as on two machines: each has its own local cache folder, and the only
thing they share is the cache location, a bucket on a real S3 API (moto's server, on loopback).

Everything started here runs in its own process group and is stopped (and the temp folder
removed) at the end, failed or not. On failure the tails of the server and worker logs are
printed (set AV2AV_E2E_KEEP=1 to keep the temp folder for a closer look).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.e2e_helpers import BUCKET, SERVER_START_S, _free_port, _start_s3, _stop_group, _stop_groups, _tail

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFECT = str(BIN / "prefect") if (BIN / "prefect").exists() else (shutil.which("prefect") or "prefect")

CLI_S = 180  # one `prefect work-pool create` / `prefect deploy --all`
TRAIN_RUN_S = 420  # the whole train-lora run, GPU hand-off included (2 slow cores)
FAILING_RUN_S = 240  # the invalid-dataset run

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


# ---------------------------------------------------------------------------------------------
# The stack: server, pools, deployments, workers, loopback HTTP server


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's signature
        pass


class RetryBusy(httpx.HTTPTransport):
    """Retry 503s: the server answers "Service Unavailable" while SQLite is locked under load
    (2 cores, several processes). Prefect's own client retries these too; this test's raw client
    must do the same or it measures the box's load instead of the product."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for attempt in range(6):
            response = super().handle_request(request)
            if response.status_code not in (429, 503):
                return response
            response.close()
            time.sleep(0.5 * 2**attempt)
        return response


@dataclass
class Stack:
    root: Path
    api: str = ""
    env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)
    http_server: http.server.ThreadingHTTPServer | None = None
    http_thread: threading.Thread | None = None
    client: httpx.Client | None = None
    s3: object = None  # an s3fs filesystem on the bucket

    @property
    def served(self) -> Path:
        return self.root / "www"

    def local_cache(self, pool: str) -> Path:
        return self.root / f"{pool}-machine" / "cache"

    def empty_cache(self, *prefixes: str) -> None:
        """Remove these kinds of cache entries from the bucket and both machines' local folders, so
        a test can count what one run makes whatever ran before it."""
        for prefix in prefixes:
            if self.s3.exists(f"{BUCKET}/cache/{prefix}"):
                self.s3.rm(f"{BUCKET}/cache/{prefix}", recursive=True)
            for pool in ("cpu", "gpu"):
                shutil.rmtree(self.local_cache(pool) / prefix, ignore_errors=True)
        self.s3.invalidate_cache()

    def bucket_entries(self, *prefixes: str) -> dict[str, str]:
        """Cache entries in the bucket under `prefixes` (not their .sha256 checksum records), with their
        ETag and modification time."""
        entries = {}
        for prefix in prefixes:
            path = f"{BUCKET}/cache/{prefix}"
            if self.s3.exists(path):
                self.s3.invalidate_cache()
                entries |= {
                    key: f"{info['ETag']} {info['LastModified']}"
                    for key, info in self.s3.find(path, detail=True).items()
                    if not key.endswith(".sha256")
                }
        return entries

    @property
    def base_url(self) -> str:
        host, port = self.http_server.server_address[:2]
        return f"http://{host}:{port}"

    # -- processes ------------------------------------------------------------------------

    def spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None, program: str = PREFECT
    ) -> subprocess.Popen:
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                [program, *args],
                cwd=ROOT,
                env=self.env | (env or {}),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.procs[name] = proc
        self.logs[name] = log
        return proc

    def cli(self, name: str, *args: str, timeout: float = CLI_S) -> str:
        """A short `prefect ...` command; its output is kept as a log too."""
        log = self.root / "logs" / f"{name}.log"
        log.parent.mkdir(exist_ok=True)
        self.logs[name] = log
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [PREFECT, *args],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                pytest.fail(f"`prefect {' '.join(args)}` ran past {timeout}s:\n{_tail(log)}")
        output = log.read_text(errors="replace")
        assert code == 0, f"`prefect {' '.join(args)}` exited {code}:\n{output[-4000:]}"
        return output

    def log_tails(self, lines: int = 60) -> str:
        return "\n".join(f"----- {name} ({path}) -----\n{_tail(path, lines)}" for name, path in self.logs.items())

    def wait_healthy(self, timeout: float = SERVER_START_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.procs["server"]
            if server.poll() is not None:
                pytest.fail(f"prefect server exited {server.returncode}:\n{self.log_tails()}")
            try:
                if httpx.get(f"{self.api}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        pytest.fail(f"prefect server not healthy after {timeout}s:\n{self.log_tails()}")

    # -- REST -----------------------------------------------------------------------------

    def deployment(self, flow_name: str, deployment_name: str) -> dict:
        response = self.client.get(f"/deployments/name/{flow_name}/{deployment_name}")
        assert response.status_code == 200, response.text
        return response.json()

    def create_flow_run(self, deployment_id: str, parameters: dict) -> httpx.Response:
        return self.client.post(f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})

    def flow_runs(self, **flow_run_filter) -> list[dict]:
        body = {"sort": "EXPECTED_START_TIME_ASC", "limit": 200, **flow_run_filter}
        response = self.client.post("/flow_runs/filter", json=body)
        assert response.status_code == 200, response.text
        return response.json()

    def flow_run_logs(self, flow_run_id: str, limit: int = 80) -> str:
        response = self.client.post(
            "/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_DESC", "limit": 200},
        )
        if response.status_code != 200:
            return f"<logs unavailable: {response.status_code}>"
        newest = response.json()[:limit]  # the API returns at most 200: the newest ones matter here
        return "\n".join(f"{row['level']:>3} {row['message']}" for row in reversed(newest))

    def wait_flow_run(self, flow_run_id: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            response = self.client.get(f"/flow_runs/{flow_run_id}")
            assert response.status_code == 200, response.text
            run = response.json()
            if run.get("state_type") in TERMINAL:
                return run
            for name in ("worker-cpu", "worker-gpu"):
                proc = self.procs.get(name)
                if proc is not None and proc.poll() is not None:
                    pytest.fail(f"{name} exited {proc.returncode} while waiting (see its log tail below)")
            time.sleep(1)
        pytest.fail(
            f"flow run {flow_run_id} not finished after {timeout}s "
            f"(state {run.get('state_type')}/{run.get('state_name')}); its logs:\n"
            f"{self.flow_run_logs(flow_run_id)}"
        )

    def describe(self, run: dict) -> str:
        state = run.get("state") or {}
        return (
            f"flow run {run.get('name')} ended {state.get('type')}/{state.get('name')}: {state.get('message')}\n"
            f"--- its logs ---\n{self.flow_run_logs(run['id'])}"
        )

    # -- teardown -------------------------------------------------------------------------

    def stop(self) -> None:
        if self.client is not None:
            self.client.close()
        # Workers first (their flow runs sit in sessions of their own: stop those too), then the server.
        for names in (("worker-cpu", "worker-gpu"), ("server", "s3")):
            _stop_groups([self.procs[name] for name in names if name in self.procs])
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
            self.http_thread.join(timeout=10)


def running_stack(request):
    """Generator for the session fixture: the running stack; stopped and removed at the end even
    when setup fails halfway."""
    root = Path(tempfile.mkdtemp(prefix="av2av-e2e-"))
    stack = Stack(root=root)
    failed_before = request.session.testsfailed
    started = time.monotonic()
    setup_failed = True
    try:
        _start(stack)
        setup_failed = False
        print(f"\n[e2e] stack up in {time.monotonic() - started:.1f}s (api {stack.api})")
        yield stack
    finally:
        if setup_failed or request.session.testsfailed > failed_before:
            print(
                f"\n[e2e] {'stack setup' if setup_failed else 'a test'} failed; log tails "
                f"(server, pools, deploy, workers with their flow runs' output):\n{stack.log_tails(120)}"
            )
        stack.stop()
        if os.environ.get("AV2AV_E2E_KEEP"):
            print(f"[e2e] kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
        print(f"[e2e] stack stopped; {time.monotonic() - started:.1f}s in all")


def _start(stack: Stack) -> None:
    root = stack.root
    port = _free_port()
    stack.api = f"http://127.0.0.1:{port}/api"
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PREFECT_", "PYTEST_")) and key != "AV2AV_CACHE_DIR"
    }
    env.update(
        {
            "PREFECT_HOME": str(root / "prefect-home"),
            "PREFECT_API_URL": stack.api,
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root / 'prefect.db'}",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_WORKER_QUERY_SECONDS": "1",
            "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            "PREFECT_CLI_COLORS": "false",
            "PREFECT_CLI_WRAP_LINES": "false",
            "AV2AV_PROJECT_DIR": str(ROOT),
            # The only thing the two workers share: the cache location, a bucket (see `_start_s3`).
            "AV2AV_CACHE_DIR": f"s3://{BUCKET}/cache",
            "PYTHONUNBUFFERED": "1",
        }
    )
    stack.env = env
    _start_s3(stack)

    # Loopback HTTP server for the datasets (and nothing else).
    stack.served.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(stack.served))
    stack.http_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    stack.http_thread = threading.Thread(target=stack.http_server.serve_forever, daemon=True)
    stack.http_thread.start()

    stack.spawn("server", "server", "start", "--host", "127.0.0.1", "--port", str(port))
    # Build the datasets while the server migrates its database.
    from lib.media.synthetic import make_box_mask, make_clip, make_sample_zip

    make_sample_zip(stack.served / "sample.zip", triplets=2)
    make_clip(stack.served / "val_source.mp4", 0.5, seed=5)
    make_clip(stack.served / "val_reference.mp4", 0.5, seed=6, frequency_hz=660.0)
    make_box_mask(stack.served / "val_mask.png", (320, 180), (0.3, 0.3, 0.7, 0.7))
    make_sample_zip(stack.served / "only_silent.zip", triplets=0, include_bad=True)
    stack.wait_healthy()
    stack.client = httpx.Client(base_url=stack.api, timeout=30, transport=RetryBusy())

    # `make pools`, then the workers (they poll while we deploy), then `make deploy`'s last step.
    stack.cli("pool-cpu", "work-pool", "create", "cpu", "--type", "process", "--overwrite")
    stack.cli("pool-gpu", "work-pool", "create", "gpu", "--type", "process", "--overwrite")
    # Prefect's own results in the bucket too, as the README's two-machine set-up does.
    storage = subprocess.run(
        [sys.executable, "tools/result_storage.py"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=CLI_S,
    )
    assert storage.returncode == 0, storage.stderr[-3000:]
    stack.env.update(dict(line.split("=", 1) for line in storage.stdout.split()))
    for pool in ("cpu", "gpu"):  # as on two machines: a local cache folder each
        stack.spawn(
            f"worker-{pool}",
            "worker",
            "start",
            "--pool",
            pool,
            "--type",
            "process",
            env={"AV2AV_LOCAL_CACHE_DIR": str(stack.local_cache(pool))},
        )
    stack.cli("deploy", "--no-prompt", "deploy", "--all")
