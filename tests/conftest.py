"""Shared test fixtures. Real media is read from ../shared/media, never copied into the project."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MEDIA = Path(os.environ.get("AV2AV_MEDIA_DIR", Path(__file__).resolve().parents[2] / "shared" / "media"))


def pytest_configure(config):
    """Set Prefect's logging up once, bound to the session's streams: if a test's capture
    (capfd) created its console handler, later tests would log into a closed stream."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.logging.configuration import setup_logging

    setup_logging()


@pytest.fixture(scope="session")
def media() -> Path:
    if not MEDIA.is_dir():
        pytest.skip(f"shared media folder not found at {MEDIA}")
    return MEDIA


@pytest.fixture(scope="session")
def prefect_harness(tmp_path_factory):
    """One Prefect test harness (temporary SQLite API) for the whole session; flows share it."""
    from prefect.testing.utilities import prefect_test_harness

    os.environ["AV2AV_CACHE_DIR"] = str(tmp_path_factory.mktemp("av2av-cache"))
    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_zip(tmp_path_factory) -> Path:
    """The synthetic sample dataset (3 good triplets + 1 silent), built once per session."""
    from lib.media.synthetic import make_sample_zip

    return make_sample_zip(tmp_path_factory.mktemp("sample") / "sample.zip")


@pytest.fixture
def offline(monkeypatch):
    """No network: the hub's offline switch plus a socket that refuses to connect."""
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def silent_server():
    """A loopback URL whose server accepts connections and then never answers."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    held = []
    threading.Thread(target=lambda: [held.append(listener.accept()) for _ in range(8)], daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


@pytest.fixture
def decodes(monkeypatch) -> dict[str, int]:
    """Counts the triplet checks and fits that really decode media (not read back from the cache)."""
    from lib.ingest import conform

    counts = {"check": 0, "conform": 0}

    def counted(name, real):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(conform, "_check", counted("check", conform._check))
    monkeypatch.setattr(conform, "_conform", counted("conform", conform._conform))
    return counts


@pytest.fixture(scope="session")
def stack(request):
    """The end-to-end stack (tests/e2e_stack.py): started once, for every e2e test file."""
    from tests.e2e_stack import running_stack

    yield from running_stack(request)
