"""The project as a user has it: its root, a fresh copy of it, its environment, a command run in it."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from potability.mart import WaterMart
from potability.synth import generate

REPO = Path(__file__).resolve().parents[2]
SERVED_MODEL = "served-test"  # the registered model the server tests follow
VENV_BIN = Path(sys.executable).parent
HEADER_HINT = "ph,Hardness,Solids,Chloramines,Sulfate,Conductivity,Organic_carbon,Trihalomethanes,Turbidity,Potability\n"


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line]


def copy_project(dest: Path, fast_params: bool = True) -> Path:
    """Copy the project's files (as git sees them) into ``dest``, as a fresh git + DVC repo."""
    for rel in tracked_files():
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    if fast_params:
        import yaml

        params = yaml.safe_load((dest / "params.yaml").read_text())
        params["train"]["cv_folds"] = 3
        params["train"]["models"]["rf"] = {
            "n_estimators": [60],
            "max_depth": [None],
            "min_samples_leaf": [4],
            "max_features": ["sqrt"],
        }
        params["train"]["models"]["svm"] = {"C": [1.0], "gamma": ["scale"]}
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=test@example.org", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "test copy"], cwd=dest, check=True)
    return dest


def project_env(root: Path, pg_url: str) -> dict[str, str]:
    """The environment a user would have in ``root``: venv on PATH, our database.

    Each project copy has a registered model of its own, so one test module's
    deployments never become another's champion. ``MLFLOW_TRACKING_URI`` is not
    inherited: ``mlflow.set_tracking_uri()`` in this process exports it, and a
    copy with its own Postgres must track into that Postgres, as a user's would.
    """
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {
        **inherited,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": pg_url,
        "POTABILITY_ROOT": str(root),
        "POTABILITY_REGISTERED_MODEL": f"project-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}",
        "PYTHONWARNINGS": "ignore",
    }


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def seed_rows(url: str, rows: int, seed: int) -> None:
    """``rows`` synthetic lab rows (``seed``) inserted as the lab would."""
    frame = generate(rows, seed)
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]
    WaterMart(url=url).insert_samples(records, added_by="test")
