"""`av2av train` stops cleanly: Ctrl-C (SIGINT) and SIGTERM end it within seconds with one line
and exit 130 / 143, leave no process it started (its temporary Prefect server included) and no
partial output, and the same request runs again; the temporary server's start-up has a
configurable time-out and one line when it is missed; everything that can be refused without the
network is refused before Prefect starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from lib.media.synthetic import make_demo

STOP_WITHIN_S = 15


def _processes_marked(mark: str) -> list[int]:
    """Live processes whose environment carries `mark` (the CLI and everything it started)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def _start(config: Path, tmp_path: Path, **env) -> tuple[subprocess.Popen, str]:
    mark = f"AV2AV_TEST_MARK={uuid.uuid4().hex}"
    environment = {
        **os.environ,
        "AV2AV_CACHE_DIR": str(tmp_path / "cache"),
        mark.split("=")[0]: mark.split("=")[1],
        **env,
    }
    environment.pop("PREFECT_API_URL", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.cli", "train", "--config", str(config)],
        cwd=Path(__file__).resolve().parents[1],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, mark


def _request(tmp_path: Path, **fields) -> Path:
    demo = make_demo(tmp_path / "demo")
    request = json.loads(demo["request"].read_text())
    request.update(
        validation=[],
        number_of_steps=100,
        checkpoint_every=2,
        output_url=str(tmp_path / "out"),
        debug_dataset=False,
        **fields,
    )
    config = tmp_path / "request.json"
    config.write_text(json.dumps(request))
    return config


def _first_checkpoint(tmp_path: Path, process: subprocess.Popen, timeout_s: float = 240) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        found = sorted((tmp_path / "cache" / "checkpoints").glob("*/checkpoint-*.safetensors"))
        if found:
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no checkpoint appeared: {process.communicate()}")


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
@pytest.mark.slow
def test_a_stop_is_one_line_leaves_nothing_running_and_the_run_resumes(tmp_path, sig, code):
    config = _request(tmp_path)
    process, mark = _start(config, tmp_path)
    _first_checkpoint(tmp_path, process)
    process.send_signal(sig)
    stopped_at = time.monotonic()
    stdout, stderr = process.communicate(timeout=60)
    assert time.monotonic() - stopped_at < STOP_WITHIN_S
    assert process.returncode == code, stderr
    assert "Traceback" not in stderr and "Crash detected" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("Interrupted at step ") and "checkpoint-" in last and last.endswith("Nothing was uploaded.")
    assert not _processes_marked(mark)  # the temporary server died with the CLI
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())
    if sig == signal.SIGTERM:  # the same request again, from the checkpoint it named
        checkpoint = last.split("checkpoint ", 1)[1].split(" (resume_from")[0]
        request = json.loads(config.read_text()) | {"resume_from": checkpoint, "checkpoint_every": 0}
        config.write_text(json.dumps(request))
        again, _ = _start(config, tmp_path)
        stdout, stderr = again.communicate(timeout=600)
        assert again.returncode == 0, stderr
        assert json.loads((out / "result.json").read_text())["steps"] == 100 and stdout.startswith("Trained 100 steps")


@pytest.mark.slow
def test_a_server_that_misses_its_start_time_out_is_one_line_and_leaves_nothing(tmp_path):
    config = _request(tmp_path)
    process, mark = _start(config, tmp_path, AV2AV_SERVER_START_TIMEOUT_S="1")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 1 and "Traceback" not in stderr, stderr
    assert stderr.strip().splitlines()[-1].startswith("The temporary Prefect server did not start within 1 s")
    assert "AV2AV_SERVER_START_TIMEOUT_S" in stderr and not _processes_marked(mark)


@pytest.mark.parametrize(
    "change, field, says",
    [
        ({"training_data_url": "ftp://example.com/data.zip"}, "training_data_url", "ftp:// is not a location"),
        ({"training_data_url": "gopher://example.com/data.zip"}, "training_data_url", "gopher:// is not a location"),
        ({"training_data_url": "htps://example.com/data.zip"}, "training_data_url", "htps:// is not a location"),
        (
            {"validation": [{"video_url": "v.mp4", "mask_url": "", "reference_video_url": "r.mp4"}]},
            "validation.0.mask_url",
            "is empty",
        ),
        ({"resume_from": "/nowhere/checkpoint-000010.safetensors"}, "resume_from", "no checkpoint file at"),
        ({"output_url": "sftp://user:pw@host/out"}, "output_url", "sftp:// is not a location this trainer writes to"),
    ],
)
def test_what_needs_no_network_is_refused_before_prefect_starts(tmp_path, monkeypatch, capsys, change, field, says):
    import flows.local_server
    from flows.cli import main

    def never(*args, **kwargs):
        raise AssertionError("Prefect was started for a request that could be refused without it")

    monkeypatch.setattr(flows.local_server, "local_server", never)
    config = tmp_path / "request.json"
    config.write_text(json.dumps({"training_data_url": "data.zip", "model": "tiny", **change}))
    began = time.monotonic()
    assert main(["train", "--config", str(config)]) == 2
    assert time.monotonic() - began < 2
    err = capsys.readouterr().err
    assert field in err and says in err and "Traceback" not in err and "pw@" not in err, err
