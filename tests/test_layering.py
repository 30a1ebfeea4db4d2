"""House rule: lib/ does the work and never imports Prefect; only the lib/model/ package builds LTX parts."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_lib_never_imports_prefect():
    offenders = [
        p.name
        for p in (ROOT / "lib").rglob("*.py")
        if any(name == "prefect" or name.startswith("prefect.") for name in _imports(p))
    ]
    assert offenders == []


def test_only_model_module_touches_ltx_classes():
    model_package = ROOT / "lib" / "model"
    offenders = [
        p.name for p in (ROOT / "lib").rglob("*.py") if model_package not in p.parents and "LTX2" in p.read_text()
    ]
    assert offenders == []


STAGE_ORDER = ("core", "media", "ingest", "model", "train", "validate", "publish")


def test_stages_import_only_core_media_and_the_stages_before_them():
    """lib/<stage>/ may import lib.core, lib.media and the stages before it in the pipeline:
    no stage reaches sideways or forward into another's internals."""
    offenders = []
    for index, stage in enumerate(STAGE_ORDER):
        allowed = {"core", "media", *STAGE_ORDER[: index + 1]}
        for path in (ROOT / "lib" / stage).rglob("*.py"):
            for name in _imports(path):
                parts = name.split(".")
                if parts[0] == "lib" and len(parts) > 1 and parts[1] not in allowed:
                    offenders.append(f"lib/{stage}/{path.name} imports {name}")
    assert offenders == []


def test_lib_is_only_stage_packages():
    loose = sorted(p.name for p in (ROOT / "lib").glob("*.py") if p.name != "__init__.py")
    assert loose == [] and {p.name for p in (ROOT / "lib").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(
        STAGE_ORDER
    )
