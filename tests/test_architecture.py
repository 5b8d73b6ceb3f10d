"""The shape of the package, read from its source with ``ast``: no import cycles, no stage
importing a floor above it, nothing per-runtime outside ``edgekit/backends/``.

Every ``import`` counts, inside functions too (a lazy import still ties two modules together);
only imports under ``if TYPE_CHECKING:`` are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "edgekit"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path) -> set[str]:
    """The edgekit modules ``name`` imports (a ``from pkg import sub`` names the submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for c in child.orelse:
                    visit(c)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name in MODULES)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:
                    sub = f"{target}.{a.name}"
                    if sub in MODULES:
                        found.add(sub)
                    elif target in MODULES:
                        found.add(target)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(name)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read():
    assert "edgekit.backends.onnxruntime" in GRAPH
    assert "edgekit.backends.base" in GRAPH["edgekit.backends"]
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycles():
    assert _cycles(GRAPH) == []


def test_stages_import_nothing_above_them():
    upward = {m: sorted(d for d in deps if _in(d, "edgekit.bench") or d == "edgekit.pipeline")
              for m, deps in GRAPH.items()
              if _in(m, "edgekit.quantize") or _in(m, "edgekit.prune")}
    assert {m: d for m, d in upward.items() if d} == {}


def test_no_backend_comparisons_outside_backends():
    pattern = re.compile(r'(backend|\.backend)\s*==\s*"')
    found = [f"{p.relative_to(PACKAGE.parent)}:{i}"
             for name, p in MODULES.items() if not _in(name, "edgekit.backends")
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line)]
    assert found == []


def test_backends_import_no_floor_above_them():
    """The runtime modules import foundations and each other only (type annotations aside)."""
    above = ("edgekit.bench", "edgekit.pipeline", "edgekit.verify", "edgekit.bundle",
             "edgekit.api", "edgekit.cli", "edgekit.measure", "edgekit.quantize",
             "edgekit.prune", "edgekit.train", "edgekit.models")
    # the one timer is a foundation: it needs nothing but the Session protocol of
    # backends.base, and a backend's int8 code times its own candidates with it; so are the
    # metrics (numpy only), one definition of each measure a backend's int8 code scores by
    foundations = ("edgekit.measure.timing", "edgekit.measure.metrics")
    bad = {m: sorted(d for d in deps if any(_in(d, a) for a in above) and d not in foundations)
           for m, deps in GRAPH.items() if _in(m, "edgekit.backends")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_every_package_folder_is_listed_for_the_wheel():
    """``[tool.setuptools] packages`` is written by hand: a package folder missing from it is
    left out of a fresh (non-editable) install."""
    import tomllib

    pyproject = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(pyproject["tool"]["setuptools"]["packages"])
    folders = {_module_name(p) for p in PACKAGE.rglob("__init__.py")}
    missing = sorted(folders - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
