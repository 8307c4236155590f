"""A real ``mlflow server`` under test: Postgres backend store, artifacts served over HTTP."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import requests

from potability import db
from tests.support.project import VENV_BIN
from tests.support.server import free_port


class MlflowServer:
    """``mlflow server --serve-artifacts`` in a process group of its own, answering when constructed.

    Its backend store is database ``database`` on the Postgres of ``pg_url``
    (created fresh), its artifacts go under ``artifacts`` (the registry's own
    disk: clients reach it only through ``url``).
    """

    def __init__(self, tmp: Path, pg_url: str, artifacts: Path, database: str = "mlflow_server"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.artifacts = artifacts
        self.log = tmp / f"mlflow-server-{self.port}.log"
        store = db.create_database(pg_url, database)
        self.backend = store.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self, timeout: float = 90) -> None:
        """Start (or start again) the server on its port and wait for ``/health``."""
        self.proc = subprocess.Popen(
            [
                str(VENV_BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                self.backend,
                "--serve-artifacts",
                "--artifacts-destination",
                str(self.artifacts),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        self.stop()
        raise AssertionError(f"mlflow server not up: {self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """Stop the whole process group (its workers too)."""
        if self.proc is not None and self.proc.poll() is None:
            import os

            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
