"""Dataset preparation (DESIGN §4), the CPU half of `train-lora`: steps 1–12 of the pipeline."""
from __future__ import annotations

from pathlib import Path

from prefect import unmapped
from pydantic import BaseModel, ConfigDict

from lib.conform import TripletResult
from lib.config import TrainRequest
from lib.errors import ArchiveError
from lib.plan import conform_settings
from lib.report import raise_if_unusable
from lib.storage import FileRef, work_dir
from tasks import ingest


class PreparedDataset(BaseModel):
    model_config = ConfigDict(frozen=True)
    report: dict
    accepted: list[TripletResult]
    debug_dataset: FileRef | None = None


def prepare_dataset(request: TrainRequest, report_path: Path | None = None,
                    debug_dataset_path: Path | None = None, zip_file: FileRef | None = None) -> PreparedDataset:
    """Fetch (unless given), extract, match, check and conform; InvalidDataset when nothing qualifies."""
    cache_root = work_dir()
    zip_file = zip_file or ingest.fetch_training_data(request.training_data_url, cache_root)
    try:
        extracted = ingest.extract_archive(zip_file, cache_root)
    except ArchiveError as error:
        document = ingest.build_report([], [], [], [{"code": error.code, "message": error.message}], report_path)
        raise_if_unusable(document)
    matched = ingest.match_files(extracted)
    checks = ingest.check_triplet.map(matched.triplets)
    results = ingest.conform_triplet.map(matched.triplets, checks, unmapped(conform_settings(request)),
                                         unmapped(cache_root)).result()
    document = ingest.build_report(results, matched.rejections, matched.warnings, [], report_path)
    accepted = [r for r in results if r.status == "accepted"]
    debug = None
    if debug_dataset_path is not None and accepted:
        debug = ingest.write_debug_dataset(accepted, document, debug_dataset_path)
    raise_if_unusable(document)
    return PreparedDataset(report=document, accepted=accepted, debug_dataset=debug)
