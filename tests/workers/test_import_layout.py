"""The Celery app and the task modules import each other in no circle (read from the source, every import)."""

from __future__ import annotations

import ast
from pathlib import Path

import modelpress

PACKAGE = Path(modelpress.__file__).resolve().parent
# The modules the layout rule names: the app finds tasks by name, task modules never import the app back.
LAYERED = ("modelpress.workers.app", "modelpress.tasks.optimize_job", "modelpress.nightly", "modelpress.reconcile",
           "modelpress.workers.beat", "modelpress.workers.routing", "modelpress.workers.schedule",
           "modelpress.workers.job_request", "modelpress.tasks.registry")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the modelpress modules it imports anywhere in its source (top level *and* inside functions:
    a function-level import is still a dependency, it only runs later)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                    pkg = pkg[: len(pkg) - (node.level - 1)]
                    base = ".".join([*pkg, base] if base else pkg)
                targets = [f"{base}.{a.name}" for a in node.names] + [base]
            for t in targets:
                # The longest known module the name refers to (``from x import y`` may name a module or an attribute).
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                if t and t != name:
                    graph[name].add(t)
                    # Importing a submodule from outside its package runs the package's __init__ first
                    # (from inside, the package is already being imported: no new edge).
                    parent = t.rpartition(".")[0]
                    while parent and parent != "modelpress" and not name.startswith(parent + "."):
                        if parent != name:
                            graph[name].add(parent)
                        parent = parent.rpartition(".")[0]
    return graph


def cycles_through(graph: dict[str, set[str]], start: str) -> list[list[str]]:
    """Every simple import path that leaves ``start`` and comes back to it (shortest first)."""
    found: list[list[str]] = []
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph.get(node, ())):
            if nxt == start:
                found.append([*path, start])
            elif nxt not in path and len(path) < 8:
                stack.append((nxt, [*path, nxt]))
    return sorted(found, key=len)


def test_the_cycle_finder_reports_a_circle_when_there_is_one():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles_through(graph, "a") == [["a", "b", "c", "a"]]
    assert cycles_through(graph, "d") == []


def test_the_celery_app_routing_and_the_task_modules_import_each_other_in_no_circle():
    graph = import_graph()
    assert "modelpress.reconcile" in graph["modelpress.tasks.registry"]  # the graph does see imports
    circles = {m: cycles_through(graph, m)[:3] for m in LAYERED}
    assert not any(circles.values()), {m: c for m, c in circles.items() if c}


def test_the_app_module_imports_no_task_module_and_the_worker_entry_point_registers_them_all(tmp_path):
    from modelpress.settings import Settings
    from modelpress.workers.app import make_app
    from modelpress.tasks.registry import make_worker_app

    graph = import_graph()
    assert not graph["modelpress.workers.app"] & {"modelpress.tasks.optimize_job", "modelpress.nightly",
                                                  "modelpress.reconcile", "modelpress.workers.beat"}
    settings = Settings(home=tmp_path)
    assert "modelpress.optimize" not in make_app(settings).tasks  # a publisher: sends by name only
    names = {n for n in make_worker_app(settings).tasks if n.startswith("modelpress.")}
    assert names == {"modelpress.optimize", "modelpress.reconcile", "modelpress.nightly"}


def test_task_modules_import_workers_and_no_workers_module_imports_a_task_module_back():
    # The direction both packages' docstrings state: tasks → workers, never back (inside functions too).
    graph = import_graph()
    back = {m: sorted(t for t in deps if t == "modelpress.tasks" or t.startswith("modelpress.tasks."))
            for m, deps in graph.items() if m == "modelpress.workers" or m.startswith("modelpress.workers.")}
    assert {m: t for m, t in back.items() if t} == {}
    assert "modelpress.workers.job_request" in graph["modelpress.tasks.optimize_job"]  # the scan sees this direction
