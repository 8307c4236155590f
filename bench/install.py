"""Install footprint: a server-only install (``.[serve]``) against the full one (requirements.txt).

For each profile: a fresh venv in a temp dir, ``pip install`` with the same
pinned versions (requirements.txt as constraints for the server, as the install
for the full set, like ``make install``), the venv's size on disk, which
training packages it holds, and cold start: ``potability serve --workers 1``
from process start until ``/readyz`` answers 200 (model fetched from the
registry into an empty cache, inference log writable). Both servers follow one
champion in one Postgres, deployed once by this interpreter (the full install).
Prints a table and writes ``bench/results/install.json``.

Usage: python bench/install.py [--starts 3]   (about 10 minutes: two venv installs)
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_project, free_port, machine, start, stop, write_result  # noqa: E402
from potability import db, deploy, migrator  # noqa: E402
from potability.config import Settings  # noqa: E402
from potability.pipeline.small_model import build_model_dir  # noqa: E402  (the small real model the tests serve)

MODEL = "install-bench"
TRAINING_PACKAGES = (
    "sklearn",
    "scipy",
    "dvc",
    "prefect",
    "pyarrow",
    "dask",
    "skl2onnx",
    "pgserver",
    "matplotlib",
)
PROFILES = {
    "server only": [["-c", "requirements.txt", ".[serve]"]],
    "full (requirements.txt)": [["-r", "requirements.txt"], ["--no-deps", "."]],
}


def build_venv(path: Path, steps: list[list[str]], project: Path) -> float:
    """Create a venv at ``path`` and pip-install ``steps`` (run in ``project``); return the seconds."""
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    for args in steps:
        pip = [str(path / "bin/pip"), "install", "-q", "--disable-pip-version-check", *args]
        done = subprocess.run(pip, cwd=project, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(pip)} failed:\n{done.stderr[-3000:]}")
    return time.monotonic() - started


def size_mb(path: Path) -> float:
    """Bytes of every file under ``path`` (links not followed), in MB."""
    total = sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())
    return round(total / 1e6, 1)


def present(venv: Path, modules: tuple[str, ...]) -> list[str]:
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m)))"
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", probe, *modules],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return out.split()


def champion(work: Path) -> dict[str, str]:
    """One Postgres with one deployed champion; the environment a server needs to follow it."""
    url = db.embedded_server_url(work / "pgdata")
    migrator.migrate(url=url)
    env = {
        "DATABASE_URL": url,
        "POTABILITY_ROOT": str(work),
        "POTABILITY_REGISTERED_MODEL": MODEL,
        "POTABILITY_MLFLOW_ARTIFACTS": str(work / "mlartifacts"),
    }
    os.environ.update(env)
    settings = Settings(root=work)
    deploy.deploy_promoted(
        build_model_dir(work / "promoted"), "bench", "install bench", settings, force=True
    )
    return {**env, "MLFLOW_TRACKING_URI": db.mlflow_tracking_uri(settings, url=url)}


def cold_start(venv: Path, env: dict[str, str], work: Path, run: int) -> float:
    """Seconds from `potability serve` to the first 200 from /readyz, with an empty model cache."""
    port = free_port()
    cache = work / f"cache-{venv.name}-{run}"
    env = {
        **env,
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "POTABILITY_MODEL_CACHE": str(cache),
        "POTABILITY_SPOOL_DIR": str(work / f"spool-{venv.name}"),
    }
    started = time.monotonic()
    proc = start(
        [str(venv / "bin/potability"), "serve", "--port", str(port), "--workers", "1"],
        env,
        work / f"{venv.name}-{run}.log",
    )
    try:
        while time.monotonic() - started < 120:
            try:
                if requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        log = (work / f"{venv.name}-{run}.log").read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{venv} never became ready:\n{log}")
    finally:
        stop(proc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=3, help="cold starts per install (median)")
    args = parser.parse_args()
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("POTABILITY_", "MLFLOW_")) and k not in {"DATABASE_URL", "VIRTUAL_ENV"}
    }
    with tempfile.TemporaryDirectory(prefix="potability-install-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # as root, pgserver runs Postgres as its own user, who must reach pgdata
        # pip builds a local project in place: build it from a copy, not the working tree
        project = copy_project(ROOT, work / "project")
        venvs, results = {}, {}
        for i, (name, steps) in enumerate(PROFILES.items()):
            venvs[name] = work / f"venv{i}"
            seconds = build_venv(venvs[name], steps, project)
            results[name] = {
                "install_s": round(seconds, 1),
                "venv_mb": size_mb(venvs[name]),
                "training_packages": present(venvs[name], TRAINING_PACKAGES),
            }
        env = {**clean, **champion(work)}
        starts: dict[str, list[float]] = {name: [] for name in PROFILES}
        for run in range(args.starts):  # alternate, so neither install gets the warmer machine
            for name, venv in venvs.items():
                starts[name].append(cold_start(venv, env, work, run))
        for name in PROFILES:
            results[name]["cold_start_s"] = round(statistics.median(starts[name]), 2)
            results[name]["cold_starts_s"] = [round(s, 2) for s in starts[name]]
        db.stop_embedded_server(work / "pgdata")
    server, full = results["server only"], results["full (requirements.txt)"]
    print(
        f"{'install':26} {'venv MB':>8} {'install s':>10} {'cold start s':>13}  training packages"
    )
    for name, r in results.items():
        print(
            f"{name:26} {r['venv_mb']:8.0f} {r['install_s']:10.0f} {r['cold_start_s']:13.2f}  "
            f"{' '.join(r['training_packages']) or '-'}"
        )
    print(
        f"server only / full: size {server['venv_mb'] / full['venv_mb']:.2f}, "
        f"cold start {server['cold_start_s'] / full['cold_start_s']:.2f}"
    )
    write_result("install", {"machine": machine(), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
