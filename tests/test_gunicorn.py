"""The real server: gunicorn, two workers, real Postgres, shutdowns (outages: test_faults.py)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import requests

from tests.support.server import SAMPLE, Server, hammer, stored_ids, wait_for

pytestmark = pytest.mark.slow


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
    # rows wait in memory
    server = Server(tmp_path, mart.url, champion, POTABILITY_LOG_FLUSH_SECONDS="30")

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
