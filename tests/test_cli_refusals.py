"""Every expected refusal through the CLI: its documented exit status, one clear message that
names the user's file or field, and never a traceback. Also: every --help works."""

from __future__ import annotations

import http.server
import json
import socketserver
import stat
import threading
import zipfile
from pathlib import Path

import pytest

from flows.cli import main
from tests.media_helpers import make_zip

pytestmark = pytest.mark.usefixtures("prefect_harness")
FAST = ["--frames", "17", "--resolution", "low", "--aspect-ratio", "16:9"]


@pytest.fixture(scope="module")
def web(tmp_path_factory):
    """A local HTTP server: /missing.zip answers 404."""
    root = tmp_path_factory.mktemp("web")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, *args):
            pass

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _zip(path: Path, members: dict, **kwargs) -> Path:
    with zipfile.ZipFile(path, "w", **kwargs) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _symlink_zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("clip_start.mp4")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    return path


def _encrypted_zip(path: Path) -> Path:
    raw = bytearray(_zip(path, {"secret_start.mp4": b"x"}).read_bytes())
    for signature, flag_offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        raw[raw.find(signature) + flag_offset] |= 0x1
    path.write_bytes(bytes(raw))
    return path


def _request_file(tmp_path: Path, **fields) -> str:
    path = tmp_path / "request.json"
    path.write_text(fields.pop("raw", None) or json.dumps(fields))
    return str(path)


def _silent_only(tmp_path: Path, media: Path) -> Path:
    return make_zip(
        tmp_path / "silent.zip",
        {
            "dog_start.mp4": media / "h264_aac-silent_1280x720_29.97fps_9.7s_dog.mp4",
            "dog_end.mp4": media / "h264_aac_854x480_25fps_9s_editlist.mp4",
            "dog_mask.png": media / "masks" / "runningcar_mask_square_432x240.png",
        },
    )


# (id, argv builder, exit status, text that must appear)
CASES = [
    ("not-a-zip", lambda t, w, m: ["check", str(_text(t / "holiday.zip"))], 2, "holiday.zip is not a .zip archive"),
    (
        "unsafe-path",
        lambda t, w, m: ["check", str(_zip(t / "a.zip", {"../evil_start.mp4": b"x"}))],
        2,
        "../evil_start.mp4",
    ),
    ("symlink", lambda t, w, m: ["check", str(_symlink_zip(t / "a.zip"))], 2, "clip_start.mp4"),
    ("encrypted", lambda t, w, m: ["check", str(_encrypted_zip(t / "a.zip"))], 2, "secret_start.mp4"),
    (
        "too-many-files",
        lambda t, w, m: ["check", str(_zip(t / "many.zip", {f"f{i}.txt": b"" for i in range(2001)}))],
        2,
        "2001 files",
    ),
    (
        "zip-bomb",
        lambda t, w, m: [
            "check",
            str(_zip(t / "bomb.zip", {"bomb_start.mp4": b"\0" * (8 << 20)}, compression=zipfile.ZIP_DEFLATED)),
        ],
        2,
        "bomb_start.mp4",
    ),
    ("frames-out-of-range", lambda t, w, m: ["check", "x.zip", "--frames", "500"], 2, "number_of_frames"),
    ("fps-out-of-range", lambda t, w, m: ["check", "x.zip", "--fps", "5"], 2, "frame_rate"),
    ("unknown-resolution", lambda t, w, m: ["check", "x.zip", "--resolution", "ultra"], 2, "'ultra'"),
    ("missing-file", lambda t, w, m: ["check", str(t / "nowhere.zip")], 1, "nowhere.zip"),
    ("unreachable-url", lambda t, w, m: ["check", "http://127.0.0.1:9/triplets.zip"], 1, "Cannot connect to host"),
    ("http-404", lambda t, w, m: ["check", f"{w}/missing.zip"], 1, "HTTP 404"),
    ("all-rejected", lambda t, w, m: ["check", str(_silent_only(t, m())), *FAST], 2, "dog: silent_audio"),
    (
        "bad-rank-in-config",
        lambda t, w, m: ["train", "--config", _request_file(t, training_data_url="x.zip", rank=12)],
        2,
        "rank",
    ),
    (
        "config-not-json",
        lambda t, w, m: ["train", "--config", _request_file(t, raw="{rank: 8")],
        2,
        "Invalid request in",
    ),
    ("config-missing", lambda t, w, m: ["train", "--config", str(t / "absent.json")], 2, "absent.json"),
    (
        "resume-from-missing",
        lambda t, w, m: [
            "train",
            "--config",
            _request_file(t, training_data_url="x.zip", model="tiny", resume_from=str(t / "ckpt.safetensors")),
        ],
        2,
        "resume_from",
    ),
    (
        "output-url-unwritable",
        lambda t, w, m: [
            "train",
            "--config",
            _request_file(t, training_data_url="x.zip", model="tiny", output_url=str(_text(t / "results.txt") / "run")),
        ],
        2,
        "cannot write to",
    ),
    (
        "output-url-extra-missing",
        lambda t, w, m: [
            "train",
            "--config",
            _request_file(t, training_data_url="x.zip", model="tiny", output_url="gs://my-bucket/loras"),
        ],
        2,
        "av2av-trainer[gcs]",
    ),
    (
        "model-unavailable",
        lambda t, w, m: [
            "train",
            "--config",
            _request_file(t, training_data_url="x.zip", model_source=str(t / "ltx-2.3.safetensors")),
        ],
        2,
        "ltx-2.3.safetensors",
    ),
]


