"""The layering of docs/architecture.md holds: the import-linter contracts in pyproject.toml are kept, no module
of the package takes part in an import cycle, and `import andromeda` loads neither torch nor pandas."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]

# None: the attention backends import their registry (model/backends/registry.py), not the package that
# imports them. Any cycle fails the test.
KNOWN_CYCLES: list[set[str]] = []


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[set[str]]:
    """The strongly connected components of more than one module among `package`'s modules (Tarjan,
    iterative): every set of modules that import each other, directly or through others."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in modules) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []
    for root in modules:
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack.add(node)
            if i < len(edges[node]):
                work.append((node, i + 1))
                nxt = edges[node][i]
                if nxt not in index:
                    work.append((nxt, 0))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            if low[node] == index[node]:
                component = set()
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    component.add(m)
                    if m == node:
                        break
                if len(component) > 1:
                    cycles.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return cycles


def test_import_cycles_are_found():
    """The cycle finder against a hand-made graph: a -> b -> c -> a is one cycle, d -> a is none."""
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        graph.add_module(m)
    for importer, imported in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")):
        graph.add_import(importer=importer, imported=imported)
    assert import_cycles(graph, "p") == [{"p.a", "p.b", "p.c"}]


def test_no_import_cycles():
    graph = grimp.build_graph("andromeda", cache_dir=None)  # TYPE_CHECKING and function-level imports included
    unexpected = [sorted(c) for c in import_cycles(graph, "andromeda") if c not in KNOWN_CYCLES]
    assert not unexpected, f"modules that import each other: {unexpected}"


def test_import_linter_contracts_are_kept():
    """`lint-imports` (as .ci/run runs it) on pyproject.toml's contracts; its report is the failure message."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            f"sys.exit(lint_imports(config_filename={str(ROOT / 'pyproject.toml')!r}, no_cache=True, no_logo=True))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_importing_andromeda_stays_light():
    code = ("import sys, andromeda; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "from andromeda import api; assert andromeda.benchmark is api.benchmark; "
            "assert andromeda.load_run is api.load_run and andromeda.compare is api.compare")
    subprocess.run([sys.executable, "-c", code], check=True)
