"""The package's imports run one way: no import cycle, and a ground floor that imports nothing above it.

Read from the source with ast (nothing is imported), counting every import: at module level or inside a function,
relative or absolute. A lazy import still ties two modules together, so it cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mnv2export"
TOP = PACKAGE.name

# what every layer shares; each imports nothing of ours but the others of this list (see docs: GUIDE's layering)
GROUND_FLOOR = {
    "errors": set(),
    "layout": set(),
    "params": {"errors"},
    "config": {"errors", "params"},
    "fileio": {"errors", "layout"},
    "filekind": {"errors", "fileio"},
}


def _modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name ``module`` imports (``from a import b`` gives ``a`` and ``a.b``), relative ones resolved."""
    pkg = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = pkg.split(".")
                keep = parts[: len(parts) - (node.level - 1)]
                base = ".".join(keep + ([node.module] if node.module else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name resolved to its longest module prefix). A module importing
    its own parent package (``from . import __version__``) is not an edge: Python runs the parent first anyway."""
    mods = _modules(root)

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for name in _imported_names(m, path):
            target = resolve(name) if name.split(".")[0] == root.name else None
            if target and target != m and not m.startswith(target + "."):
                graph[m].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def _cycle_path(graph: dict[str, set[str]], comp: list[str]) -> str:
    """One concrete loop inside a strongly connected component, as ``a -> b -> ... -> a``: what to cut."""
    members = set(comp)
    start = comp[0]
    parents: dict[str, str | None] = {start: None}
    queue = [start]
    while queue:  # breadth-first from start, inside the component, until an edge leads back to start
        v = queue.pop(0)
        for w in sorted(graph[v] & members):
            if w == start:
                path = [v]
                while parents[path[-1]] is not None:
                    path.append(parents[path[-1]])
                return " -> ".join([*reversed(path), start])
            if w not in parents:
                parents[w] = v
                queue.append(w)
    return " <-> ".join(comp)  # pragma: no cover - a component always holds a loop through each member


def test_finds_a_cycle_and_a_lazy_import(tmp_path):
    # the checker itself: a cycle closed only by an import inside a function, through a relative import, is found
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("import pkg.a\nfrom . import __init__\n")
    (pkg / "d.py").write_text("from pkg import a\n")
    graph = import_graph(pkg)
    assert (
        graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    )
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    assert _cycle_path(graph, ["pkg.a", "pkg.c", "pkg.sub.b"]) == "pkg.a -> pkg.sub.b -> pkg.c -> pkg.a"
    (pkg / "c.py").write_text("")
    assert cycles(import_graph(pkg)) == []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 30  # the package was found and read
    found = cycles(graph)
    assert not found, (
        "import cycles (move the shared piece down a layer; a lazy import does not hide one):\n"
        + "\n".join(f"  {_cycle_path(graph, comp)}  (the cycle holds {', '.join(comp)})" for comp in found)
    )


@pytest.mark.parametrize("module", sorted(GROUND_FLOOR))
def test_ground_floor_imports_nothing_above_it(module):
    graph = import_graph()
    name = f"{TOP}.{module}"
    assert name in graph, f"{name} not found"
    allowed = {f"{TOP}.{m}" for m in GROUND_FLOOR[module]}
    above = sorted(graph[name] - allowed)
    assert not above, f"{name} is a ground-floor module but imports {', '.join(above)}"


def test_command_modules_do_not_import_the_app():
    """Commands are registered in one place (``cli/__init__.py``); a command module that imported the app back would
    register itself as a side effect of its import, in whatever order the imports ran."""
    cli = PACKAGE / "cli"
    offenders = [
        f.name
        for f in cli.glob("*_cmd.py")
        if {f"{TOP}.cli.app", f"{TOP}.cli.main"} & _imported_names(f"{TOP}.cli.{f.stem}", f)
    ]
    assert offenders == []
