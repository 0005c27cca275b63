"""The package's import graph has no cycles, function-local (lazy) imports included.

Read from the source with `ast`, nothing is imported. Two graphs are checked: modules, and
sub-packages (`vlm_jax.models`, `vlm_jax.train`, ...; top-level modules stand for themselves).
"""

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "vlm_jax"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def _imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Every vlm_jax module `module` imports, anywhere in its body (lazy imports included)."""
    out = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import submodule` depends on the submodule (the package's __init__
            # runs first, but it is an ancestor, not a dependency); other names on `base`.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                out.add(name)
    return out


def module_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imported(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known)
        for name, path in modules.items()
    }


def _subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for src, dsts in graph.items():
        node = _subpackage(src)
        out.setdefault(node, set())
        for dst in dsts:
            if _subpackage(dst) != node and _subpackage(dst) != "vlm_jax":
                out[node].add(_subpackage(dst))
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_imports():
    tree = ast.parse("def f():\n    from vlm_jax.models import vlm\n")
    known = {"vlm_jax.models", "vlm_jax.models.vlm"}
    assert _imported(tree, "vlm_jax.x", False, known) == {"vlm_jax.models.vlm"}
    tree = ast.parse("def f():\n    from vlm_jax.models import build\n")
    assert _imported(tree, "vlm_jax.x", False, known) == {"vlm_jax.models"}


def test_no_module_import_cycles():
    found = cycles(module_graph())
    assert not found, f"module import cycles: {found}"


def test_no_subpackage_import_cycles():
    found = cycles(subpackage_graph(module_graph()))
    assert not found, f"sub-package import cycles: {found}"
