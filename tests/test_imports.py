"""Test modules share helpers through fixtures (conftest.py) and tests/support/, never by importing each other.

``bench/`` and ``tests/`` import the package, never each other: a test that
benches a bench script loads it by its path (test_bench_serve.py), and a helper
both need lives in the package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS, BENCH = ROOT / "tests", ROOT / "bench"


# test_config.py belongs to the docs branch of issue 24, which changes its
# `from tests.conftest import REPO, run` to `from tests.support.project import ...`.
# When that lands this xfail passes, fails as strict, and the entry goes.
def imported(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every import in ``path``, at any depth, relative ones resolved.

    ``from a.b import c`` counts as both ``a.b`` and ``a.b.c`` (``c`` may be a module).
    """
    package = list(path.parent.relative_to(ROOT).parts)
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package[: len(package) - node.level + 1], *([base] if base else [])]
                )
            names.append((node.lineno, base))
            names += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return names


def shared_wrongly(path: Path) -> list[str]:
    """Imports of a test module, of conftest, or of bench/ by a file under tests/."""
    bad = set()
    for line, name in imported(path):
        parts = name.split(".")
        test_module = (
            parts[0] == "tests"
            and len(parts) > 1
            and (parts[1].startswith("test_") or parts[1] == "conftest")
        )
        if test_module or parts[0] == "conftest" or parts[0].startswith("test_"):
            bad.add(f"{path.relative_to(ROOT)}:{line} imports {name}")
        elif parts[0] == "bench" or parts[0] in {p.stem for p in BENCH.glob("*.py")}:
            bad.add(
                f"{path.relative_to(ROOT)}:{line} imports {name} (load a bench script by its path)"
            )
    return sorted(bad)


def under_tests() -> list:
    files = [
        *sorted(TESTS.glob("test_*.py")),
        TESTS / "conftest.py",
        *sorted((TESTS / "support").glob("*.py")),
    ]
    return [pytest.param(p, id=str(p.relative_to(TESTS))) for p in files]


@pytest.mark.parametrize("path", under_tests())
def test_no_test_module_imports_another_or_conftest(path):
    bad = shared_wrongly(path)
    assert not bad, (
        "share it as a fixture in conftest.py or a helper in tests/support/:\n" + "\n".join(bad)
    )


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_never_imports_the_tests(path):
    bad = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for line, name in imported(path)
        if name.split(".")[0] in {"tests", "conftest"}
    ]
    assert not bad, "bench/ imports the package, never tests/:\n" + "\n".join(bad)
