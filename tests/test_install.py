"""The server needs only `potability[serve]`: answering sensors never imports training code.

pyproject's `serve` extra leaves out scikit-learn, SciPy, DVC, Prefect, Dask,
pgserver, pyarrow and matplotlib (the page's charts are written as SVG by hand; bench/install.py measures what that saves). This holds
only while the server's code paths need none of them. The test makes them
uninstalled for a fresh interpreter (any import of them fails, as on a
server-only host; libraries that merely try them, as pandas tries pyarrow, go
on without) and has it start the app, load the champion, answer a sample and
render the quality page and the metrics.

The same holds for each extra: every package a part of the code imports must
be declared by the extra that part is installed with, and a real venv holding
only ``.[serve]`` must start ``potability serve``.
"""

import ast
import functools
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import requests

from tests.support.project import REPO, project_env, run
from tests.support.server import free_port

TRAINING_MODULES = (
    "sklearn",
    "scipy",
    "dvc",
    "prefect",
    "dask",
    "distributed",
    "skl2onnx",
    "skops",
    "pgserver",
    "pyarrow",
    "onnx",
    "matplotlib",
)

SERVER_SESSION = """
import importlib.abc, json, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in sys.argv[1:]:
            raise ModuleNotFoundError(f"No module named {name!r} (not in potability[serve])")

sys.meta_path.insert(0, NotInstalled())
from potability.serve import create_app, shutdown
from potability.mart import WaterMart

app = create_app()
token = WaterMart().create_token("install-probe", "sensor")
client = app.test_client()
sample = {"ph": 7.1, "Hardness": 204.9, "Solids": 20791, "Chloramines": 7.3, "Sulfate": 368.5,
          "Conductivity": 564.3, "Organic_carbon": 10.4, "Trihalomethanes": 86.9, "Turbidity": 2.96}
statuses = [client.get("/readyz").status_code,
            client.post("/v1/predict", json=sample, headers={"Authorization": f"Bearer {token}"}).status_code,
            client.get("/").status_code, client.get("/metrics").status_code]
shutdown(app)
print(json.dumps(statuses))
"""


def test_serving_imports_no_training_code(clean_db, champion, tmp_path):
    env = {
        **project_env(REPO, clean_db),
        "POTABILITY_REGISTERED_MODEL": champion.name,
        "MLFLOW_TRACKING_URI": champion.tracking_uri,
        "POTABILITY_MODEL_CACHE": str(tmp_path / "cache"),
        "POTABILITY_SPOOL_DIR": str(tmp_path / "spool"),
    }
    out = run([sys.executable, "-c", SERVER_SESSION, *TRAINING_MODULES], REPO, env).stdout
    assert json.loads(out.strip().splitlines()[-1]) == [200, 200, 200, 200]


# -- every extra declares what its code imports ------------------------------------------------
SOURCE = REPO / "src" / "potability"
# which extra installs each part of the package; core modules and the CLI: their module-level
# imports only (their lazy imports serve the extra of whoever calls them)
EXTRA_OF_PART = {
    "sensor": None,
    "serve": "serve",
    "pipeline": "train",
    "retrain": "flow",
    "pyfunc_model.py": "serve",  # loaded by MLflow (registry, `mlflow models serve`), never by core
}


