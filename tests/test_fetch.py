"""Fetching training data through fsspec: http(s), file://, plain paths, memory://; failures
classified so that only transient ones are retried."""

from __future__ import annotations

import hashlib
import http.server
import threading

import fsspec
import pytest

from lib.core.errors import DownloadError, TransientDownloadError
from lib.core.storage import fetch, sha256_file

PAYLOAD = b"PK" + bytes(range(256)) * 40


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        if self.path == "/data.zip":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        else:
            self.send_response(503 if self.path == "/busy.zip" else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    do_HEAD = do_GET

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def http_url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_download_is_content_addressed(tmp_path, http_url):
    ref = fetch(f"{http_url}/data.zip", tmp_path)
    assert ref.size == len(PAYLOAD) and sha256_file(ref.path) == ref.sha256
    assert ref.path.endswith(f"{ref.sha256}.zip")
    assert [p.name for p in tmp_path.iterdir()] == [f"{ref.sha256}.zip"], "no partial files left"


def test_local_path_file_url_and_memory(tmp_path):
    source = tmp_path / "in.zip"
    source.write_bytes(PAYLOAD)
    with fsspec.open("memory://bucket/in.zip", "wb") as handle:
        handle.write(PAYLOAD)
    hashes = {fetch(url, tmp_path / "dl").sha256 for url in (str(source), f"file://{source}", "memory://bucket/in.zip")}
    assert hashes == {hashlib.sha256(PAYLOAD).hexdigest()}


def test_server_errors_are_transient_missing_files_are_not(tmp_path, http_url):
    with pytest.raises(TransientDownloadError, match="busy.zip"):
        fetch(f"{http_url}/busy.zip", tmp_path)
    with pytest.raises(DownloadError) as missing:
        fetch(f"{http_url}/missing.zip", tmp_path)
    assert not isinstance(missing.value, TransientDownloadError) and "missing.zip" in missing.value.message
    with pytest.raises(DownloadError) as local:
        fetch(str(tmp_path / "nope.zip"), tmp_path)
    assert not isinstance(local.value, TransientDownloadError)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".download")]


def test_size_cap(tmp_path, http_url):
    with pytest.raises(DownloadError, match="larger than"):
        fetch(f"{http_url}/data.zip", tmp_path, max_bytes=1000)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_server_that_never_answers_times_out(tmp_path, monkeypatch, silent_server):
    """Accepts the connection, then says nothing: the fetch fails with a time-out message within
    the configured read time-out (before: 300 s per attempt, silently)."""
    import time

    monkeypatch.setenv("AV2AV_READ_TIMEOUT_S", "1")
    began = time.monotonic()
    with pytest.raises(TransientDownloadError, match="timed out") as caught:
        fetch(f"{silent_server}/triplets.zip", tmp_path)
    assert time.monotonic() - began < 10
    assert "triplets.zip" in caught.value.message and "AV2AV_READ_TIMEOUT_S" in caught.value.message
