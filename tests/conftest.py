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
    from lib.synthetic import make_sample_zip

    return make_sample_zip(tmp_path_factory.mktemp("sample") / "sample.zip")


@pytest.fixture
def offline(monkeypatch):
    """No network: the hub's offline switch plus a socket that refuses to connect."""
    import socket

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
