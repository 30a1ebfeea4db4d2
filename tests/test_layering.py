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

TASK_BODY_MAX_STATEMENTS = 15


def _is_task(node: ast.AST) -> bool:
    return any(
        (isinstance(d, ast.Name) and d.id == "task")
        or (isinstance(d, ast.Call) and getattr(d.func, "id", "") == "task")
        for d in getattr(node, "decorator_list", [])
    )


def _statements(node: ast.FunctionDef) -> int:
    """Statements in a function's body, nested ones counted, its docstring not."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return sum(isinstance(inner, ast.stmt) for statement in body for inner in ast.walk(statement))


def test_task_modules_are_thin():
    """tasks/ is the Prefect layer, and only that: every task wraps lib/ calls with retries,
    logging and artifacts, and anything that works without Prefect lives in lib/ (testable with
    no engine, usable by the CLI and the torchrun workers). The rule, per tasks/ module:
    - a @task body holds at most TASK_BODY_MAX_STATEMENTS statements (nested ones counted): a
      wrapper, never an algorithm;
    - every other module-level function or class is Prefect glue: it uses a name imported from
      prefect, or glue of tasks/ itself (a @task, or a function or class that is glue by this
      rule, in any tasks/ module); only one-statement helpers are exempt (e.g. building a row)."""
    modules = {path.stem: ast.parse(path.read_text()) for path in sorted((ROOT / "tasks").glob("*.py"))}
    definitions = {
        (module, node.name): node
        for module, tree in modules.items()
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef))
    }
    glue = {key for key, node in definitions.items() if _is_task(node)}

    def origin(module: str) -> dict[str, tuple[str, str] | str]:
        """Each imported name of `module`: ('prefect') or the (tasks module, name) it comes from."""
        names: dict[str, tuple[str, str] | str] = {}
        for node in ast.walk(modules[module]):
            if isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if node.module.split(".")[0] == "prefect":
                        names[alias.asname or alias.name] = "prefect"
                    elif node.module.startswith("tasks."):
                        names[alias.asname or alias.name] = (node.module.split(".")[1], alias.name)
            elif isinstance(node, ast.Import):
                names |= {
                    (a.asname or a.name).split(".")[0]: "prefect" for a in node.names if a.name.startswith("prefect")
                }
        return names

    origins = {module: origin(module) for module in modules}
    changed = True
    while changed:  # glue that uses glue is glue
        changed = False
        for (module, name), node in definitions.items():
            if (module, name) in glue:
                continue
            used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
            used |= {
                n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
            }
            imports_prefect = any(
                isinstance(n, ast.ImportFrom) and (n.module or "").startswith("prefect") for n in ast.walk(node)
            )
            if imports_prefect or any(
                origins[module].get(u) == "prefect" or origins[module].get(u) in glue or (module, u) in glue
                for u in used
            ):
                glue.add((module, name))
                changed = True

    long_tasks = [
        f"tasks/{module}.py: {name} has {_statements(node)} statements"
        for (module, name), node in definitions.items()
        if _is_task(node) and _statements(node) > TASK_BODY_MAX_STATEMENTS
    ]
    not_glue = [
        f"tasks/{module}.py: {name} does not use Prefect: it belongs in lib/"
        for (module, name), node in definitions.items()
        if (module, name) not in glue and not (isinstance(node, ast.FunctionDef) and _statements(node) <= 1)
    ]
    assert long_tasks == [] and not_glue == [], long_tasks + not_glue

