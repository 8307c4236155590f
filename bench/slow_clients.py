"""Slow clients: sensors' predicts through nginx while 64 connections trickle their headers.

gunicorn's sync workers read a request themselves: two clients that send a header byte a
second hold two workers, and a sensor waits. nginx (``potability proxy-config``) reads
whole requests before a worker sees them. Three runs of wrk on ``/v1/predict`` (1 row,
``--connections``), all against the same ``potability serve`` (``--workers``):

1. through nginx, nothing else;
2. through nginx, with ``--slow-clients`` connections trickling a header byte a second
   (each opens again when nginx drops it after ``POTABILITY_PROXY_CLIENT_TIMEOUT_SECONDS``);
3. straight at gunicorn with the same slow clients: the case nginx is for.

The model is a small forest built by the library (``small_model``) in a scratch registry;
answers are logged into a scratch database on the workspace's Postgres (dropped after).
Writes ``bench/results/slow_clients.json``.

Usage: python bench/slow_clients.py [--slow-clients 64] [--seconds 20]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROW,
    free_port,
    machine,
    nginx,
    small_champion,
    start,
    stop,
    wait_http,
    write_result,
    wrk,
)
from potability import db, migrator  # noqa: E402
from potability.config import get_settings  # noqa: E402
from potability.mart import WaterMart  # noqa: E402

SCRATCH_DB = "slow_clients_bench"
HEADER = b"POST /v1/predict HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"


def trickle(port: int, stop_event: threading.Event) -> None:
    """One slow client: a header byte a second, again from the start whenever it is dropped."""
    while not stop_event.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                for byte in HEADER:
                    if stop_event.wait(1.0):
                        return
                    sock.send(bytes([byte]))
        except OSError:
            stop_event.wait(0.2)


def with_slow_clients(port: int, count: int, run):
    stop_event = threading.Event()
    threads = [
        threading.Thread(target=trickle, args=(port, stop_event), daemon=True) for _ in range(count)
    ]
    for t in threads:
        t.start()
    stop_event.wait(3.0)  # every slow client connected and part-way through its header
    try:
        return run()
    finally:
        stop_event.set()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--slow-clients", type=int, default=64)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections")
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration per run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    settings = get_settings()
    server_url = db.database_url(settings)
    work = Path(tempfile.mkdtemp(prefix="potability-slow-clients-"))
    url = db.create_database(server_url, SCRATCH_DB)
    procs = []
    prefix = None
    try:
        migrator.migrate(url=url)
        token = WaterMart(url=url).create_token("slow-clients-bench", "sensor")
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "DATABASE_URL": url,
            **small_champion(settings, work, url),
            "POTABILITY_SPOOL_DIR": str(work / "spool"),
            "POTABILITY_RUN_DIR": str(work / "run"),
        }
        port, front = free_port(), free_port()
        serve = [sys.executable, "-m", "potability.cli", "serve", "--host", "127.0.0.1"]
        serve += ["--port", str(port), "--workers", str(args.workers)]
        procs.append(start(serve, env, work / "serve.log"))
        wait_http(f"http://127.0.0.1:{port}/readyz")
        proxy, prefix = nginx(port, front, work)
        procs.append(proxy)
        wait_http(f"http://127.0.0.1:{front}/healthz")
        body = json.dumps(ROW)

        def load(target: int) -> dict:
            result = wrk(
                f"http://127.0.0.1:{target}/v1/predict",
                body,
                args.connections,
                args.seconds,
                token,
            )
            result["loadavg"] = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
            return result

        runs = {}
        runs["nginx"] = load(front)
        print(f"through nginx: {runs['nginx']}", flush=True)
        runs["nginx_slow_clients"] = with_slow_clients(
            front, args.slow_clients, lambda: load(front)
        )
        print(f"through nginx, {args.slow_clients} slow clients: {runs['nginx_slow_clients']}")
        runs["direct_slow_clients"] = with_slow_clients(port, args.slow_clients, lambda: load(port))
        print(
            f"straight at gunicorn, {args.slow_clients} slow clients: {runs['direct_slow_clients']}"
        )
    finally:
        for proc in reversed(procs):
            stop(proc)
        db.drop_database(server_url, SCRATCH_DB)
        shutil.rmtree(work, ignore_errors=True)
        if prefix is not None:
            shutil.rmtree(prefix, ignore_errors=True)
    result = {"machine": machine(), "args": vars(args), "runs": runs}
    print(f"wrote {write_result('slow_clients', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
