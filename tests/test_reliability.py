"""Downloads that a real deployment meets: presigned URLs (their secret never shown, their HTTP
status named), plain HTTP servers without range support, and one request per attempt."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import socket
import threading
import time
import traceback
import zipfile

import pytest

from flows.cli import main
from lib.core.errors import DownloadError, TransientDownloadError
from lib.core.redact import redact_json, redact_text, redact_url
from lib.core.storage import fetch, fetch_with_retries, sha256_file

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = ["--frames", "17", "--resolution", "low", "--aspect-ratio", "16:9"]
SECRET = "s3cr3tSIGNATURE0123456789"
TOKEN = "t0kenVALUE9876"
QUERY = f"?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20260101&X-Amz-Signature={SECRET}&token={TOKEN}"


class _Files(http.server.SimpleHTTPRequestHandler):
    """Python's own file server (no range support: a Range header is ignored, 200 with the whole
    file), plus /forbidden/… answering 403 and /busy/… answering 503. Records every request."""

    def __init__(self, *args, requests: list, **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def _refuse(self) -> bool:
        self.requests.append((self.command, self.path, self.headers.get("Range")))
        for prefix, status in (("/forbidden/", 403), ("/busy/", 503)):
            if self.path.startswith(prefix):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return True
        return False

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if not self._refuse():
            super().do_GET()

    def do_HEAD(self):  # noqa: N802
        if not self._refuse():
            super().do_HEAD()

    def log_message(self, *args):
        pass


@pytest.fixture
def files(tmp_path):
    """(base URL, served folder, the list of (method, path, Range header) the server saw)."""
    root, requests = tmp_path / "served", []
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Files, requests=requests, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root, requests
    server.shutdown()
    server.server_close()


@pytest.fixture
def debug_logs(caplog):
    """Every log record, down to DEBUG (fsspec and aiohttp log URLs there)."""
    caplog.set_level(logging.DEBUG)
    return caplog


def _leaks(*texts: str) -> list[str]:
    return [secret for secret in (SECRET, TOKEN) if any(secret in text for text in texts)]


# -- the one redaction rule ---------------------------------------------------------------------


def test_redaction_keeps_scheme_host_and_path_only():
    assert (
        redact_url(f"https://bucket.s3.amazonaws.com/data/anna.zip{QUERY}#part")
        == "https://bucket.s3.amazonaws.com/data/anna.zip"
    )
    assert redact_url("https://user:pa55@example.com:8443/a.zip?x=1") == "https://example.com:8443/a.zip"
    assert redact_url("s3://bucket/key.zip?versionId=abc") == "s3://bucket/key.zip"
    assert redact_url("/data/odd?name.zip") == "/data/odd?name.zip", "a local path is not a URL"
    assert redact_url("diffusers/LTX-2.3-Diffusers") == "diffusers/LTX-2.3-Diffusers"
    text = f"Could not download 'https://h/a.zip{QUERY}': see https://u:p@h/b?c=d, then file:///x/y"
    assert redact_text(text) == "Could not download 'https://h/a.zip': see https://h/b then file:///x/y"
    document = {
        "training_data_url": f"https://h/a.zip{QUERY}",
        "rank": 8,
        "validation": [{"video_url": f"https://h/v.mp4{QUERY}", "prompt": "a cat"}],
    }
    assert redact_json(document) == {
        "training_data_url": "https://h/a.zip",
        "rank": 8,
        "validation": [{"video_url": "https://h/v.mp4", "prompt": "a cat"}],
    }


# -- presigned URLs: the real status, no secret -------------------------------------------------


def test_presigned_url_403_names_the_status_and_hides_the_secret(files, tmp_path, debug_logs):
    """Before: `FileNotFoundError: … The URL contains glob characters: you maybe needed to pass
    expand=True`, with the signature in the message."""
    base, _, _ = files
    with pytest.raises(DownloadError) as caught:
        fetch(f"{base}/forbidden/anna.zip{QUERY}", tmp_path / "dl")
    error = caught.value
    assert not isinstance(error, TransientDownloadError), "a 403 is not retried"
    assert "HTTP 403 Forbidden" in error.message and "glob" not in error.message, error.message
    assert f"{base}/forbidden/anna.zip" in error.message
    shown = "".join(traceback.format_exception(error))  # what a log with a traceback would hold
    assert _leaks(error.message, str(error), repr(error), shown, debug_logs.text) == []
    assert list((tmp_path / "dl").iterdir()) == [], "no partial file left"


def test_presigned_url_is_fetched_as_given(files, tmp_path, debug_logs):
    """The signature (`%2F` in it) reaches the server byte for byte; nothing logs it."""
    base, root, requests = files
    (root / "anna.zip").write_bytes(b"PK\x05\x06" + b"\0" * 18)
    ref = fetch(f"{base}/anna.zip{QUERY}", tmp_path)
    assert ref.size == 22 and ref.path.endswith(".zip")
    assert [(method, path) for method, path, _ in requests] == [("GET", f"/anna.zip{QUERY}")]
    assert _leaks(debug_logs.text) == []


def test_check_cli_never_shows_a_presigned_urls_secret(files, sample_zip, tmp_path, capfd, debug_logs):
    base, root, _ = files
    shutil.copy(sample_zip, root / "sample.zip")
    report = tmp_path / "report.json"
    assert main(["check", f"{base}/sample.zip{QUERY}", *FAST, "--report", str(report)]) == 0
    out, err = capfd.readouterr()
    assert f"Checking {base}/sample.zip ..." in err and "3 accepted, 1 rejected" in out
    assert _leaks(out, err, report.read_text(), debug_logs.text) == []

    assert main(["check", f"{base}/forbidden/sample.zip{QUERY}", *FAST, "--report", str(report)]) == 1
    out, err = capfd.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == f"Download failed: Could not download {base}/forbidden/sample.zip: HTTP 403 Forbidden", lines
    assert "Traceback" not in err and _leaks(out, err, debug_logs.text) == []


# -- servers without range support --------------------------------------------------------------


def _padded_sample(sample_zip, destination, padding_bytes: int):
    """The sample dataset plus a stored (incompressible) extra member: larger than fsspec's 5 MB
    read-ahead block, so a range-reading client must ask for a second range."""
    import os

    shutil.copy(sample_zip, destination)
    with zipfile.ZipFile(destination, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("padding.bin", os.urandom(padding_bytes))
    return destination


def test_a_server_without_range_support_is_fetched_and_checked(files, sample_zip, tmp_path, capfd):
    """Python's http.server ignores Range. Before: `ValueError: The HTTP server doesn't appear to
    support range requests` for any file over 5 MB."""
    base, root, requests = files
    zip_path = _padded_sample(sample_zip, root / "big.zip", 12 << 20)
    began = time.monotonic()
    ref = fetch(f"{base}/big.zip", tmp_path / "dl")
    seconds = time.monotonic() - began
    assert ref.sha256 == sha256_file(zip_path) and ref.size == zip_path.stat().st_size
    assert [(method, rng) for method, _, rng in requests] == [("GET", None)], "one plain GET, streamed"
    print(f"\nhttp.server fetch of {ref.size / 2**20:.1f} MiB: {seconds:.2f} s")
    assert main(["check", f"{base}/big.zip", *FAST]) == 0
    assert "3 accepted, 1 rejected" in capfd.readouterr().out


# -- one request per attempt, the same last message everywhere ----------------------------------


def test_each_attempt_is_one_request_and_the_last_message_counts_them(files, tmp_path, monkeypatch):
    """A server answering 503: before, every attempt sent a HEAD and then a GET (and each waited
    out its own read time-out on a silent server)."""
    base, _, requests = files
    monkeypatch.setenv("AV2AV_DOWNLOAD_ATTEMPTS", "3")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    with pytest.raises(TransientDownloadError) as caught:
        fetch_with_retries(f"{base}/busy/anna.zip{QUERY}", tmp_path)
    assert [method for method, _, _ in requests] == ["GET"] * 3
    assert caught.value.message == (
        f"Could not download {base}/busy/anna.zip: HTTP 503 Service Unavailable "
        "(after 3 attempt(s), $AV2AV_DOWNLOAD_ATTEMPTS)"
    )


@pytest.fixture
def counting_silent_server():
    """Accepts connections and never answers; yields (URL, a list holding one entry per connection)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    accepted = []

    def serve():
        while True:
            try:
                accepted.append(listener.accept())
            except OSError:
                return

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()
    for connection, _ in accepted:
        connection.close()


@pytest.mark.slow
def test_a_silent_server_costs_one_read_time_out_per_attempt(counting_silent_server, tmp_path, monkeypatch):
    url, accepted = counting_silent_server
    monkeypatch.setenv("AV2AV_READ_TIMEOUT_S", "1")
    monkeypatch.setenv("AV2AV_DOWNLOAD_ATTEMPTS", "2")
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    began = time.monotonic()
    with pytest.raises(TransientDownloadError, match=r"timed out.*after 2 attempt\(s\)"):
        fetch_with_retries(f"{url}/anna.zip", tmp_path)
    seconds = time.monotonic() - began
    print(f"\n2 attempts against a silent server, read time-out 1 s: {seconds:.2f} s, {len(accepted)} connection(s)")
    assert len(accepted) == 2, "one connection (one request) per attempt"
    assert seconds < 3.5, "two attempts of one 1 s time-out each (before: two time-outs per attempt)"


def test_the_flows_last_download_message_counts_the_attempts(files, sample_zip, tmp_path, monkeypatch, capfd):
    """`av2av train` (the train-lora flow, Prefect's task retries) ends with the message
    `av2av check` ends with. Before: no attempt count."""
    import tasks.ingest as ingest
    from lib.core.storage import download_attempts

    base, _, requests = files
    monkeypatch.setattr(ingest, "fetch_training_data", ingest.fetch_training_data.with_options(retry_delay_seconds=0))
    request = {
        "training_data_url": f"{base}/busy/anna.zip{QUERY}",
        "model": "tiny",
        "number_of_frames": 9,
        "resolution": "low",
        "aspect_ratio": "16:9",
        "output_url": str(tmp_path / "out"),
    }
    (tmp_path / "request.json").write_text(json.dumps(request))
    assert main(["train", "--config", str(tmp_path / "request.json")]) == 1
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    attempts = download_attempts()
    assert lines[-1] == (
        f"Download failed: Could not download {base}/busy/anna.zip: HTTP 503 Service Unavailable "
        f"(after {attempts} attempt(s), $AV2AV_DOWNLOAD_ATTEMPTS)"
    ), lines
    assert [method for method, _, _ in requests] == ["GET"] * attempts
    assert _leaks(err) == []


# -- the train-lora flow: outputs, logs and stored parameters -----------------------------------


@pytest.mark.slow
def test_train_with_presigned_urls_leaks_them_nowhere(files, sample_zip, tmp_path, debug_logs):
    """The dataset's presigned URL given as `secret://NAME` (a Prefect Secret block), validation
    URLs presigned in the request: config.json, report.json, result.json, the run's logs and
    artifacts hold neither secret, and the run's stored parameters not the dataset's. Served by
    Python's http.server (no range support)."""
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, LogFilter, LogFilterFlowRunId

    from flows.train_lora import train_lora
    from lib.core.config import TrainRequest
    from lib.media.synthetic import make_box_mask, make_clip

    base, root, requests = files
    shutil.copy(sample_zip, root / "sample.zip")
    make_clip(root / "s.mp4", 0.5, seed=5)
    make_box_mask(root / "m.png", (320, 180), (0.3, 0.3, 0.7, 0.7))
    make_clip(root / "r.mp4", 0.5, seed=6)
    Secret(value=f"{base}/sample.zip{QUERY}").save("av2av-test-presigned-data", overwrite=True)
    validation_query = f"?X-Amz-Signature={SECRET}v"
    sample = {
        "prompt": "repl4ce",
        "video_url": f"{base}/s.mp4{validation_query}",
        "mask_url": f"{base}/m.png{validation_query}",
        "reference_video_url": f"{base}/r.mp4{validation_query}",
    }
    out = tmp_path / "out"
    request = TrainRequest(
        training_data_url="secret://av2av-test-presigned-data",
        model="tiny",
        number_of_steps=100,
        rank=8,
        number_of_frames=9,
        resolution="low",
        aspect_ratio="16:9",
        output_url=str(out),
        validation=[sample],
        validation_number_of_frames=9,
        validation_resolution="low",
        validation_aspect_ratio="16:9",
        validation_steps=2,
    )
    state = train_lora(request, return_state=True)
    assert state.is_completed(), state.message
    assert ("GET", f"/sample.zip{QUERY}", None) in requests, "the Secret's URL was fetched as given"
    config = json.loads((out / "config.json").read_text())
    assert config["request"]["validation"][0]["video_url"] == f"{base}/s.mp4"
    assert config["request"]["training_data_url"] == "secret://av2av-test-presigned-data"
    texts = [(out / name).read_text() for name in ("config.json", "report.json", "result.json")]
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        logs = [
            log.message for log in client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        ]
        artifacts = [
            str(a.data)
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
            )
        ]
    assert _leaks(*texts, *logs, *artifacts, debug_logs.text, run.name) == []
    parameters = json.dumps(run.parameters)
    assert "secret://av2av-test-presigned-data" in parameters and TOKEN not in parameters


def test_an_unknown_secret_name_is_refused_naming_the_field(capfd):
    assert main(["check", "secret://av2av-test-no-such-block", *FAST]) == 1
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert lines[-1].startswith(
        "Download failed: training_data_url: secret://av2av-test-no-such-block names no readable Prefect Secret block"
    ), lines
