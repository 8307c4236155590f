"""Sensors first: the open page and stats come from a cache that the renderer process keeps fresh.

In-process (Flask test client, no renderer): answers come from the cache with
validators, a worker renders only a missing or stale entry and only one at a
time. Through gunicorn: the renderer refreshes every entry on its interval, its
death does not take the page down, and a page render stuck in the database
never delays a sensor.
"""

from __future__ import annotations

import signal
import threading
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import psutil
import psycopg2
import pytest
import requests

from potability.serve import create_app, shutdown
from tests.support.server import SAMPLE, Server, sensor_and_server, wait_for


def answer_row(sensor: str):
    """One answer (ph only) as the log stores it."""
    import numpy as np

    from potability.inference_store import AnsweredBatch

    features = [[7.0] + [float("nan")] * 8]
    return AnsweredBatch(
        [str(uuid.uuid4())],
        datetime.now(UTC),
        sensor,
        "v",
        np.array(features),
        np.array([0.3]),
        0.5,
    )


@pytest.fixture
def app(server_settings, champion, tmp_path):
    settings = server_settings(
        **champion.app_config(tmp_path), page_stale_seconds=1.0, page_refresh_seconds=1.0
    )
    app = create_app(settings)
    yield app
    shutdown(app)


def test_stats_come_from_the_cache_until_stale_with_validators(app, store):
    client = app.test_client()
    first = client.get("/v1/stats/live")
    assert first.status_code == 200 and first.get_json()["answers"] == 0
    assert first.headers["Cache-Control"].startswith("public, max-age=") and first.headers["ETag"]
    assert first.headers["Last-Modified"] and first.headers["Server-Timing"].startswith(
        "render;dur="
    )
    store.write([answer_row("cached-sensor")])
    cached = client.get("/v1/stats/live")
    assert cached.get_json()["answers"] == 0 and cached.headers["ETag"] == first.headers["ETag"]
    assert (
        client.get("/v1/stats/live", headers={"If-None-Match": first.headers["ETag"]}).status_code
        == 304
    )
    time.sleep(1.2)  # past page_stale_seconds with no renderer: this worker renders it again
    assert client.get("/v1/stats/live").get_json()["answers"] == 1


def test_the_page_says_how_fresh_its_numbers_are(app):
    html = app.test_client().get("/").get_data(as_text=True)
    assert 'id="freshness"' in html and "Numbers as of" in html and "re-rendered every 1 s" in html


def test_one_render_at_a_time_others_get_the_stale_copy(app, store):
    client, cache = app.test_client(), app.extensions["potability.page_cache"]
    assert client.get("/v1/stats/live").get_json()["answers"] == 0
    store.write([answer_row("busy-sensor")])
    time.sleep(1.2)
    with cache.render_lock(wait=True):  # as if the renderer were mid-render
        stale = client.get("/v1/stats/live")
        assert stale.status_code == 200 and stale.get_json()["answers"] == 0
        never_rendered = client.get("/v1/stats/agreement")  # no copy at all yet
        assert never_rendered.status_code == 503 and never_rendered.headers["Retry-After"] == "1"
        assert never_rendered.get_json()["error"]["code"] == "page_rendering"
    assert client.get("/v1/stats/live").get_json()["answers"] == 1


def renderer_pid(server: Server) -> int | None:
    return server.child_pid("potability.serve.renderer")


def live_answers(server: Server) -> int:
    return requests.get(server.base + "/v1/stats/live", timeout=10).json().get("answers", -1)


@pytest.mark.slow
def test_the_renderer_refreshes_every_open_endpoint(mart, champion, tmp_path):
    # workers would wait an hour before rendering themselves: any refresh is the renderer's
    h, server = sensor_and_server(
        mart, champion, tmp_path, "render-sensor", POTABILITY_PAGE_STALE_SECONDS="3600"
    )
    try:
        assert wait_for(lambda: requests.get(server.base + "/", timeout=10).status_code == 200)
        renderer = renderer_pid(server)
        assert renderer is not None
        assert live_answers(server) == 0
        r = requests.post(server.base + "/v1/predict", json={"samples": [SAMPLE] * 5}, headers=h)
        assert r.status_code == 200
        assert wait_for(lambda: live_answers(server) == 5, timeout=20)
        assert wait_for(
            lambda: "render-sensor" in requests.get(server.base + "/model", timeout=10).text
        )
        page = requests.get(server.base + "/", timeout=10)
        assert page.headers["Content-Type"].startswith("text/html") and "Numbers as of" in page.text
    finally:
        server.stop()
    assert wait_for(lambda: not psutil.pid_exists(renderer), timeout=10), (
        "the renderer outlived its server"
    )


