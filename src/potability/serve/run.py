"""Start gunicorn on the app factory, with a clean multi-process metrics directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from potability.config import get_settings


def run_gunicorn(host: str, port: int, workers: int, page_port: int | None = None) -> int:
    """Replace this process with gunicorn (so signals reach its master directly).

    ``page_port``: serve the open page there too, apart from the sensors (POTABILITY_PAGE_BIND on
    ``host``); None keeps the setting as it is.
    """
    if page_port is not None:
        os.environ["POTABILITY_PAGE_BIND"] = (
            f"[{host}]:{page_port}" if ":" in host else f"{host}:{page_port}"
        )
    # the run directory holds one run's state only: a previous run's counters (perhaps of another
    # database), pages and rate-limit buckets must not leak in
    settings = get_settings()
    shutil.rmtree(settings.run_dir, ignore_errors=True)
    settings.metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)
    os.execv(
        sys.executable,
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(Path(__file__).with_name("gunicorn.conf.py")),
            "--bind",
            f"{host}:{port}",
            "--workers",
            str(workers),
            "potability.serve:create_app()",
        ],
    )
    return 0  # not reached
