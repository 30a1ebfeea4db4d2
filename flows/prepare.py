"""Dataset preparation, the CPU half of `train-lora`: fetch → extract → match → check → conform →
report, with the same orchestration for two ways of calling its operations:
- `prefect_operations()`: Prefect tasks (cached by content, retried, with artifacts) inside a flow run;
- `local_operations()`: the same lib calls, no Prefect at all, for `av2av check` (no server to start,
  no task engine; conformed clips are still reused from the content-addressed cache).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from lib.core.cache import Cache
from lib.core.config import TrainRequest
from lib.core.errors import ArchiveError
from lib.core.plan import conform_settings
from lib.core.progress import Progress, announce
from lib.core.redact import redact_url
from lib.core.storage import FileRef
from lib.ingest.conform import TripletResult
from lib.ingest.report import raise_if_unusable


class PreparedDataset(BaseModel):
    model_config = ConfigDict(frozen=True)
    report: dict
    accepted: list[TripletResult]
    debug_dataset: FileRef | None = None


@dataclass(frozen=True)
class DatasetOperations:
    fetch: Callable  # (url, local folder) -> FileRef
    extract: Callable  # (zip FileRef, local folder, display name) -> ExtractedArchive
    match: Callable  # (ExtractedArchive) -> MatchOutcome
    check: Callable  # (Triplet, Cache) -> TripletCheck
    conform: Callable  # (Triplet, TripletCheck, ConformSettings, Cache) -> TripletResult
    report: Callable  # (results, rejections, warnings, errors, report path) -> report dict
    debug: Callable  # (accepted results, report, destination) -> FileRef
    map_triplets: Callable  # (operation, label, per-triplet argument lists, shared arguments) -> results
    notify: Callable = lambda text: None  # a line for the user, e.g. which triplets were dropped


def prefect_operations(log: Callable[[str], None] | None = None) -> DatasetOperations:
    from prefect import unmapped

    from tasks import ingest

    def map_triplets(step, label, per_triplet, shared=()):
        futures = step.map(*per_triplet, *[unmapped(value) for value in shared])
        with Progress(len(futures), label, log=log, unit="triplet") as progress:
            for done, future in enumerate(futures, 1):
                future.wait()
                progress.update(done)
        return [future.result() for future in futures]

    return DatasetOperations(
        fetch=ingest.fetch_training_data,
        extract=ingest.extract_archive,
        match=ingest.match_files,
        check=ingest.check_triplet,
        conform=ingest.conform_triplet,
        report=ingest.build_report,
        debug=ingest.write_debug_dataset,
        map_triplets=map_triplets,
        notify=lambda text: announce(text, log),
    )


def local_operations() -> DatasetOperations:
    from lib.core import storage
    from lib.ingest import archive, conform, dataset, debug_dataset, report

    def fetch(url: str, local: Path) -> FileRef:
        from tasks.secrets import resolve_url  # imports Prefect only for a secret:// URL

        return storage.fetch_with_retries(resolve_url(url), local / "downloads")

    def build_report(results, rejections, warnings, errors, report_path):
        document = report.build_report(results, rejections, warnings, errors)
        if report_path is not None:
            report.write_report(document, report_path)
        return document

    def map_triplets(step, label, per_triplet, shared=()):
        items = list(zip(*per_triplet))
        with ThreadPoolExecutor(os.cpu_count() or 2) as pool, Progress(len(items), label, unit="triplet") as progress:
            futures = [pool.submit(step, *item, *shared) for item in items]
            for done, future in enumerate(futures, 1):
                future.exception()
                progress.update(done)
        return [future.result() for future in futures]

    return DatasetOperations(
        fetch=fetch,
        extract=archive.extract_cached,
        match=lambda extracted: dataset.match_extracted(extracted.root, extracted.names),
        check=conform.check_triplet,
        conform=conform.conform_triplet,
        report=build_report,
        debug=debug_dataset.write_debug_dataset,
        map_triplets=map_triplets,
    )


def summary(document: dict) -> str:
    """One line: how many triplets train, and which were dropped and why."""
    dropped = [f"{row['name']} ({row['reason']})" for row in document["triplets"] if row["status"] == "rejected"]
    text = f"{document['accepted']} triplet(s) accepted"
    return f"{text}; dropped: {', '.join(dropped)} (see report.json)" if dropped else text


def display_name(url: str) -> str:
    """The user's name for the archive: the last part of its URL (redacted) or path."""
    shown = redact_url(url)
    return Path(shown.rstrip("/")).name or shown


def prepare_dataset(
    request: TrainRequest,
    report_path: Path | None = None,
    debug_dataset_path: Path | None = None,
    zip_file: FileRef | None = None,
    operations: DatasetOperations | None = None,
    cache: Cache | None = None,
) -> PreparedDataset:
    """Fetch (unless given), extract, match, check and conform; InvalidDataset when nothing qualifies.
    Conformed clips go to `cache` (this worker's, by default) for the GPU pool to read."""
    operations = operations or prefect_operations()
    cache = cache or Cache.current()
    local = Path(cache.local)
    zip_file = zip_file or operations.fetch(request.training_data_url, local)
    try:
        extracted = operations.extract(zip_file, local, display_name(request.training_data_url))
    except ArchiveError as error:
        document = operations.report([], [], [], [{"code": error.code, "message": error.message}], report_path)
        raise_if_unusable(document)
    matched = operations.match(extracted)
    checks = operations.map_triplets(operations.check, "checking triplets", [matched.triplets], (cache,))
    results = operations.map_triplets(
        operations.conform, "fitting triplets", [matched.triplets, checks], (conform_settings(request), cache)
    )
    document = operations.report(results, matched.rejections, matched.warnings, [], report_path)
    operations.notify(summary(document))
    accepted = [r for r in results if r.status == "accepted"]
    debug = None
    if debug_dataset_path is not None and accepted:
        debug = operations.debug(accepted, document, debug_dataset_path)
    raise_if_unusable(document)
    return PreparedDataset(report=document, accepted=accepted, debug_dataset=debug)
