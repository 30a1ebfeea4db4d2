"""`av2av check` start-up and cached-check benchmark. Prints one JSON object as its last line:

- first_line_s: from starting the process to its first line on stderr ("Checking ..."). Goal <= 2.
- cached_check_s: wall time of a second `av2av check` of an 8-triplet dataset (conformed clips
  already in the cache). Goal <= 5.
- first_check_s: the same, cold (decode, fit and write every clip).
- import_s: importing the check path (flows.cli + flows.prepare) in a fresh interpreter, and
  whether that imported torch, peft, diffusers or prefect (it must not).
- server_start_s: 0 by construction: the check path runs no Prefect server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lib.media.synthetic import make_sample_zip  # noqa: E402

TRIPLETS = 8
HEAVY = ("torch", "peft", "diffusers", "prefect")


def timed_check(zip_path: Path, env: dict) -> tuple[float, float, int]:
    """(seconds to the first stderr line, seconds in all, exit status) of one `av2av check`."""
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "check",
        str(zip_path),
        "--frames",
        "17",
        "--resolution",
        "low",
        "--aspect-ratio",
        "16:9",
    ]
    began = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    process.stderr.readline()
    first_line = time.perf_counter() - began
    process.communicate()
    return first_line, time.perf_counter() - began, process.returncode


def import_cost(env: dict) -> tuple[float, list[str]]:
    probe = (
        "import sys, time; t = time.perf_counter(); import flows.cli, flows.prepare; "
        f"print(time.perf_counter() - t); print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    lines = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return float(lines[0]), [name for name in lines[1].split(",") if name]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        env = os.environ | {
            "AV2AV_CACHE_DIR": str(scratch / "cache"),
            "AV2AV_PROGRESS": "lines",
            "PYTHONPATH": str(ROOT),
        }
        zip_path = make_sample_zip(scratch / "eight.zip", triplets=TRIPLETS, include_bad=False)
        _, first_check, status = timed_check(zip_path, env)
        first_line, cached_check, cached_status = timed_check(zip_path, env)
        import_s, heavy = import_cost(env)
    print(
        json.dumps(
            {
                "triplets": TRIPLETS,
                "first_line_s": round(first_line, 2),
                "goal_first_line_s": 2.0,
                "cached_check_s": round(cached_check, 2),
                "goal_cached_check_s": 5.0,
                "first_check_s": round(first_check, 2),
                "import_s": round(import_s, 2),
                "heavy_modules_imported": heavy,
                "server_start_s": 0.0,
                "exit_status": [status, cached_status],
            }
        )
    )


if __name__ == "__main__":
    main()
