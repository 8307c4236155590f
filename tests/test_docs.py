"""The docs: the site builds under --strict, README stays the short front door, its links land."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
README_MAX_WIDTH = 120  # tables and lines holding a URL are exempt
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.M)


def readme() -> str:
    return (REPO / "README.md").read_text(encoding="utf-8")


def anchors(page: Path) -> set[str]:
    """The heading ids MkDocs gives a page (Python-Markdown's toc slugs)."""
    from markdown.extensions.toc import slugify

    text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
    return {slugify(title.replace("`", ""), "-") for title in HEADING.findall(text)}


def test_mkdocs_build_strict(tmp_path):
    """Every page in nav, every nav entry a page, every link and anchor found: else it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}"
    assert (tmp_path / "site" / "settings" / "index.html").is_file()


def test_readme_is_short():
    lines = readme().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move detail into docs/"
    )


def test_readme_lines_are_narrow():
    wide = [
        f"line {number}: {len(line)} characters"
        for number, line in enumerate(readme().splitlines(), 1)
        if len(line) > README_MAX_WIDTH and not line.startswith("|") and "://" not in line
    ]
    assert not wide, "README lines over 120 characters:\n" + "\n".join(wide)


def test_readme_links_land():
    """Every relative link in README names a file that exists, and a heading if it names one."""
    broken = []
    for target in LINK.findall(readme()):
        if "://" in target or target.startswith("mailto:"):
            continue
        path, _, anchor = target.partition("#")
        page = REPO / path if path else REPO / "README.md"
        if not page.exists():
            broken.append(f"{target}: no such file")
        elif anchor and page.suffix == ".md" and anchor not in anchors(page):
            broken.append(f"{target}: no heading #{anchor} in {path}")
    assert not broken, "README links that lead nowhere:\n" + "\n".join(broken)
    assert any(t.startswith("docs/") for t in LINK.findall(readme())), "README links into docs/"


PAGES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("page", PAGES)
def test_no_page_names_the_old_layout(page):
    """Top-level `serve/` and `flows/` are gone; so are `potability.stages` and `potability.client`."""
    text = (REPO / page).read_text(encoding="utf-8")
    old = re.findall(
        r"(?<=[`(])(?:serve/|flows/|serve:|serve\.|flows\.)|potability\.(?:stages|client)\b", text
    )
    assert not old, f"{page} still names the old layout: {sorted(set(old))}"


FILE_NAMED = re.compile(
    r"`((?:src/)?(?:potability|tests|bench|docs)/[\w/.-]+\.(?:py|yaml|md|sql))`"
)
MODULE_NAMED = re.compile(r"`(potability(?:\.[a-z_]\w*)+)")


def _is_module(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package that does not exist
        return False


@pytest.mark.parametrize("page", PAGES)
def test_files_and_modules_named_exist(page):
    """A file or module a page names in code (`tests/test_x.py`, `potability.serve.x`) exists."""
    import importlib

    text = (REPO / page).read_text(encoding="utf-8")
    missing = []
    for name in sorted(set(FILE_NAMED.findall(text))):
        path = name if name.startswith(("tests/", "bench/", "docs/", "src/")) else f"src/{name}"
        if not (REPO / path).exists():
            missing.append(name)
    for name in sorted(set(MODULE_NAMED.findall(text))):
        parts = name.split(".")
        depth = max(i for i in range(1, len(parts) + 1) if _is_module(".".join(parts[:i])))
        target = importlib.import_module(".".join(parts[:depth]))
        for attribute in parts[depth:]:
            if not hasattr(target, attribute):
                missing.append(name)
                break
            target = getattr(target, attribute)
    assert not missing, f"{page} names what does not exist: {missing}"
