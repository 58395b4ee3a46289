"""The package's layout promises (docs/design.md, "Layout"): no import cycles, the math
modules import no Lightning, so they can be used (and tested) without a Trainer, and the sweep's
core (what a run is, its identity, plan, store and table) imports neither Lightning nor the
callbacks and models it trains."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_critical"
NO_LIGHTNING = ("_checks", "_output", "probing", "schedule", "cadence", "curve", "spectral", "fisher", "theory",
                "protocols", "_batch", "history", "reliance")
PURE_SWEEP = ("spec", "params", "identity", "changes", "source", "references", "grids", "plan", "store", "table",
              "records", "lock")
"""The sweep's pure core: building a run's Lightning objects is ``sweep/build.py``'s, beside the runners."""
LIGHTNING_SIDE = ("lightning_critical._namespace", "lightning_critical._lightning", "lightning_critical.deficits",
                  "lightning_critical.monitors", "lightning_critical.models")
LIGHTNING_DISTRIBUTIONS = ("lightning", "pytorch_lightning")


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (``import a.b``, ``from a.b import c``), anywhere in it."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def _import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Every import of a package module by another, at module level or inside a function alike."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        parent = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: climb node.level - 1 packages up
                    parts = parent.split(".")[: len(parent.split(".")) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_has_no_import_cycle():
    graph = _import_graph()
    assert len(graph) > 50 and graph["lightning_critical.sweep.engine"], \
        "the import graph was not read"
    # a package's __init__ re-exporting its own submodules is not a cycle with them
    for name in graph:
        graph[name] = {t for t in graph[name] if not name.startswith(t + ".")}
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_math_and_schedule_modules_import_no_lightning():
    code = (
        "import importlib, sys\n"
        f"for m in {NO_LIGHTNING!r}:\n"
        "    importlib.import_module('lightning_critical.' + m)\n"
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('lightning', 'pytorch_lightning')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout.strip()
    assert out == "[]", f"one of {NO_LIGHTNING} imports Lightning: {out}"


def _chains(graph: dict[str, set[str]], start: str, stop: Callable[[str], bool]) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or through others, with one shortest import chain to it;
    the imports of modules where ``stop`` holds are not followed."""
    chains = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in [] if stop(node) else sorted(graph.get(node, ())):
            if nxt not in chains:
                chains[nxt] = chains[node] + [nxt]
                queue.append(nxt)
    return chains


def _lightning_side(module: str) -> bool:
    # a package's __init__ (``lightning_critical``, ``lightning_critical.sweep``) imports everything
    return module in ("lightning_critical", "lightning_critical.sweep") or any(
        module == side or module.startswith(side + ".") for side in LIGHTNING_SIDE)


def _pure_core_problems(package: Path) -> list[str]:
    """The import chains from a pure sweep module to the Lightning side, and its modules' Lightning imports."""
    modules = {_module_name(p, package): p for p in package.rglob("*.py")}
    graph = _import_graph(package)
    problems = []
    for short in PURE_SWEEP:
        name = f"lightning_critical.sweep.{short}"
        if name not in graph:
            problems.append(f"{name} does not exist")
            continue
        for module, chain in _chains(graph, name, _lightning_side).items():
            if _lightning_side(module):
                problems.append(" -> ".join(chain))
                continue
            problems += [f"{module} imports {n}" for n in sorted(_imported_names(modules[module]))
                         if n.split(".")[0] in LIGHTNING_DISTRIBUTIONS]
    return sorted(set(problems))


def test_the_sweep_core_reaches_no_lightning_and_no_callbacks_or_models():
    problems = _pure_core_problems(PACKAGE)
    assert not problems, "the pure sweep core reaches the Lightning side:\n" + "\n".join(problems)


def test_the_pure_core_check_sees_an_import_through_another_module(tmp_path):
    package = tmp_path / "lightning_critical"
    (package / "sweep").mkdir(parents=True)
    (package / "deficits").mkdir()
    for short in PURE_SWEEP:
        (package / "sweep" / f"{short}.py").write_text("import json\n")
    (package / "sweep" / "grids.py").write_text("from lightning_critical.sweep import helper\n")
    (package / "sweep" / "helper.py").write_text("from lightning_critical.deficits.base import WindowedDeficit\n")
    (package / "deficits" / "base.py").write_text("import torch\n")
    (package / "sweep" / "lock.py").write_text("def f():\n    import pytorch_lightning.utilities\n")
    assert _pure_core_problems(package) == [
        "lightning_critical.sweep.grids -> lightning_critical.sweep.helper -> lightning_critical.deficits.base",
        "lightning_critical.sweep.lock imports pytorch_lightning.utilities",
    ]
