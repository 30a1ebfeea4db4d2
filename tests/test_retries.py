"""Retries heal network hiccups only: a 503 is retried, a 404 or a bad archive never is."""

from __future__ import annotations

import http.server
import threading

import pytest
from prefect import flow

from lib.core.errors import DownloadError
from tasks.ingest import fetch_training_data

pytestmark = pytest.mark.usefixtures("prefect_harness")


class _Flaky(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self):  # noqa: N802
        count = self.hits[self.path] = self.hits.get(self.path, 0) + 1
        if self.path == "/flaky.zip" and count > 2:
            body = b"PK\x05\x06" + b"\0" * 18
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(503 if self.path == "/flaky.zip" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Flaky.hits = {}
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@flow
def fetch_once(url: str, root: str):
    from pathlib import Path

    return fetch_training_data.with_options(retry_delay_seconds=0)(url, Path(root))


def test_transient_errors_are_retried_until_they_heal(server, tmp_path):
    ref = fetch_once(f"{server}/flaky.zip", str(tmp_path))
    assert ref.size == 22
    assert _Flaky.hits["/flaky.zip"] >= 3, "two 503s, then success on a retry"


@pytest.mark.slow
def test_permanent_errors_are_not_retried(server, tmp_path):
    with pytest.raises(DownloadError, match="missing.zip"):
        fetch_once(f"{server}/missing.zip", str(tmp_path))
    first_attempt_hits = _Flaky.hits["/missing.zip"]
    assert first_attempt_hits <= 2, "one attempt (fsspec may HEAD then GET), no retries"
