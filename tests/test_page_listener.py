"""The page listener (issue 13): open traffic on a port and in a process of its own, real gunicorn throughout."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest
import requests

from potability.config import Settings, SettingsError
from tests.support.project import REPO, project_env
from tests.support.server import SAMPLE, Server, auth, free_port, wait_for


class PageServer(Server):
    """A real server with a page listener; ``page`` is the listener's base URL."""

    def __init__(self, tmp, url, champion, **env):
        self.page_port = free_port()
        self.page = f"http://127.0.0.1:{self.page_port}"
        super().__init__(
            tmp, url, champion, POTABILITY_PAGE_BIND=f"127.0.0.1:{self.page_port}", **env
        )
        ready = wait_for(lambda: _answers(self.page + "/v1/stats/model"), timeout=60)
        assert ready, f"page listener not answering: {self.log.read_text()[-2000:]}"

    def listener_pid(self) -> int | None:
        return self.child_pid("potability.serve.page_listener")


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False


@pytest.mark.slow
def test_the_listener_serves_the_open_endpoints_as_the_api_port_does(mart, champion, tmp_path):
    sensor = auth(mart.create_token("pl-sensor", "sensor"))
    server = PageServer(tmp_path, mart.url, champion)
    try:
        for path in ("/", "/model", "/v1/stats/model", "/v1/stats/live", "/static/page.css"):
            # both ports answer from one cache: the same copy, unless the renderer refreshed in between
            assert wait_for(
                lambda path=path: (
                    requests.get(server.page + path, timeout=10).content
                    == requests.get(server.base + path, timeout=10).content
                ),
                timeout=20,
            ), path
        page = requests.get(server.page + "/", timeout=10)
        assert page.headers["Content-Type"].startswith("text/html") and "Numbers as of" in page.text
        assert page.headers["Cache-Control"].startswith("public, max-age=")
        assert (
            page.headers["Server-Timing"].startswith("render;dur=")
            and page.headers["Last-Modified"]
        )
        assert (
            len(page.raw.headers.getlist("Date")) == 1
            and page.headers["Server"] == "potability-page"
        )
        again = requests.get(
            server.page + "/", headers={"If-None-Match": page.headers["ETag"]}, timeout=10
        )
        # or refreshed meanwhile
        assert again.status_code == 304 or again.headers["ETag"] != page.headers["ETag"]
        assert requests.get(server.page + "/v1/stats/nope", timeout=10).status_code == 404
        # sensors and everything but the open pages stay on the API port
        refused = requests.post(
            server.page + "/v1/predict", json=SAMPLE, headers=sensor, timeout=10
        )
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
        for path in ("/readyz", "/metrics", "/v1/model"):
            assert (
                requests.get(server.page + path, headers=sensor, timeout=10).status_code == 404
            ), path
        assert requests.get(server.page + "/healthz", timeout=10).status_code == 200
        assert (
            requests.post(
                server.base + "/v1/predict", json=SAMPLE, headers=sensor, timeout=10
            ).status_code
            == 200
        )
        listener = psutil.Process(server.listener_pid())
        # it must yield the CPU to the sensor workers, every thread of it (Linux schedules threads)
        for thread in listener.threads():
            assert os.sched_getscheduler(thread.id) == os.SCHED_IDLE, thread
            assert os.getpriority(os.PRIO_PROCESS, thread.id) >= 10, thread
    finally:
        server.stop()
    assert wait_for(
        lambda: not listener.is_running() or listener.status() == psutil.STATUS_ZOMBIE, timeout=10
    ), "the page listener outlived its server"


@pytest.mark.slow
def test_the_listener_shares_the_per_client_rate_limit(mart, champion, tmp_path):
    sensor = auth(mart.create_token("pl-rl-sensor", "sensor"))
    server = PageServer(
        tmp_path,
        mart.url,
        champion,
        POTABILITY_PAGE_RATE_BURST="8",
        POTABILITY_PAGE_RATE_PER_SECOND="0.05",
    )
    try:  # the constructor spent a token or more (a 503 while the first copy renders is retried)
        statuses: list[int] = []
        while len(statuses) < 15 and 429 not in statuses:
            statuses.append(requests.get(server.page + "/v1/stats/model", timeout=10).status_code)
        # the burst of 8 (and a token or so refilled at 0.05/s meanwhile), then 429
        assert statuses[-1] == 429 and set(statuses[:-1]) <= {200, 503} and len(statuses) <= 10, (
            statuses
        )
        limited = requests.get(server.page + "/", timeout=10)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        # one client, one bucket, whichever port it asks
        assert requests.get(server.base + "/", timeout=10).status_code == 429
        for _ in range(10):
            assert (
                requests.post(
                    server.base + "/v1/predict", json=SAMPLE, headers=sensor, timeout=10
                ).status_code
                == 200
            )
    finally:
        server.stop()


