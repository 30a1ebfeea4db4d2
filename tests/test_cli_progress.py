"""What `av2av train` says when nobody watches a terminal: with stdout and stderr going to a file,
progress lines arrive while it runs (never 10 s without one), and a refusal is one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib.media.synthetic import make_demo

ROOT = Path(__file__).resolve().parents[1]
MOST_SILENT_S = 10.0


def _environment(tmp_path: Path) -> dict:
    environment = {**os.environ, "AV2AV_CACHE_DIR": str(tmp_path / "cache")}
    environment.pop("PREFECT_API_URL", None)
    return environment


def _config(tmp_path: Path, **fields) -> Path:
    request = json.loads(make_demo(tmp_path / "demo")["request"].read_text())
    request.update(validation=[], number_of_steps=100, output_url=str(tmp_path / "out"), debug_dataset=False, **fields)
    config = tmp_path / "request.json"
    config.write_text(json.dumps(request))
    return config


def _run_into_file(config: Path, tmp_path: Path) -> tuple[int, list[float], str]:
    """Run `av2av train` with both streams to a file; (exit status, the seconds since start at which
    each line appeared in the file, the file's text)."""
    log = tmp_path / "train.log"
    arrivals: list[float] = []
    started = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "train", "--config", str(config)],
            cwd=ROOT,
            env=_environment(tmp_path),
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        while process.poll() is None:
            lines = log.read_text(errors="replace").count("\n")
            arrivals += [time.monotonic() - started] * (lines - len(arrivals))
            time.sleep(0.2)
    ended = time.monotonic() - started
    text = log.read_text(errors="replace")
    arrivals += [ended] * (text.count("\n") - len(arrivals))
    return process.returncode, [0.0, *arrivals, ended], text


@pytest.mark.slow
def test_piped_train_prints_a_line_at_least_every_10_s_while_it_runs(tmp_path):
    status, arrivals, text = _run_into_file(_config(tmp_path), tmp_path)
    assert status == 0, text
    gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:])]
    longest = max(gaps)
    assert longest <= MOST_SILENT_S, f"{longest:.1f} s without a line:\n{text}"
    during = [at for at in arrivals[1:-1] if at < arrivals[-1] - 1.0]
    assert len(during) >= 10, f"only {len(during)} lines before the end:\n{text}"
    assert "training: " in text and "steps" in text, text  # the loop's own progress, not only the stages
    # It ends with a short summary naming where the outputs are (--json gives result.json instead),
    # and Prefect's telemetry notice is not part of it.
    assert "Outputs in " in text and not text.rstrip().endswith("}"), text
    assert "telemetry" not in text.lower(), text


@pytest.mark.slow
def test_train_on_a_non_zip_says_so_in_exactly_one_line(tmp_path):
    not_a_zip = tmp_path / "holiday.zip"
    not_a_zip.write_text("a list of holiday videos, not an archive")
    status, _, text = _run_into_file(_config(tmp_path, training_data_url=str(not_a_zip)), tmp_path)
    assert status == 2, text
    about_it = [line for line in text.splitlines() if "holiday.zip" in line or "not_a_zip" in line]
    assert len(about_it) == 1, text
    assert "Traceback" not in text and "ERROR" not in text, text
