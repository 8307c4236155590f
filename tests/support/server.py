"""A server under test: the sample a sensor sends, auth headers, a real gunicorn, waiting for it."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Protocol

import psutil
import psycopg2
import requests

from tests.support.project import REPO, project_env

SAMPLE = {
    "ph": 7.1,
    "Hardness": 204.9,
    "Solids": 20791.0,
    "Chloramines": 7.3,
    "Sulfate": 368.5,
    "Conductivity": 564.3,
    "Organic_carbon": 10.4,
    "Trihalomethanes": 86.9,
    "Turbidity": 2.96,
}


class Served(Protocol):
    """What a server needs of a deployed model (conftest's ``Champion``)."""

    def server_env(self, tmp: Path) -> dict[str, str]: ...


def auth(token):
    return {"Authorization": f"Bearer {token}"}


def logged(app, mart):
    """Everything the app answered so far, once its inference log is flushed to Postgres."""
    app.extensions["potability.log"].flush()
    return mart.inferences()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``potability serve`` (gunicorn) in a process group of its own, ready when constructed."""

    def __init__(
        self,
        tmp: Path,
        url: str,
        champion: Served | None,
        workers: int = 2,
        port: int | None = None,
        wrap: tuple[str, ...] = (),
        **env,
    ):
        self.port = port or free_port()  # a given port: a restart where clients expect it
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"server-{self.port}.log"
        served = champion.server_env(tmp) if champion else {}
        environment = {
            **project_env(tmp, url),
            **served,
            "POTABILITY_SPOOL_DIR": str(tmp / "spool"),
            **env,
        }
        self.proc = subprocess.Popen(
            [
                *wrap,  # a command that execs the rest (`unshare -m ...`: another machine's view)
                sys.executable,
                "-m",
                "potability.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            cwd=REPO,
            env=environment,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
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


def sensor_and_server(mart, champion, tmp_path, name: str, **env) -> tuple[dict, Server]:
    """A sensor's auth headers and a real gunicorn server with ``env`` (refreshing every second)."""
    headers = auth(mart.create_token(name, "sensor"))
    return headers, Server(tmp_path, mart.url, champion, POTABILITY_PAGE_REFRESH_SECONDS="1", **env)
