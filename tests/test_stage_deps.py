"""Every project module a DVC stage runs is one of its deps, so a code change reruns that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.support.project import REPO

SRC = REPO / "src"


def module_file(name: str) -> Path | None:
    """The file of a ``potability`` module (or package), or None if it is not ours."""
    if name != "potability" and not name.startswith("potability."):
        return None
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Modules ``path`` imports anywhere (top level or inside functions), absolute names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            # `from pkg import mod`
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def runs(module: str) -> set[Path]:
    """Every project file executed when ``python -m module`` runs: the import graph, transitively.

    Package ``__init__`` files that hold nothing but a docstring and a version
    are left out: they cannot change what a stage computes.
    """
    seen: set[Path] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(imported_modules(path))
    return {p for p in seen if not (p.name == "__init__.py" and _trivial(p))}


def _trivial(init: Path) -> bool:
    body = ast.parse(init.read_text(encoding="utf-8")).body
    return all(isinstance(n, ast.Expr | ast.Assign) for n in body)


def stages() -> list[tuple[str, str, list[str]]]:
    """(stage name, module it runs, its deps) for every stage in dvc.yaml (foreach included)."""
    spec = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    found = []
    for name, stage in spec.items():
        body = stage.get("do", stage)
        module = body["cmd"].split("python -m ", 1)[1].split()[0]
        found.append((name, module, [d for d in body.get("deps", []) if isinstance(d, str)]))
    return found


@pytest.mark.parametrize(("stage", "module", "deps"), stages(), ids=[s[0] for s in stages()])
def test_every_module_a_stage_runs_is_a_dep(stage, module, deps):
    needed = {p.relative_to(REPO).as_posix() for p in runs(module)}
    missing = sorted(needed - set(deps))
    assert not missing, (
        f"dvc.yaml stage {stage!r} runs {', '.join(missing)} but does not list it in deps"
    )


@pytest.mark.parametrize(("stage", "module", "deps"), stages(), ids=[s[0] for s in stages()])
def test_no_stage_depends_on_code_it_does_not_run(stage, module, deps):
    needed = {p.relative_to(REPO).as_posix() for p in runs(module)}
    extra = sorted(d for d in deps if d.endswith(".py") and d not in needed)
    assert not extra, f"dvc.yaml stage {stage!r} lists {', '.join(extra)}, which it never imports"


def test_the_walk_finds_imports_inside_functions(tmp_path):
    """The check itself: a lazy import counts as much as a top-level one."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from potability.tracking import fetch_version\n")
    assert "potability.tracking" in imported_modules(module)
    needed = {p.name for p in runs("potability.pipeline.stages.champion")}
    assert {"champion.py", "tracking.py", "artifacts.py", "db.py"} <= needed
