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
    offenders = [p.name for p in (ROOT / "lib").rglob("*.py")
                 if any(name == "prefect" or name.startswith("prefect.") for name in _imports(p))]
    assert offenders == []


def test_only_model_module_touches_ltx_classes():
    model_package = ROOT / "lib" / "model"
    offenders = [p.name for p in (ROOT / "lib").rglob("*.py") if model_package not in p.parents
                 and "LTX2" in p.read_text()]
    assert offenders == []
