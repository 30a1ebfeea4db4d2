"""Full-page screenshots of what a user sees in the Prefect UI: the train-lora run form, a running
`train-lora` run, and its training-outputs artifact. For reviewing UI changes by eye.

    make serve &                       # or any server with the deployments and workers up
    pip install playwright             # a separate venv is fine; no browser download needed
    python tools/ui_screenshots.py OUT_DIR [--chromium /usr/bin/chromium]

It starts a tiny-model run with one validation sample through the deployment and waits for it.
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
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def call(method: str, path: str, body: dict | None = None):
    request = urllib.request.Request(f"{API}{path}", method=method, data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def start_run(demo: Path) -> dict:
    """A tiny training run (the demo's data) through the train-lora deployment."""
    request = json.loads((demo / "request.json").read_text())
    request |= {"number_of_steps": 400, "validation_every": 200, "output_url": str(demo / "ui-run")}
    deployment = call("GET", "/deployments/name/train-lora/train-lora")
    return call("POST", f"/deployments/{deployment['id']}/create_flow_run", {"parameters": {"request": request}})


def wait(run_id: str, done) -> dict:
    while True:
        run = call("GET", f"/flow_runs/{run_id}")
        if done(run):
            return run
        time.sleep(2)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--demo", type=Path, default=Path("outputs/demo"), help="where `av2av sample` wrote")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    deployment = call("GET", "/deployments/name/train-lora/train-lora")
    run = start_run(args.demo.resolve())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})

        def shot(url: str, name: str, settle_s: float = 4.0, height: int = 1000) -> None:
            # The UI scrolls inside its own container, so "full page" means a tall viewport.
            page.set_viewport_size({"width": 1400, "height": height})
            page.goto(url)
            page.wait_for_load_state("networkidle")
            time.sleep(settle_s)
            page.screenshot(path=str(args.out / name), full_page=True)
            print(args.out / name)

        shot(f"{UI}/deployments/deployment/{deployment['id']}/run", "1-run-form.png", height=7000)
        wait(run["id"], lambda r: any("training:" in line for line in _logs(r["id"])))
        shot(f"{UI}/runs/flow-run/{run['id']}", "2-running-parent-run.png", height=3200)
        shot(f"{UI}/runs/flow-run/{run['id']}?tab=Artifacts", "3-running-parent-artifacts.png")
        final = wait(run["id"], lambda r: r["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"))
        print("run ended", final["state_name"])
        artifacts = call("POST", "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]},
                                                                      "key": {"any_": ["training-outputs"]}}})
        if artifacts:
            shot(f"{UI}/artifacts/artifact/{artifacts[0]['id']}", "4-outputs-artifact.png", height=1800)
        shot(f"{UI}/runs/flow-run/{run['id']}", "5-finished-parent-run.png", height=3200)
        browser.close()
    return 0


def _logs(run_id: str) -> list[str]:
    rows = call("POST", "/logs/filter", {"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200})
    return [row["message"] for row in rows]


if __name__ == "__main__":
    sys.exit(main())
