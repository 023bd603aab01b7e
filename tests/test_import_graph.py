"""Imports between the parts of megatron_ponder go one way: no cycle between subpackages (and
top-level modules), and no edge that points up the layering:
the model never depends on training, parallelism or interop (where inference lives); the
kernels never on the model; data and tokenizers never on the model; evaluation, interop, the
parallel schedules and checkpoint storage never on training."""

import ast
import pathlib
from collections import defaultdict
from typing import Dict, List, Optional, Set

import megatron_ponder

PACKAGE = pathlib.Path(megatron_ponder.__file__).parent
FORBIDDEN = {
    "model": {"training", "parallel", "hf"},
    "ops": {"model"},
    "data": {"model"},
    "tokenizer": {"model"},
    "eval": {"training"},
    "hf": {"training"},
    "parallel": {"training"},
    "checkpoint": {"training", "hf", "eval", "model"},
}


def _node(parts: List[str]) -> Optional[str]:
    """The subpackage or top-level module a dotted name (split) inside the package lies in."""
    if len(parts) < 2 or parts[0] != "megatron_ponder":
        return None
    return parts[1]


def _imported_modules(tree: ast.AST, package: List[str]) -> List[List[str]]:
    """Every module (split on dots) an import statement anywhere in ``tree`` names, relative
    imports resolved against ``package`` (also the names after ``from X import``, which may be
    submodules)."""
    found = []
    for node in ast.walk(tree):  # function-local imports too
        if isinstance(node, ast.Import):
            found += [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
            else:
                base = []
            module = base + (node.module.split(".") if node.module else [])
            found.append(module)
            found += [module + [alias.name] for alias in node.names]
    return found


def import_graph(root: pathlib.Path) -> Dict[str, Set[str]]:
    """{subpackage or top-level module: the others it imports} for the package at ``root``."""
    graph: Dict[str, Set[str]] = defaultdict(set)
    for path in root.rglob("*.py"):
        parts = ["megatron_ponder"] + list(path.relative_to(root).with_suffix("").parts)
        package = parts[:-1]  # what a relative import of this file starts from
        if parts[-1] == "__init__":
            parts = parts[:-1]
        source = _node(parts)
        if source is None:  # megatron_ponder/__init__.py
            continue
        graph.setdefault(source, set())
        for module in _imported_modules(ast.parse(path.read_text()), package):
            target = _node(module)
            if target is not None and target != source and \
                    ((root / target).is_dir() or (root / f"{target}.py").is_file()):
                graph[source].add(target)
    return dict(graph)


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None."""
    state: Dict[str, str] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


def test_graph_builder_sees_every_kind_of_import(tmp_path):
    root = tmp_path / "megatron_ponder"
    for name in ("a", "b", "c", "d", "e"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text("")
    (root / "top.py").write_text("")
    (root / "a" / "x.py").write_text("from ..b import thing\n")                 # relative
    (root / "b" / "y.py").write_text("def f():\n    import megatron_ponder.c.z\n")  # local
    (root / "c" / "__init__.py").write_text("from megatron_ponder import d\n")   # name = module
    (root / "d" / "w.py").write_text("from . import v\nfrom megatron_ponder.top import q\n")
    (root / "e" / "u.py").write_text("import os\nfrom megatron.core import parallel_state\n")
    graph = import_graph(root)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"d"}, "d": {"top"}, "e": set(),
                     "top": set()}
    assert find_cycle(graph) is None
    assert find_cycle({**graph, "top": {"b"}}) == ["b", "c", "d", "top", "b"]


def test_no_cycle_between_subpackages():
    cycle = find_cycle(import_graph(PACKAGE))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_no_import_against_the_layering():
    graph = import_graph(PACKAGE)
    wrong = sorted(f"{source} -> {target}" for source, targets in FORBIDDEN.items()
                   for target in graph.get(source, set()) & targets)
    assert not wrong, f"forbidden imports: {wrong}"


# The layers of docs/architecture.md: a package imports only lower layers; the shared modules of
# layer 0 may import each other (the cycle test still applies to them).
LAYERS = {
    "config": 0, "flags": 0, "errors": 0, "devices": 0, "log": 0, "process_memory": 0,
    "process_lifetime": 0, "local_ranks": 0, "methods": 0,
    "ops": 1, "tokenizer": 1, "mcore": 1, "checkpoint": 1,
    "model": 2, "data": 2,
    "parallel": 3,
    "hf": 4, "training": 4,
    "eval": 5, "planning": 5,
    "reproduction": 6,
}


def test_every_package_has_a_layer_and_imports_only_lower_ones():
    graph = import_graph(PACKAGE)
    unplaced = sorted(set(graph) - set(LAYERS))
    assert not unplaced, f"add these to LAYERS and docs/architecture.md: {unplaced}"
    upward = sorted(f"{source} -> {target}" for source, targets in graph.items()
                    for target in targets
                    if LAYERS[target] >= LAYERS[source] and LAYERS[source] > 0)
    assert not upward, f"imports of the same or a higher layer: {upward}"
