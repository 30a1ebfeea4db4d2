"""The dataset report: one row per triplet (accepted or rejected, with the reason), archive-level
errors and warnings. Rendered as text for the CLI, markdown rows for Prefect, and report.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from lib.core.errors import InvalidDataset
from lib.core.storage import atomic_file
from lib.ingest.conform import TripletResult
from lib.ingest.dataset import Rejection

FEW_TRIPLETS = 10
MASK_COVERAGE_WARN = 0.95
COLUMNS = ("name", "status", "reason", "duration_s", "fps", "size", "mask_coverage", "loudness_lufs")


def _row(result: TripletResult) -> dict:
    def pair(fmt, ref, tgt):
        return f"{fmt(ref)} / {fmt(tgt)}" if ref is not None and tgt is not None else ""

    row = result.model_dump(mode="json", exclude={"clip"})  # the user's names, never cache paths
    ref, tgt = result.reference, result.target
    row["duration_s"] = pair(lambda f: f"{f.duration_s:.2f}", ref, tgt)
    row["fps"] = pair(lambda f: f"{f.fps:.2f}", ref, tgt)
    row["size"] = pair(lambda f: f"{f.width}x{f.height}", ref, tgt)
    row["mask_coverage"] = "" if result.mask_coverage is None else f"{result.mask_coverage:.1%}"
    row["loudness_lufs"] = pair(
        lambda v: "n/a" if v is None else f"{v:.1f}",
        result.reference_loudness_lufs if result.status == "accepted" else None,
        result.target_loudness_lufs,
    )
    return row


def build_report(
    results: list[TripletResult], rejections: list[Rejection], warnings: list[str], errors: list[dict] | None = None
) -> dict:
    """The report.json document. `errors` are archive-level refusals: [{"code", "message"}]."""
    rows = [_row(r) for r in results]
    rows += [{"name": r.name, "status": "rejected", "reason": r.reason.value, "message": r.message} for r in rejections]
    rows.sort(key=lambda row: row["name"])
    accepted = [r for r in results if r.status == "accepted"]
    warnings = list(warnings)
    if accepted and len(accepted) < FEW_TRIPLETS:
        warnings.append(f"Only {len(accepted)} triplet(s) accepted; at least {FEW_TRIPLETS} are recommended.")
    warnings += [
        f"'{r.name}': the mask covers {r.mask_coverage:.0%} of the frame (> "
        f"{MASK_COVERAGE_WARN:.0%}); almost nothing is kept."
        for r in accepted
        if r.mask_coverage is not None and r.mask_coverage > MASK_COVERAGE_WARN
    ]
    return {
        "triplets": rows,
        "accepted": len(accepted),
        "rejected": len(rows) - len(accepted),
        "errors": list(errors or []),
        "warnings": warnings,
    }


def invalid_dataset_message(report: dict) -> str:
    """The 422-style text: why nothing qualified, every reason listed."""
    lines = ["Invalid dataset (422): no triplet qualifies for training."]
    lines += [f"- archive: {e['code']}: {e['message']}" for e in report["errors"]]
    lines += [f"- {row['name']}: {row['reason']}: {row['message']}" for row in report["triplets"]]
    if len(lines) == 1:
        lines.append("- the archive holds no <name>_start / <name>_end / <name>_mask triplet.")
    return "\n".join(lines)


def raise_if_unusable(report: dict) -> None:
    if report["accepted"] == 0:
        raise InvalidDataset(invalid_dataset_message(report), report)


def table_rows(report: dict) -> list[dict]:
    """Flat rows for a Prefect table artifact: why a triplet was rejected comes right after its name
    (the UI cuts off the last columns on a narrow screen)."""
    columns = ("name", "status", "reason", "message", *COLUMNS[3:])
    return [
        {column: row.get(column) if row.get(column) is not None else "" for column in columns}
        for row in report["triplets"]
    ]


def render_text(report: dict) -> str:
    rows = table_rows(report)
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in COLUMNS}
    lines = ["  ".join(c.ljust(widths[c]) for c in COLUMNS)]
    lines += ["  ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) for r in rows]
    lines += [f"  {r['name']}: {r['message']}" for r in rows if r["status"] == "rejected"]
    lines += [f"error {e['code']}: {e['message']}" for e in report["errors"]]
    lines += [f"warning: {w}" for w in report["warnings"]]
    lines.append(f"{report['accepted']} accepted, {report['rejected']} rejected")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> Path:
    with atomic_file(path) as partial:
        Path(partial).write_text(json.dumps(report, indent=2))
    return path