@pytest.mark.slow
def test_a_killed_listener_comes_back_and_keeps_waiting_clients(mart, champion, tmp_path):
    server = PageServer(
        tmp_path, mart.url, champion, POTABILITY_PAGE_LISTENER_RESTART_SECONDS="0.5"
    )
    try:
        first = server.listener_pid()
        assert first is not None
        psutil.Process(first).send_signal(signal.SIGKILL)
        # the master holds the port: this connection waits in its backlog for the next listener
        assert requests.get(server.page + "/", timeout=60).status_code == 200
        assert server.listener_pid() not in (None, first)
        # the API port never stopped
        assert requests.get(server.base + "/", timeout=10).status_code == 200
    finally:
        server.stop()


@pytest.mark.slow
def test_a_silent_client_holds_the_listener_only_until_its_timeout(mart, champion, tmp_path):
    server = PageServer(
        tmp_path,
        mart.url,
        champion,
        POTABILITY_PAGE_LISTENER_CONNECTIONS="1",
        POTABILITY_PAGE_LISTENER_TIMEOUT_SECONDS="2",
    )
    try:
        # takes the one slot, says nothing
        with socket.create_connection(("127.0.0.1", server.page_port)) as silent:
            started = time.monotonic()
            # waits in the backlog while the slot is taken, answered once the silent client is dropped
            assert requests.get(server.page + "/", timeout=30).status_code == 200
            waited = time.monotonic() - started
            assert 1.5 < waited < 10, f"waited {waited:.1f} s"
            silent.settimeout(5)
            assert silent.recv(1024) == b"", "the silent client was not dropped"
    finally:
        server.stop()


@pytest.mark.slow
def test_sensors_are_answered_while_clients_hammer_the_listener(mart, champion, tmp_path):
    sensor = auth(mart.create_token("pl-busy-sensor", "sensor"))
    server = PageServer(
        tmp_path,
        mart.url,
        champion,
        POTABILITY_PAGE_RATE_BURST="100000",
        POTABILITY_PAGE_RATE_PER_SECOND="100000",
        POTABILITY_PAGE_LISTENER_CONNECTIONS="2",
    )
    stop, pages = threading.Event(), []

    def page_client():
        session = requests.Session()
        while not stop.is_set():
            try:
                pages.append(session.get(server.page + "/", timeout=30).status_code)
            except requests.RequestException as exc:
                pages.append(type(exc).__name__)

    clients = [threading.Thread(target=page_client) for _ in range(16)]
    try:
        for t in clients:
            t.start()
        answers = [
            requests.post(
                server.base + "/v1/predict", json=SAMPLE, headers=sensor, timeout=10
            ).status_code
            for _ in range(100)
        ]
        stop.set()
        for t in clients:
            t.join(timeout=40)
        assert answers == [200] * 100
        assert pages and set(pages) == {200}, sorted(set(map(str, pages)))
    finally:
        stop.set()
        server.stop()


@pytest.mark.slow
def test_the_listener_takes_at_most_its_rate_whatever_the_clients_do(mart, champion, tmp_path):
    """POTABILITY_PAGE_LISTENER_PER_SECOND bounds open traffic's work; waiting clients are answered, not dropped."""
    per_second, seconds = 20, 3.0
    server = PageServer(
        tmp_path,
        mart.url,
        champion,
        POTABILITY_PAGE_LISTENER_PER_SECOND=str(per_second),
        POTABILITY_PAGE_RATE_BURST="100000",
        POTABILITY_PAGE_RATE_PER_SECOND="100000",
    )
    stop, answered, lock = threading.Event(), [], threading.Lock()

    def page_client():
        while not stop.is_set():
            try:
                status = requests.get(server.page + "/v1/stats/model", timeout=30).status_code
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                answered.append((time.monotonic(), status))

    clients = [threading.Thread(target=page_client) for _ in range(16)]
    try:
        started = time.monotonic()
        for t in clients:
            t.start()
        time.sleep(seconds)
        stop.set()
        for t in clients:
            t.join(timeout=40)
    finally:
        stop.set()
        server.stop()
    in_window = [s for at, s in answered if at - started <= seconds]
    assert {s for _, s in answered} == {200}  # the clients that waited were answered
    # one connection a 1/20 s, plus the first one at once (16 looping clients ask for hundreds)
    assert per_second * seconds * 0.6 <= len(in_window) <= per_second * seconds + 2, len(in_window)


@pytest.mark.slow
def test_a_page_port_in_use_stops_the_server_naming_the_setting(clean_db, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "potability.cli",
                "serve",
                "--port",
                str(free_port()),
                "--page-port",
                str(port),
            ],
            cwd=REPO,
            env={
                **project_env(tmp_path, clean_db),
                "POTABILITY_SPOOL_DIR": str(tmp_path / "spool"),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert (
        f"POTABILITY_PAGE_BIND=127.0.0.1:{port}: cannot listen there" in done.stderr + done.stdout
    )


@pytest.mark.parametrize("bind", ["8001", "localhost", "host:port", "0.0.0.0:70000", "a b:80"])
def test_a_bad_page_bind_is_refused_by_name(bind, monkeypatch):
    monkeypatch.setenv("POTABILITY_PAGE_BIND", bind)
    with pytest.raises(SettingsError, match="POTABILITY_PAGE_BIND"):
        Settings()
