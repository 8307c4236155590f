"""Start gunicorn on the app factory, with a clean multi-process metrics directory."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from potability.config import get_settings, page_cache_dir


def run_gunicorn(host: str, port: int, workers: int, page_port: int | None = None) -> int:
    """Replace this process with gunicorn (so signals reach its master directly).

    ``page_port``: serve the open page there too, apart from the sensors (POTABILITY_PAGE_BIND on
    ``host``); None keeps the setting as it is.
    """
    if page_port is not None:
        os.environ["POTABILITY_PAGE_BIND"] = (
            f"[{host}]:{page_port}" if ":" in host else f"{host}:{page_port}"
        )
    metrics_dir = get_settings().spool_dir / "prometheus"
    shutil.rmtree(metrics_dir, ignore_errors=True)  # counters of a previous run must not leak in
    # nor a previous run's pages (perhaps of another database) or rate-limit buckets
    shutil.rmtree(page_cache_dir(get_settings().spool_dir), ignore_errors=True)
    metrics_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.execv(sys.executable, [
        sys.executable, "-m", "gunicorn",
        "--config", str(Path(__file__).with_name("gunicorn.conf.py")),
        "--bind", f"{host}:{port}",
        "--workers", str(workers),
        "potability.serve:create_app()",
    ])  # fmt: skip
    return 0  # not reached
