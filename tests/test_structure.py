"""The package's structure: no import cycles in proxy/, and the leaf modules stay leaves.

Every import of a proxy module counts, at module level or inside a function (a lazy import
that hides a cycle is still a cycle), except under `if TYPE_CHECKING:` (never executed).
Importing a submodule also runs its package's `__init__`, so that counts as an import too.
Read with `ast` from the source: nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "proxy"

# Modules that import no proxy module but other leaves: the concepts everything else builds on.
LEAVES = {
    "proxy.clock",  # now_iso
    "proxy.config",  # Settings and the config models
    "proxy.document",  # Doc, parse_doc, the bounds, CorpusError
    "proxy.errors",  # the exception tree, each error with its HTTP status
    "proxy.every",  # Every: a value recomputed at most once per so many seconds
    "proxy.filters",  # the filter tree
    "proxy.model",  # the model-provider protocol and fingerprints
    "proxy.remembered",  # vector -> text of /v1/embeddings answers (numpy and stdlib only)
    "proxy.sqlite",  # durable_sqlite
    "proxy.store",  # the VectorStore protocol and its records
}


def module_names() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement under `node`, at any depth, skipping `if TYPE_CHECKING:` bodies."""
    for child in ast.iter_child_nodes(node):
        inner: list[ast.AST] = [child]
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            inner = list(child.orelse)
        for n in inner:
            if isinstance(n, ast.Import | ast.ImportFrom):
                yield n
            else:
                yield from _import_nodes(n)


def imports_of(
    name: str, source: str, modules: set[str], is_package: bool = False
) -> dict[str, int]:
    """The proxy modules `source` (module `name`) imports, each with the line of its first import.
    `from pkg import x` names module pkg.x if there is one, else pkg itself."""
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        if target in modules and target != name:
            out.setdefault(target, line)

    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
            continue
        base = node.module or ""
        if node.level:  # relative: from the module's own package
            package = name.split(".") if is_package else name.split(".")[:-1]
            anchor = package[: len(package) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            add(sub if sub in modules else base, node.lineno)
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module: line}, with the implicit import of every parent package."""
    paths = module_names()
    modules = set(paths)
    graph = {}
    for name, path in paths.items():
        edges = imports_of(name, path.read_text(), modules, path.name == "__init__.py")
        for target in list(edges):
            parts = target.split(".")
            for i in range(1, len(parts)):
                parent = ".".join(parts[:i])
                if parent != name:
                    edges.setdefault(parent, edges[target])
        graph[name] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a -> ... -> a) per strongly connected component that has one (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, {}):
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return [_cycle_in(graph, c) for c in components]


def _cycle_in(graph: dict[str, dict[str, int]], component: set[str]) -> list[str]:
    """The shortest cycle through the component's first module (breadth first)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:
                    return [*paths[v], start]
                if w in component and w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def describe(graph: dict[str, dict[str, int]], cycle: list[str]) -> str:
    return "; ".join(f"{a} -> {b} (line {graph[a][b]})" for a, b in pairwise(cycle))


def test_the_cycle_finder_names_a_cycle_and_skips_type_checking_imports() -> None:
    """The finder itself, on made-up modules: with a blind parser the checks below would pass."""
    modules = {"proxy.a", "proxy.b", "proxy.c"}
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from proxy.c import C\n"
        "else:\n"
        "    import proxy.a\n"
        "def f():\n"
        "    from proxy import b\n"
    )
    assert imports_of("proxy.x", source, modules) == {"proxy.a": 5, "proxy.b": 7}
    assert imports_of("proxy.c", "from . import a\nfrom .b import B\n", modules) == {
        "proxy.a": 1,
        "proxy.b": 2,
    }
    graph = {"proxy.a": {"proxy.b": 3}, "proxy.b": {"proxy.c": 4}, "proxy.c": {"proxy.a": 9}}
    assert cycles(graph) == [["proxy.a", "proxy.b", "proxy.c", "proxy.a"]]
    assert cycles({"proxy.a": {"proxy.b": 1}, "proxy.b": {}}) == []


def test_no_import_cycles_in_proxy() -> None:
    graph = import_graph()
    # The graph is the real one: lazy imports, `from pkg import module` and parents included.
    assert "proxy.store.factory" in graph["proxy.runtime"]
    assert "proxy.store.edge" in graph["proxy.store.factory"]  # inside open_store
    assert "proxy.store" in graph["proxy.store.edge"]
    found = cycles(graph)
    assert not found, "import cycles in proxy/:\n" + "\n".join(describe(graph, c) for c in found)


def test_leaf_modules_import_only_leaves() -> None:
    graph = import_graph()
    assert set(graph) >= LEAVES, f"leaf modules gone: {sorted(LEAVES - set(graph))}"
    paths = module_names()
    wrong = {}
    for leaf in sorted(LEAVES):
        # Its own imports: the implicit import of its package is the package's own business.
        source, is_package = paths[leaf].read_text(), paths[leaf].name == "__init__.py"
        if others := sorted(set(imports_of(leaf, source, set(paths), is_package)) - LEAVES):
            wrong[leaf] = others
    assert not wrong, f"leaf modules importing more than leaves: {wrong}"


def _probes(source: str) -> list[tuple[int, str]]:
    """Calls that probe a store adapter: isinstance against a class named *Store, getattr or
    hasattr on a store (a name a store goes by here, or a `.store(...)` call)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        fn, first = node.func.id, node.args[0]
        if fn == "isinstance" and len(node.args) == 2:
            classes = ast.unparse(node.args[1])
            if any(n.endswith("Store") for n in classes.replace(",", " ").split()):
                out.append((node.lineno, ast.unparse(node)))
        elif fn in ("getattr", "hasattr"):
            on_store = isinstance(first, ast.Name) and first.id in ("store", "old", "new")
            on_store |= (
                isinstance(first, ast.Call)
                and isinstance(first.func, ast.Attribute)
                and first.func.attr == "store"
            )
            if on_store:
                out.append((node.lineno, ast.unparse(node)))
    return out


def test_callers_ask_store_capabilities_never_probe_adapters() -> None:
    """Outside proxy/store/, what a backend can do is asked of the VectorStore protocol's
    capability members (remote, sparse, aliases, named_vectors, adopted, in_place, ...),
    never by probing the adapter's type or attributes."""
    assert _probes("isinstance(s, AdoptedStore)\ngetattr(store, 'ping', None)\n") == [
        (1, "isinstance(s, AdoptedStore)"),
        (2, "getattr(store, 'ping', None)"),
    ]
    found = {
        name: probes
        for name, path in module_names().items()
        if not name.startswith("proxy.store")
        for probes in [_probes(path.read_text())]
        if probes
    }
    assert not found, f"adapters probed (declare a capability on VectorStore): {found}"
