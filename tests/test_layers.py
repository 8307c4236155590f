"""The package's import graph: each layer imports only layers below it, siblings never meet, no cycles.

    cli                      the operator's commands
    retrain                  the Prefect flow and its deployment
    pipeline | serve         siblings: the DVC stages and modelling | the app and its processes
    sensor                   client, outbox, readings CSV
    core                     potability.<module>: config, schema, db, tracking, artifacts, ...

Imports inside functions count as much as those at the top of a module.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib import metadata
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "potability"
# (layer, level): a module may import its own layer and any layer of a lower level; equal levels are siblings
LAYERS = {"core": 0, "sensor": 1, "pipeline": 2, "serve": 2, "retrain": 3, "cli": 4}


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        elif "." in parts[-1]:
            # gunicorn.conf.py: loaded by path, not importable; its imports count all the same
            parts = (*parts[:-1], parts[-1].replace(".", "_"))
        found[".".join(parts)] = path
    return found


def layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "core"  # potability itself and its top-level modules


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``module`` names in any import statement (submodules when named, else the package)."""
    is_package = path.name == "__init__.py"
    here = module.split(".") if is_package else module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*here[: len(here) - node.level + 1], *([base] if base else [])])
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            # import potability.x.y.function -> potability.x.y
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per strongly connected group of modules (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    found = []
    for group in groups:  # the shortest way from the group's first module back to it
        start = min(group)
        previous, queue, last = {start: None}, [start], None
        while last is None:
            v = queue.pop(0)
            for w in sorted(edges[v] & group):
                if w == start:
                    last = v
                    break
                if w not in previous:
                    previous[w], queue = v, [*queue, w]
        path = [start]
        while last != start:
            path.insert(1, last)
            last = previous[last]
        found.append([*path, start])
    return found


def upward(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            mine, theirs = layer(module), layer(target)
            if mine == theirs or LAYERS[theirs] < LAYERS[mine]:
                continue
            kind = "a sibling" if LAYERS[theirs] == LAYERS[mine] else "a layer above"
            bad.append(f"{module} ({mine}) -> {target} ({theirs}): {kind}")
    return bad


def test_every_subpackage_is_a_named_layer():
    subpackages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")} - {
        "migrations"
    }  # SQL files, no code
    assert subpackages <= set(LAYERS), (
        f"name the layer of {sorted(subpackages - set(LAYERS))} in LAYERS"
    )
    assert (PACKAGE / "cli.py").is_file()


def test_no_module_imports_a_layer_above_it_or_a_sibling():
    bad = upward(graph())
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_distribution_installs_only_the_potability_package(tmp_path):
    top_level = metadata.distribution("potability").read_text("top_level.txt")
    assert top_level is not None and top_level.split() == ["potability"]
    # what an import from anywhere finds: the package, and not the old top-level serve/ and flows/
    probe = "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n)])"
    found = subprocess.run(
        [sys.executable, "-c", probe, "potability", "serve", "flows", "stages"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert found == "['potability']"
