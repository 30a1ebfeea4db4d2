"""Helpers of the e2e stack (tests/e2e_stack.py): free ports, log tails, stopping process groups,
and building requests as the UI would."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

if TYPE_CHECKING:
    from tests.e2e_stack import Stack

STOP_S = 20  # SIGTERM → SIGKILL grace per process group
SERVER_START_S = 120  # health check answered (migrations on a fresh SQLite file included)
BUCKET = "av2av"
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<unreadable: {error}>"
    return "\n".join(text.splitlines()[-lines:])


def _descendants(pid: int) -> list:
    try:
        import psutil

        return psutil.Process(pid).children(recursive=True)
    except Exception:  # psutil missing or the process already gone
        return []


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_groups(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group (and the groups of its descendants: Prefect starts flow runs
    with start_new_session), wait, then SIGKILL whatever is left; reap everything."""
    children = [child for proc in procs for child in _descendants(proc.pid)]
    groups = {proc.pid for proc in procs}
    for child in children:
        try:
            groups.add(os.getpgid(child.pid))
        except ProcessLookupError:
            pass
    groups.discard(os.getpgid(0))  # never our own group
    for group in groups:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + STOP_S
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            pass
    for group in groups:
        _signal_group(group, signal.SIGKILL)
    for child in children:
        try:
            child.kill()
        except Exception:
            pass
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _stop_group(proc: subprocess.Popen) -> None:
    _stop_groups([proc])


def tiny_request(stack: Stack, zip_name: str, output: Path, **overrides) -> dict:
    fields = {
        "training_data_url": f"{stack.base_url}/{zip_name}",
        "model": "tiny",
        "number_of_steps": 100,
        "rank": 8,
        "number_of_frames": 9,
        "resolution": "low",
        "aspect_ratio": "16:9",
        "output_url": str(output),
        "trigger_phrase": "repl4ce",
    }
    return fields | overrides


def resolve(schema: dict, node: dict) -> dict:
    """Follow a local $ref (pydantic v2 writes '#/$defs/..', Prefect rewrites it to '#/definitions/..')."""
    while "$ref" in node:
        *_, section, name = node["$ref"].split("/")
        node = schema[section][name]
    for combinator in ("allOf", "anyOf"):  # Optional[Model] / {"allOf": [{"$ref": ...}]}
        if combinator in node and "properties" not in node:
            refs = [item for item in node[combinator] if "$ref" in item]
            if len(refs) == 1:
                return resolve(schema, refs[0])
    return node


def _start_s3(stack: Stack) -> None:
    """moto's S3 server on loopback, one bucket; every process reaches it through fsspec's
    FSSPEC_S3_* settings and the usual AWS variables, as it would a real bucket."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    stack.env.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "FSSPEC_S3_ENDPOINT_URL": endpoint,
        }
    )
    stack.spawn("s3", "-H", "127.0.0.1", "-p", str(port), program=str(BIN / "moto_server"))
    deadline = time.monotonic() + SERVER_START_S
    while True:
        try:
            if httpx.put(f"{endpoint}/{BUCKET}", timeout=2).status_code == 200:  # creates the bucket
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or stack.procs["s3"].poll() is not None:
            pytest.fail(f"moto_server not answering:\n{stack.log_tails()}")
        time.sleep(0.3)
    import s3fs

    stack.s3 = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": endpoint})