def _imports(path: Path, module_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if module_level_only else ast.walk(tree)
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"potability", "__future__"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requires(name: str) -> list[str]:
    """A distribution's requirements: ours from pyproject.toml as it is now, others as installed."""
    if name != "potability":
        return metadata.requires(name) or []
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    lines = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        lines += [f"{r}; extra == '{extra}'" for r in reqs]
    return lines


def _requirement_closure(extra: str | None) -> set[str]:
    """Normalised names of every distribution ``potability[extra]`` installs."""
    from packaging.requirements import Requirement

    seen, todo = set(), [("potability", {extra} if extra else set())]
    while todo:
        name, extras = todo.pop()
        key = (_norm(name), frozenset(extras))
        if key in seen:
            continue
        seen.add(key)
        for line in _requires(name):
            req = Requirement(line)
            envs = [{"extra": e} for e in extras] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                todo.append((req.name, set(req.extras)))
    return {name for name, _ in seen}


@functools.cache
def _module_owners() -> dict[str, list[str]]:
    return metadata.packages_distributions()


def _distributions_of(module: str) -> set[str]:
    return {_norm(d) for d in _module_owners().get(module, [])}


@pytest.mark.parametrize("extra", [None, "serve", "train", "flow"])
def test_each_extra_declares_what_its_code_imports(extra):
    installs = _requirement_closure(extra)
    missing = []
    for path in sorted(SOURCE.rglob("*.py")):
        part = path.relative_to(SOURCE).parts[0]  # a sub-package, or a core module's file name
        if EXTRA_OF_PART.get(part) != extra:
            continue
        for module in sorted(_imports(path, module_level_only=part not in EXTRA_OF_PART)):
            if not _distributions_of(module) & installs:
                missing.append(f"{path.relative_to(REPO)} imports {module}")
    assert not missing, f"not installed by potability[{extra or ''}]:\n" + "\n".join(missing)


# (extra, distribution, a version that must not be installable: a published advisory, or a break)
REFUSED_VERSIONS = [
    (None, "requests", "2.32.3"),  # CVE-2024-47081: .netrc credentials leak to other hosts
    (None, "tqdm", "4.66.2"),  # CVE-2024-34062: eval of CLI arguments
    ("serve", "gunicorn", "22.0.0"),  # CVE-2024-6827: request smuggling
    ("serve", "orjson", "3.9.14"),  # CVE-2024-27454: unbounded recursion on deep input
    ("serve", "Flask", "3.1.0"),  # CVE-2025-47278: fallback signing key
    ("serve", "Jinja2", "3.1.5"),  # CVE-2025-27516: sandbox escape through |attr
    ("serve", "Werkzeug", "3.0.5"),  # CVE-2024-49766, CVE-2024-49767: path and form DoS
    ("train", "skops", "0.12.0"),  # CVE-2025-54886: a model card loads joblib unchecked
    ("flow", "SQLAlchemy", "2.1.0"),  # stops Prefect 3.8's scheduler
]


@pytest.mark.parametrize("extra,name,version", REFUSED_VERSIONS)
def test_lower_bounds_exclude_known_bad_releases(extra, name, version):
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"] if extra is None else project["optional-dependencies"][extra]
    specs = [
        Requirement(r).specifier for r in declared if _norm(Requirement(r).name) == _norm(name)
    ]
    assert specs, f"potability[{extra or ''}] does not declare {name}"
    assert not any(spec.contains(version) for spec in specs), f"{name} {specs} allows {version}"


@pytest.mark.slow
def test_a_serve_only_venv_starts_the_server(clean_db, champion, tmp_path):
    """pip install -c requirements.txt ".[serve]" into a fresh venv, then `potability serve` answers."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    installed = subprocess.run(
        [*pip, "-c", str(REPO / "requirements.txt"), f"{REPO}[serve]"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    port = free_port()
    env = {
        **project_env(tmp_path, clean_db),
        **champion.server_env(tmp_path),
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "POTABILITY_SPOOL_DIR": str(tmp_path / "spool"),
        "POTABILITY_RUN_DIR": str(tmp_path / "run"),
    }
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(venv / "bin" / "potability"), "serve", "--port", str(port), "--workers", "1"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        statuses = []
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                statuses = [
                    requests.get(f"http://127.0.0.1:{port}{p}", timeout=2).status_code
                    for p in ("/healthz", "/readyz")
                ]
                if statuses == [200, 200]:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.5)
        assert statuses == [200, 200], log.read_text()[-3000:]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
