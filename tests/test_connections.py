"""The connection budget: four hosts of four workers fit Postgres's default max_connections."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest
import requests

from tests.support.server import SAMPLE, Server, auth, hammer

pytestmark = pytest.mark.slow
HOSTS = 4
WORKERS = 4
# besides the hosts: the pipeline (stages, deploy), the retrain flow, an MLflow tracking server's
# SQLAlchemy pool (5 by default) and psql for a person; docs/operations.md lists them
OTHERS = 12


def client_backends(url: str) -> int:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'")
        return cur.fetchone()[0] - 1  # not this one


def test_four_hosts_of_four_workers_fit_the_default_max_connections(mart, champion, tmp_path):
    """One host of four workers under sensors, page readers and a reload; times four, plus the rest."""
    with psycopg2.connect(mart.url) as conn, conn.cursor() as cur:
        cur.execute("SHOW max_connections")
        limit = int(cur.fetchone()[0])
        cur.execute("SHOW superuser_reserved_connections")
        limit -= int(cur.fetchone()[0])
    baseline = client_backends(mart.url)
    token = mart.create_token("budget-sensor", "sensor")
    admin = mart.create_token("budget-admin", "admin")
    server = Server(
        tmp_path, mart.url, champion, workers=WORKERS, POTABILITY_PAGE_REFRESH_SECONDS="1"
    )
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], client_backends(mart.url) - baseline)
            time.sleep(0.1)

    def pages() -> None:
        while not stop.is_set():
            for path in ("/", "/model", "/v1/stats/live", "/v1/stats/drift"):
                requests.get(server.base + path, timeout=10)

    watcher, reader = threading.Thread(target=watch), threading.Thread(target=pages)
    try:
        watcher.start()
        reader.start()
        answered, failures = hammer(server.base, token, 400, 8)
        for _ in range(WORKERS):
            requests.post(server.base + "/admin/reload", headers=auth(admin), timeout=30)
        requests.post(server.base + "/v1/predict", json=SAMPLE, headers=auth(token), timeout=10)
        time.sleep(2)
    finally:
        stop.set()
        watcher.join()
        reader.join()
        server.stop()
    assert len(answered) == 400 and not failures
    per_host = peak[0]
    print(f"peak connections of one host ({WORKERS} workers + renderer): {per_host}")
    assert 0 < per_host and HOSTS * per_host + OTHERS <= limit, (
        f"{HOSTS} hosts x {per_host} + {OTHERS} > {limit} usable connections"
    )
