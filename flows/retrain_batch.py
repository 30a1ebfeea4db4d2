"""`retrain-batch`: scheduled batch retraining. Reads a manifest of LoRAs (lib/core/batch.py), retrains
only the entries whose dataset content or parameters changed since their last successful run, each
as its own `train-lora` run (named `nightly-<entry>-<date>`), and waits for them. It holds no GPU:
how many train at once is set by Prefect on the GPU pool (README, "Batch retraining").
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.futures import wait
from prefect.states import Completed, Failed

from flows.form import titled
from flows.gpu_handoff import deployment_available
from flows.refusals import refused
from lib.core import storage
from lib.core.batch import (
    EntryOutcome,
    ResolvedEntry,
    child_run_name,
    failed_message,
    parse_manifest,
    resolve_entries,
    still_running,
    summary_rows,
)
from lib.core.errors import REFUSALS, DownloadError
from lib.core.redact import redact_url
from tasks.batch import TRAIN_DEPLOYMENT, not_checked, skipped, train_entry, unchanged_since
from tasks.secrets import resolve_url


def read_manifest(manifest_url: str) -> list[ResolvedEntry]:
    """`manifest_url` may be `secret://NAME` (tasks/secrets.py); messages name it redacted."""
    manifest_file = storage.fetch_with_retries(
        resolve_url(manifest_url, "manifest_url"), storage.work_dir() / "downloads"
    )
    text = Path(manifest_file.path).read_text(errors="replace")
    Path(manifest_file.path).unlink(missing_ok=True)
    return resolve_entries(parse_manifest(text, redact_url(manifest_url)))


def _decide(entries: list[ResolvedEntry]) -> tuple[list[EntryOutcome], list[ResolvedEntry]]:
    """Summary rows for entries that will not train (invalid, unchanged, unreachable), and the rest."""
    outcomes, changed = [], []
    for entry in entries:
        if entry.request is None:
            outcomes.append(EntryOutcome(entry=entry.name, status="invalid", message=entry.problem))
            continue
        try:
            previous = unchanged_since(entry.name, entry.request)
        except DownloadError as error:
            outcomes.append(not_checked(entry.name, entry.request, error))
            continue
        if previous:
            outcomes.append(skipped(entry.name, entry.request, previous))
        else:
            changed.append(entry)
    return outcomes, changed


@flow(name="retrain-batch", log_prints=True)
def retrain_batch(
    manifest_url: Annotated[str, titled("Manifest URL")],
    run_name_prefix: Annotated[str, titled("Run name prefix")] = "nightly",
):
    """Retrain every LoRA of a manifest whose data or parameters changed; skip the others.

    Ends Completed when every entry trained or was skipped, else Failed listing the entries that
    did not (an invalid or failed entry never stops the others).

    Args:
        manifest_url: The manifest of LoRAs to keep trained, as YAML or JSON at any URL the trainer reads
            (https://, s3://, gs://, a path, secret://NAME): output_url, defaults (request fields every entry
            shares) and entries, each a name and its train-lora request fields. README, "Batch retraining",
            shows one.
        run_name_prefix: Each retrained entry runs as train-lora named PREFIX-ENTRY-DATE, e.g.
            nightly-voice-anna-2026-12-03.
    """
    try:
        entries = read_manifest(manifest_url)
    except REFUSALS as error:
        return refused(error)
    outcomes, changed = _decide(entries)
    use_deployment = deployment_available(TRAIN_DEPLOYMENT)
    print(
        f"{len(changed)} of {len(entries)} entries changed: "
        f"{', '.join(e.name for e in changed) or 'none'}; training them as train-lora runs"
    )
    runs = {e.name: child_run_name(run_name_prefix, e.name) for e in changed}
    futures = {train_entry.submit(e.name, e.request, runs[e.name], use_deployment): e.name for e in changed}
    _wait_reporting(futures, runs)
    outcomes += [future.result() for future in futures]
    order = [e.name for e in entries]
    outcomes.sort(key=lambda outcome: order.index(outcome.entry))
    _report(outcomes)
    if any(o.status in ("invalid", "failed") for o in outcomes):
        return Failed(message=failed_message(outcomes))
    trained = sum(o.status == "trained" for o in outcomes)
    return Completed(
        message=f"{trained} trained, {len(outcomes) - trained} skipped (unchanged); "
        f"billing units {sum(o.billing_units for o in outcomes)}"
    )


PROGRESS_EVERY_S = 30.0


def _wait_reporting(futures: dict, runs: dict[str, str]) -> None:
    """Wait for every entry's train-lora run; every PROGRESS_EVERY_S, one line naming those still
    running (each child's start and end are logged by train_entry, on this run too)."""
    started = time.monotonic()
    pending = set(futures)
    while pending:
        pending = set(wait(list(pending), timeout=PROGRESS_EVERY_S).not_done)
        if pending:
            get_run_logger().info(
                still_running({futures[f]: runs[futures[f]] for f in pending}, time.monotonic() - started)
            )


def _report(outcomes: list[EntryOutcome]) -> None:
    rows = summary_rows(outcomes)
    create_table_artifact(
        key="batch-summary",
        table=rows,
        description="Per entry: status, the train-lora run, billing units, output, time.",
    )
    for row in rows:
        get_run_logger().info("%s: %s %s", row["entry"], row["status"], row["message"] or row["child_run"])
