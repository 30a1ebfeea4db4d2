"""Matching archive files into triplets, and the manifest's schema (docs/architecture.md, "Dataset").

`<name>_start.<video>`, `<name>_end.<video>`, `<name>_mask.<image|video>`, optional `<name>.txt`.
Base names match case-sensitively; extensions case-insensitively; folders are allowed but a
file name may appear only once in the whole archive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pandas as pd
import pandera.pandas as pa
from pydantic import BaseModel, ConfigDict

from lib.core.errors import Reason
from lib.core.storage import FileRef
from lib.media.masks import IMAGE_EXTS

VIDEO_EXTS = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".mts", ".m2ts"})  # .mts/.m2ts: AVCHD camcorders
ROLES = ("start", "end", "mask")


def _path_ending_in(extensions: frozenset[str]) -> pa.Column:
    return pa.Column(str, checks=pa.Check(lambda s: s.str.lower().str.endswith(tuple(extensions)), element_wise=False))


MANIFEST_SCHEMA = pa.DataFrameSchema(
    {
        "name": pa.Column(str, unique=True, checks=pa.Check.str_length(min_value=1)),
        "start": _path_ending_in(VIDEO_EXTS),
        "end": _path_ending_in(VIDEO_EXTS),
        "mask": _path_ending_in(VIDEO_EXTS | IMAGE_EXTS),
        "caption": pa.Column(str, nullable=True),
    },
    strict=True,
    coerce=False,
)


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: Reason
    message: str


@dataclass
class Matching:
    """Result of matching: the manifest of complete triplets, plus what could not be matched."""

    manifest: pd.DataFrame
    rejections: list[Rejection] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _role_of(path: PurePosixPath) -> tuple[str, str, bool] | None:
    """(base name, role, extension supported) for a file named like a triplet part, else None.
    Role is start/end/mask/caption."""
    ext = path.suffix.lower()
    if ext == ".txt":
        return path.stem, "caption", True
    for role in ROLES:
        if path.stem.endswith(f"_{role}") and len(path.stem) > len(role) + 1:
            return path.stem[: -len(role) - 1], role, ext in _allowed(role)
    return None


def _allowed(role: str) -> frozenset[str]:
    return VIDEO_EXTS | IMAGE_EXTS if role == "mask" else VIDEO_EXTS


def _unsupported(base: str, role: str, name: str) -> Rejection:
    return Rejection(
        base,
        Reason.UNSUPPORTED_EXTENSION,
        f"'{base}': {PurePosixPath(name).name} has an unsupported extension "
        f"'{PurePosixPath(name).suffix}'; {base}_{role} must be one of "
        f"{', '.join(sorted(_allowed(role)))}.",
    )


def _duplicates(names: list[str]) -> dict[str, list[str]]:
    by_file_name: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_file_name[PurePosixPath(name).name].append(name)
    return {file: paths for file, paths in by_file_name.items() if len(paths) > 1}


def match_triplets(names: list[str]) -> Matching:
    """Group archive member names (posix, relative) into triplets; report every orphan."""
    rejections: list[Rejection] = []
    warnings: list[str] = []
    groups: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    unsupported: dict[str, dict[str, str]] = defaultdict(dict)
    for name in sorted(names):
        role = _role_of(PurePosixPath(name))
        if role is None:
            warnings.append(f"Ignored '{name}': not a _start/_end/_mask media file or a .txt caption.")
            continue
        base, part, supported = role
        if supported:
            groups[base][part].append(name)
        else:
            unsupported[base][part] = name
    for base, parts in unsupported.items():  # a named part in an unknown format, not a missing part
        if base not in groups:
            rejections.append(_unsupported(base, *next(iter(parts.items()))))

    duplicated_files = _duplicates(names)
    rows = []
    for base, parts in sorted(groups.items()):
        clashes = [p for paths in parts.values() for p in paths if PurePosixPath(p).name in duplicated_files]
        multi = {role: paths for role, paths in parts.items() if len(paths) > 1}
        if clashes or multi:
            listed = ", ".join(sorted(set(clashes) | {p for ps in multi.values() for p in ps}))
            rejections.append(
                Rejection(
                    base,
                    Reason.DUPLICATE_NAME,
                    f"'{base}': more than one file for the same role or the same file name twice "
                    f"({listed}); file names must be unique across the archive.",
                )
            )
            continue
        missing = [role for role in ("end", "start", "mask") if role not in parts]
        if missing == ["end", "start", "mask"]:
            warnings.append(f"Orphan caption '{parts['caption'][0]}': no '{base}_end' clip uses it.")
            continue
        if missing and any(role in unsupported[base] for role in missing):
            role = next(role for role in missing if role in unsupported[base])
            rejections.append(_unsupported(base, role, unsupported[base][role]))
            continue
        if missing:
            role = missing[0]
            present = ", ".join(p for paths in parts.values() for p in paths)
            rejections.append(
                Rejection(
                    base,
                    Reason(f"missing_{role}"),
                    f"'{base}': no '{base}_{role}' file found next to {present}; every triplet needs "
                    f"{base}_start (video), {base}_end (video) and {base}_mask (image or video).",
                )
            )
            continue
        rows.append(
            {
                "name": base,
                "start": parts["start"][0],
                "end": parts["end"][0],
                "mask": parts["mask"][0],
                "caption": (parts.get("caption") or [None])[0],
            }
        )
    manifest = pd.DataFrame(rows, columns=["name", "start", "end", "mask", "caption"]).astype(str)
    return Matching(MANIFEST_SCHEMA.validate(manifest), rejections, warnings)


class Triplet(BaseModel):
    """One matched example, its files content-hashed. Small: travels between pipeline steps."""

    model_config = ConfigDict(frozen=True)

    name: str
    start: FileRef
    end: FileRef
    mask: FileRef
    caption: str = ""


class MatchOutcome(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    triplets: list[Triplet]
    rejections: list[Rejection]
    warnings: list[str]


def match_extracted(root: str | Path, names: list[str]) -> MatchOutcome:
    """Match an extracted archive's files into content-hashed triplets."""
    matching = match_triplets(names)
    triplets = triplets_from_manifest(matching.manifest, Path(root))
    return MatchOutcome(triplets=triplets, rejections=matching.rejections, warnings=matching.warnings)


def read_caption(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace").strip()


def triplets_from_manifest(manifest: pd.DataFrame, root: Path) -> list[Triplet]:
    """Hash each file of each manifest row (the content keys every later cache uses)."""
    triplets = []
    for row in manifest.itertuples(index=False):
        caption = read_caption(root / row.caption) if isinstance(row.caption, str) else ""
        triplets.append(
            Triplet(
                name=row.name,
                start=FileRef.of(root / row.start),
                end=FileRef.of(root / row.end),
                mask=FileRef.of(root / row.mask),
                caption=caption,
            )
        )
    return triplets
