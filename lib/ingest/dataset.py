"""Matching archive files into triplets, and the manifest's rows (docs/architecture.md, "Dataset").

`<name>_start.<video>`, `<name>_end.<video>`, `<name>_mask.<image|video>`, optional `<name>.txt`.
Base names match case-sensitively; extensions case-insensitively; folders are allowed but a
file name may appear only once in the whole archive.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lib.core.errors import Reason
from lib.core.storage import FileRef
from lib.media.masks import IMAGE_EXTS

VIDEO_EXTS = frozenset({".mp4", ".mov", ".webm", ".mkv", ".avi", ".mts", ".m2ts"})  # .mts/.m2ts: AVCHD camcorders
ROLES = ("start", "end", "mask")


class ManifestRow(BaseModel):
    """One complete triplet's archive paths, validated where `match_triplets` builds it. A typed row,
    not a DataFrame checked by a schema: the manifest is only ever read back row by row
    (`triplets_from_manifest`), never written out or queried as a table. Names are unique by
    construction (one row per base name)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    start: str
    end: str
    mask: str
    caption: str | None = None  # the .txt file, when there is one

    @field_validator("start", "end")
    @classmethod
    def _video(cls, path: str) -> str:
        return _ending_in(path, VIDEO_EXTS)

    @field_validator("mask")
    @classmethod
    def _video_or_image(cls, path: str) -> str:
        return _ending_in(path, VIDEO_EXTS | IMAGE_EXTS)


def _ending_in(path: str, extensions: frozenset[str]) -> str:
    if not path.lower().endswith(tuple(extensions)):
        raise ValueError(f"{path} does not end in one of {', '.join(sorted(extensions))}")
    return path


@dataclass(frozen=True)
class Rejection:
    name: str
    reason: Reason
    message: str


@dataclass
class Matching:
    """Result of matching: the manifest of complete triplets, plus what could not be matched."""

    manifest: list[ManifestRow]
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
            ManifestRow(
                name=base,
                start=parts["start"][0],
                end=parts["end"][0],
                mask=parts["mask"][0],
                caption=(parts.get("caption") or [None])[0],
            )
        )
    return Matching(rows, rejections, warnings)


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


def triplets_from_manifest(manifest: list[ManifestRow], root: Path) -> list[Triplet]:
    """Hash each file of each manifest row (the content keys every later cache uses)."""
    triplets = []
    for row in manifest:
        caption = read_caption(root / row.caption) if row.caption is not None else ""
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
