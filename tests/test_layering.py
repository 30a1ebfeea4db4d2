"""House rules: lib/ does the work and never imports Prefect; only the lib/model/ package builds LTX
parts; a stage imports only the stages before it; and no module of lib/ imports itself again through
others (no import circle, function-local imports included)."""

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


def _lib_modules() -> dict[str, str]:
    """The source of every module of lib/ by its dotted name (a package's __init__.py by the
    package's name)."""
    modules = {}
    for path in (ROOT / "lib").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name if parts[-1] != "__init__" else f"{name}.__init__"] = path.read_text()
    return modules


def _import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    """module -> the modules among `sources` it imports, from every import statement wherever it
    stands: a function-local import is an edge too (one that only dodges a circle is still a
    circle). `from package import name` is an edge to the submodule when `name` is one, else to
    the package. Keys ending in `.__init__` are packages; the graph names them without it."""
    modules = {name.removesuffix(".__init__") for name in sources}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for key, source in sources.items():
        module = key.removesuffix(".__init__")
        package = module if key.endswith(".__init__") else module.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                edges |= {known(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    edges.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else known(base))
        graph[module] = edges - {None, module}
    return graph


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first, colouring modules on the path)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once fully explored

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], module, imported] if imported in path else [module, imported]
            if imported not in state and (cycle := visit(imported, [*path, module])):
                return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module, [])):
            return cycle
    return None


def test_the_import_graph_sees_function_local_and_relative_imports():
    sources = {
        "lib.a.__init__": "from lib.a.b import run\n",
        "lib.a.b": "def run():\n    from . import c\n",
        "lib.a.c": "def later():\n    from lib.a import b\n",
        "lib.a.d": "import lib.a.c\n",
    }
    graph = _import_graph(sources)
    assert graph == {"lib.a": {"lib.a.b"}, "lib.a.b": {"lib.a.c"}, "lib.a.c": {"lib.a.b"}, "lib.a.d": {"lib.a.c"}}
    assert _find_cycle(graph) == ["lib.a.b", "lib.a.c", "lib.a.b"]
    assert _find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_lib_has_no_import_circle():
    cycle = _find_cycle(_import_graph(_lib_modules()))
    assert cycle is None, "import circle in lib/: " + " -> ".join(cycle or [])
