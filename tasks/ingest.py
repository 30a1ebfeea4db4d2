"""Ingestion tasks: fetch → extract → match → check → conform → report, one lib call each.

Not Prefect-cached: the content-addressed cache (lib.core.cache) is the one authority on what was
computed before. Every operation that makes something reads it back from there (the archive's
extracted folder, each triplet's check and conform outcome, keyed by content and an explicit code
version), so a cleaned cache folder means recomputing, never a record pointing at missing files.
"""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from lib.core import storage
from lib.core.cache import Cache
from lib.core.storage import FileRef
from lib.ingest import archive, conform, dataset, debug_dataset, report
from lib.ingest.conform import ConformSettings, TripletCheck, TripletResult
from lib.ingest.dataset import Rejection, Triplet
from tasks.retries import on_last_attempt, retry_transient
from tasks.secrets import resolve_url


@task(
    retries=storage.download_attempts() - 1,
    retry_delay_seconds=storage.retry_delays(),
    retry_condition_fn=retry_transient,
    cache_policy=NO_CACHE,
)
def fetch_training_data(url: str, cache_root: Path) -> FileRef:
    """`url` may be `secret://NAME` (tasks/secrets.py): resolved here, so no task or flow
    parameter ever holds the real URL. The last attempt's error says how many were made."""
    with on_last_attempt():
        return storage.fetch(resolve_url(url), cache_root / "downloads")


@task(cache_policy=NO_CACHE)
def extract_archive(zip_file: FileRef, cache_root: Path, display_name: str) -> archive.ExtractedArchive:
    return archive.extract_cached(zip_file, cache_root, display_name)


@task(cache_policy=NO_CACHE)
def match_files(extracted: archive.ExtractedArchive) -> dataset.MatchOutcome:
    return dataset.match_extracted(extracted.root, extracted.names)


@task(task_run_name="check-{triplet.name}", cache_policy=NO_CACHE)
def check_triplet(triplet: Triplet, cache: Cache) -> TripletCheck:
    return conform.check_triplet(triplet, cache)


@task(task_run_name="conform-{triplet.name}", cache_policy=NO_CACHE)
def conform_triplet(triplet: Triplet, check: TripletCheck, settings: ConformSettings, cache: Cache) -> TripletResult:
    return conform.conform_triplet(triplet, check, settings, cache)


@task(cache_policy=NO_CACHE)
def build_report(
    results: list[TripletResult],
    rejections: list[Rejection],
    warnings: list[str],
    errors: list[dict],
    report_path: Path | None,
) -> dict:
    document = report.build_report(results, rejections, warnings, errors)
    if report_path is not None:
        report.write_report(document, report_path)
    rejected = [row for row in report.table_rows(document) if row["status"] == "rejected"]
    create_table_artifact(
        key="dataset-report",
        table=report.table_rows(document),
        description=f"{document['accepted']} accepted, {document['rejected']} rejected",
    )
    if rejected:
        create_table_artifact(
            key="rejected-triplets",
            table=rejected,
            description="Triplets that will not be trained on, with the reason.",
        )
    return document


@task(cache_policy=NO_CACHE)
def write_debug_dataset(results: list[TripletResult], document: dict, destination: Path) -> FileRef:
    return debug_dataset.write_debug_dataset(results, document, destination)