def _text(path: Path) -> Path:
    path.write_text("a holiday video list, not an archive")
    return path


@pytest.mark.parametrize("builder, status, expected", [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_refusal(builder, status, expected, tmp_path, web, capfd, monkeypatch, request):
    monkeypatch.delenv("AV2AV_MODEL_SOURCE", raising=False)
    monkeypatch.setenv("AV2AV_DOWNLOAD_ATTEMPTS", "1")  # a refused connection is retried otherwise (26 s)
    import time

    argv = builder(tmp_path, web, lambda: request.getfixturevalue("media"))
    began = time.monotonic()
    try:
        code = main(argv)
    except SystemExit as exited:  # argparse refuses a bad choice itself (usage + one error line)
        code = exited.code
    elapsed = time.monotonic() - began
    out, err = capfd.readouterr()
    assert code == status, (out, err)
    if argv[0] == "train":  # every request check comes before any dataset or model work
        assert elapsed < 10, f"refused after {elapsed:.1f} s"
    assert "Traceback" not in out + err
    assert expected in out + err, (out, err)


@pytest.mark.parametrize("argv", [["--help"], ["check", "--help"], ["train", "--help"], ["sample", "--help"]])
def test_help_exits_0(argv, capfd):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 0
    out, err = capfd.readouterr()
    assert "usage: av2av" in out and "Traceback" not in out + err


@pytest.mark.slow
def test_check_against_a_server_that_never_answers_times_out(capfd, monkeypatch, silent_server):
    """`av2av check` on a server that accepts and never answers: a time-out message, within the
    configured read time-out × attempts (plus the waits between attempts), exit 1."""
    import time

    monkeypatch.setenv("AV2AV_READ_TIMEOUT_S", "1")
    monkeypatch.setenv("AV2AV_DOWNLOAD_ATTEMPTS", "2")  # 2 × 1 s, and a 1 s wait between
    began = time.monotonic()
    status = main(["check", f"{silent_server}/triplets.zip", *FAST])
    elapsed = time.monotonic() - began
    err = capfd.readouterr().err
    assert status == 1, err
    assert "timed out" in err and "after 2 attempt(s)" in err and "triplets.zip" in err, err
    assert elapsed < 2 * 1 + 1 + 3, f"{elapsed:.1f} s"
    assert "Traceback" not in err


def test_unwritable_cache_location_is_refused_before_the_dataset(tmp_path, capfd, monkeypatch):
    """A worker whose AV2AV_CACHE_DIR cannot be written: one line naming the variable, exit 1."""
    monkeypatch.setenv("AV2AV_CACHE_DIR", (_text(tmp_path / "a-file") / "cache").as_uri())
    monkeypatch.setenv("AV2AV_LOCAL_CACHE_DIR", str(tmp_path / "local"))
    code = main(["check", str(tmp_path / "never-fetched.zip"), *FAST])
    err = capfd.readouterr().err
    assert code == 1 and "Cache unavailable: AV2AV_CACHE_DIR: cannot write to the cache location" in err, err
    assert "never-fetched.zip" not in err.split("Cache unavailable")[1] and "Traceback" not in err


def test_each_refusal_declares_its_state_exit_status_and_line_once():
    """The one refusal table is the error classes: the run's state name, the CLI's exit status and
    line come from there; anything else (StageFailed: a bug) is not a refusal and keeps its traceback."""
    from flows.cli_common import refusal_of
    from lib.core.errors import REFUSAL_STATE_NAMES, REFUSALS, StageFailed, TransientDownloadError

    assert len(set(REFUSAL_STATE_NAMES)) == len(REFUSALS)
    for kind in REFUSALS:
        error = kind("the reason")
        assert error.state_name and error.exit_status in (1, 2), kind
        assert refusal_of(error) == (kind.exit_status, error.refusal_line()), kind
        assert error.refusal_line().endswith("the reason")
    assert refusal_of(TransientDownloadError("reset")) == (1, "Download failed: reset")
    assert refusal_of(StageFailed("Stage 'fetch' failed: KeyError")) is None
