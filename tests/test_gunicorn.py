"""The real server: gunicorn, two workers, real Postgres, shutdowns (outages: test_faults.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import psycopg2
import pytest
import requests

from tests.conftest import REPO, Champion, project_env
from tests.test_server import SAMPLE

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self,
        tmp: Path,
        url: str,
        champion: Champion | None,
        workers: int = 2,
        port: int | None = None,
        **env,
    ):
        self.port = port or free_port()  # a given port: a restart where clients expect it
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        served = champion.server_env(tmp) if champion else {}
        environment = {**project_env(tmp, url), **served,
                       "POTABILITY_SPOOL_DIR": str(tmp / "spool"), **env}  # fmt: skip
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "potability.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), "--workers", str(workers)],
            cwd=REPO, env=environment, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or a worker still booting (imports, first registry read)
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"server not ready: {self.log.read_text()[-2000:]}")

    def child_pid(self, module: str) -> int | None:
        """The pid of the master's child running ``python -m module`` (renderer, page listener)."""
        for child in psutil.Process(self.proc.pid).children():
            try:
                if module in child.cmdline():
                    return child.pid
            except psutil.NoSuchProcess:
                continue
        return None

    def stop(self, timeout: float = 30) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)


def hammer(
    base: str, token: str, total: int, threads: int, on_count=None
) -> tuple[list[str], list[int]]:
    """Send ``total`` single-sample requests from ``threads`` threads; return answered ids and other statuses."""
    answered, failures, lock = [], [], threading.Lock()
    counter = iter(range(total))

    def worker():
        session = requests.Session()
        for _ in iter(lambda: next(counter, None), None):
            try:
                r = session.post(
                    base + "/v1/predict",
                    json=SAMPLE,
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=10,
                )
            except requests.ConnectionError:
                with lock:
                    failures.append(-1)
                continue
            with lock:
                if r.status_code == 200:
                    answered.append(r.json()["inference_id"])
                    if on_count:
                        on_count(len(answered))
                else:
                    failures.append(r.status_code)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return answered, failures


def stored_ids(url: str) -> list[str]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT inference_id::text FROM water.water_inferences")
        return [r[0] for r in cur.fetchall()]


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return predicate()


def test_every_endpoint_through_gunicorn(mart, champion, tmp_path):
    sensor, lab = mart.create_token("gsensor", "sensor"), mart.create_token("glab", "lab")
    server = Server(tmp_path, mart.url, champion)
    try:
        h = {"Authorization": f"Bearer {sensor}"}
        r = requests.post(server.base + "/v1/predict", json={"samples": [SAMPLE] * 100}, headers=h)
        assert r.status_code == 200 and len(r.json()["predictions"]) == 100
        assert (
            requests.post(
                server.base + "/v1/predict", json={**SAMPLE, "ph": 15}, headers=h
            ).status_code
            == 400
        )
        row = {**SAMPLE, "sample_id": "G-1", "Potability": 0}
        assert (
            requests.post(
                server.base + "/v1/samples", json=row, headers={"Authorization": f"Bearer {lab}"}
            ).status_code
            == 201
        )
        for path in ("/healthz", "/readyz", "/openapi.json"):
            assert requests.get(server.base + path).status_code == 200
        metrics = requests.get(server.base + "/metrics").text
        assert (
            "potability_predictions_total" in metrics
            and 'potability_model_info{version="test-rf-1"}' in metrics
        )
        assert wait_for(lambda: len(stored_ids(mart.url)) == 100)
    finally:
        server.stop()


def test_sigterm_under_load_flushes_the_queue(mart, champion, tmp_path):
    token = mart.create_token("term-sensor", "sensor")
    server = Server(
        tmp_path, mart.url, champion, POTABILITY_LOG_FLUSH_SECONDS="30"
    )  # rows wait in memory

    def terminate(count):
        if count == 300:
            os.kill(server.proc.pid, signal.SIGTERM)

    answered, failures = hammer(server.base, token, 600, 4, on_count=terminate)
    assert server.proc.wait(timeout=30) == 0
    # the signal landed mid-load: later requests found no server, and rows were waiting in memory
    # (flushed every 30 s, so only worker_exit can have written them)
    assert 300 <= len(answered) < 600 and failures, (len(answered), set(failures))
    stored = stored_ids(mart.url)
    assert len(stored) == len(set(stored)) and set(answered) <= set(stored), (
        "answered inferences missing after a graceful shutdown"
    )


def test_concurrent_lab_posts_of_one_sample_store_one_row(mart, champion, tmp_path):
    lab = mart.create_token("conc-lab", "lab")
    server = Server(tmp_path, mart.url, champion)
    row = {**SAMPLE, "sample_id": "CONC-1", "Potability": 1}
    statuses, lock = [], threading.Lock()

    def post():
        r = requests.post(
            server.base + "/v1/samples",
            json=row,
            headers={"Authorization": f"Bearer {lab}"},
            timeout=10,
        )
        with lock:
            statuses.append((r.status_code, r.json().get("inserted")))

    try:
        threads = [threading.Thread(target=post) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    assert [s for s, _ in statuses] == [201] * 16
    assert sum(inserted for _, inserted in statuses) == 1
    assert mart.sample_count() == 1
