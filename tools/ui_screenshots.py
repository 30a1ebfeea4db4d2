"""Screenshots of what a user sees in the Prefect UI, for the README and for reviewing UI changes by
eye: the train-lora run form, a running run, a finished run's training-outputs artifact, a failed
run (InvalidDataset) and a retrain-batch summary. Writes PNGs 1280 px wide
(the batch summary 1920) to OUT_DIR (docs/screenshots by default).

    make serve &                       # or any server with the deployments and workers up
    av2av sample outputs/demo          # the tiny dataset, validation sample and request it uses
    pip install playwright             # a separate venv is fine; no browser download needed
    python tools/ui_screenshots.py [OUT_DIR] [--chromium /usr/bin/chromium] [--demo outputs/demo]

It starts three runs through the deployments at once (tiny model, 100 steps, low 16:9, 17 frames):
a training run, one whose training_data_url is not a zip, and a retrain-batch of a two-entry
manifest (one entry trains, one is invalid), then waits for each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

API = "http://127.0.0.1:4200/api"
UI = "http://127.0.0.1:4200"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WIDTH = 1280
SMALL = {"model": "tiny", "number_of_steps": 100, "resolution": "low", "aspect_ratio": "16:9", "number_of_frames": 17}
FINAL = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")


def call(method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{API}{path}",
        method=method,
        data=json.dumps(body).encode() if body else None,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def deployment(name: str) -> dict:
    return call("GET", f"/deployments/name/{name}")


def start(deployment_name: str, parameters: dict, run_name: str) -> dict:
    return call(
        "POST",
        f"/deployments/{deployment(deployment_name)['id']}/create_flow_run",
        {"parameters": parameters, "name": run_name},
    )


def demo_request(demo: Path) -> dict:
    request = json.loads((demo / "request.json").read_text()) | SMALL
    return request | {"validation_every": 50, "output_url": str(demo / "ui-run")}


def batch_manifest(demo: Path) -> Path:
    """Two tiny entries: one trains, one is invalid (rank 12 is not a rank)."""
    manifest = demo / "ui-batch.yaml"
    manifest.write_text(
        json.dumps(
            {
                "output_url": str(demo / "ui-batch"),
                "defaults": SMALL | {"trigger_phrase": "repl4ce", "learning_rate": 0.001},
                "entries": [
                    {"name": "voice-demo", "request": {"training_data_url": str(demo / "sample_dataset.zip")}},
                    {
                        "name": "smoke-fx",
                        "request": {"training_data_url": str(demo / "sample_dataset.zip"), "rank": 12},
                    },
                ],
            },
            indent=2,
        )
    )
    return manifest


def wait(run_id: str, done, timeout_s: float = 1800) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        run = call("GET", f"/flow_runs/{run_id}")
        if done(run):
            return run
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run['name']} still {run['state_name']} after {timeout_s:.0f} s")
        time.sleep(1)


def ended(run: dict) -> bool:
    return run["state_type"] in FINAL


def artifact_id(run_id: str, key: str) -> str | None:
    rows = call("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}})
    return rows[0]["id"] if rows else None


def _logs(run_id: str) -> list[str]:
    rows = call("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return [row["message"] for row in rows]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path, nargs="?", default=Path("docs/screenshots"))
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="where `av2av sample` wrote")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    demo = args.demo.resolve()
    from playwright.sync_api import sync_playwright

    stamp = time.strftime("%H%M%S")
    run = start("train-lora/train-lora", {"request": demo_request(demo)}, f"ui-demo-{stamp}")
    failed = start(
        "train-lora/train-lora",
        {
            "request": demo_request(demo)
            | {"training_data_url": str(demo / "request.json"), "validation": [], "output_url": str(demo / "ui-failed")}
        },
        f"ui-not-a-zip-{stamp}",
    )
    batch = start(
        "retrain-batch/retrain-batch-nightly",
        {"manifest_url": str(batch_manifest(demo)), "run_name_prefix": "ui"},
        f"ui-batch-{stamp}",
    )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": WIDTH, "height": 900})

        def shot(
            url: str, name: str, height: int = 900, settle_s: float = 4.0, newest: bool = False, width: int = WIDTH
        ) -> None:
            # The UI scrolls inside its own container: a taller viewport shows more of the page, and
            # `newest` scrolls it to the end of a run's logs (the lines that say what happened).
            page.set_viewport_size({"width": width, "height": height})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            time.sleep(settle_s)
            if newest:
                page.mouse.move(width // 2, height - 100)
                page.mouse.wheel(0, 50_000)
                time.sleep(1)
            page.screenshot(path=str(args.out / name))
            page.goto("about:blank")  # a live run page keeps the browser busy while the script waits
            print(args.out / name, flush=True)

        shot(
            f"{UI}/deployments/deployment/{deployment('train-lora/train-lora')['id']}/run", "run-form.png", height=1400
        )
        wait(run["id"], lambda r: ended(r) or any("training:" in line for line in _logs(r["id"])))
        # the page's head (state badge, timeline), then its newest log lines
        shot(f"{UI}/runs/flow-run/{run['id']}", "running-run.png", height=900, settle_s=2)
        shot(f"{UI}/runs/flow-run/{run['id']}", "running-run-log.png", height=1000, settle_s=2, newest=True)
        print("run ended", wait(run["id"], ended)["state_name"], flush=True)
        outputs = artifact_id(run["id"], "training-outputs")
        if outputs:
            shot(f"{UI}/artifacts/artifact/{outputs}", "finished-run-outputs.png", height=1400)
        print("failed run ended", wait(failed["id"], ended)["state_name"], flush=True)
        shot(f"{UI}/runs/flow-run/{failed['id']}", "failed-run.png", height=900, newest=True)
        print("batch ended", wait(batch["id"], ended)["state_name"], flush=True)
        summary = artifact_id(batch["id"], "batch-summary")
        if summary:
            shot(
                f"{UI}/artifacts/artifact/{summary}", "batch-summary.png", height=480, width=1920
            )  # the table scrolls sideways: wide enough for its message column
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