@pytest.mark.slow
def test_the_renderer_dying_does_not_take_the_page_down(mart, champion, tmp_path):
    h, server = sensor_and_server(
        mart, champion, tmp_path, "dying-sensor", POTABILITY_PAGE_STALE_SECONDS="2"
    )
    try:
        assert wait_for(lambda: renderer_pid(server) is not None and live_answers(server) == 0)
        first = renderer_pid(server)
        psutil.Process(first).send_signal(signal.SIGKILL)
        statuses = [
            requests.get(server.base + path, timeout=10).status_code
            for path in ("/", "/v1/stats/live", "/model")
            for _ in range(5)
        ]
        assert statuses == [200] * 15
        requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h)
        assert wait_for(lambda: live_answers(server) == 1, timeout=20)
        assert wait_for(lambda: renderer_pid(server) not in (None, first), timeout=20), (
            "not restarted"
        )
    finally:
        server.stop()


def lock_the_page_tables(url: str):
    """Hold an exclusive lock on every water table but the tokens: any page query blocks, sensors do not."""
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT c.oid::regclass::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'water' AND c.relkind IN ('r', 'p') AND c.relname <> 'api_tokens'"
        )
        for (table,) in cur.fetchall():
            cur.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")  # names from pg_class
    return conn


def waiting_on_locks(url: str) -> int:
    with closing(psycopg2.connect(url)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cur.fetchone()[0]


@pytest.mark.slow
def test_a_sensor_is_answered_promptly_while_page_renders_are_stuck(mart, champion, tmp_path):
    """Page renders hang in the database; 8 clients load the page; a sensor still gets every answer."""
    h, server = sensor_and_server(
        mart,
        champion,
        tmp_path,
        "prompt-sensor",
        POTABILITY_PAGE_STALE_SECONDS="4",
        POTABILITY_PAGE_RATE_BURST="100000",
        POTABILITY_PAGE_RATE_PER_SECOND="100000",
    )
    try:
        assert requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h).status_code == 200
        assert wait_for(lambda: requests.get(server.base + "/", timeout=10).status_code == 200)
        lock = lock_the_page_tables(mart.url)
        locked_at = datetime.now(UTC).replace(microsecond=0)
        try:
            # the renderer's next cycle blocks in the database, holding the render slot; then the
            # cached copy goes stale, so every worker would like to render it
            assert wait_for(lambda: waiting_on_locks(mart.url) > 0, timeout=20), (
                "the renderer never blocked"
            )
            time.sleep(4.5)
            waits, pages = predict_while_pages_load(server, h, clients=8, predicts=30)
        finally:
            lock.rollback()
            lock.close()
        assert max(waits) < 2.0, f"a sensor waited {max(waits):.2f} s behind page loads"
        assert pages and {status for status, _ in pages} == {200}, pages[
            -3:
        ]  # the stale copy, no error
        assert all(modified <= locked_at for _, modified in pages)
        # the renderer was stuck, not dead: it catches up once the database answers
        assert wait_for(
            lambda: (
                parsedate_to_datetime(
                    requests.get(server.base + "/", timeout=10).headers["Last-Modified"]
                )
                > locked_at
            ),
            timeout=20,
        )
    finally:
        server.stop()


def predict_while_pages_load(server: Server, headers: dict, clients: int, predicts: int):
    """Time ``predicts`` sequential predicts while ``clients`` threads load / in a loop; (waits, pages)."""
    pages: list[tuple[int | str, datetime | None]] = []
    stop = threading.Event()

    def page_client():
        while not stop.is_set():
            try:
                r = requests.get(server.base + "/", timeout=30)
                pages.append((r.status_code, parsedate_to_datetime(r.headers["Last-Modified"])))
            except (requests.RequestException, KeyError) as exc:
                pages.append((repr(exc), None))

    threads = [threading.Thread(target=page_client) for _ in range(clients)]
    for t in threads:
        t.start()
    waits = []
    try:
        for _ in range(predicts):
            started = time.perf_counter()
            r = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=headers, timeout=30)
            assert r.status_code == 200, r.text
            waits.append(time.perf_counter() - started)
            time.sleep(0.05)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    return waits, pages
