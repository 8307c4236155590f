"""`potability proxy-config`: the nginx.conf it prints, run by a real nginx as an ordinary user."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

from tests.support.nginx import Nginx, prefix_dir, proxy_config
from tests.support.server import SAMPLE, Server, auth, free_port, stored_ids, wait_for


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        ((), "--upstream"),
        (("--upstream", "nope"), "--upstream 'nope'"),
        (("--upstream", "10.0.0.5:0"), "--upstream '10.0.0.5:0'"),
        (("--upstream", "a:1", "--upstream", "a:1"), "--upstream: the same"),
        (("--upstream", "a:1", "--listen", "8080"), "--listen '8080'"),
        (("--upstream", "a:1", "--page-listen", "x:"), "--page-listen 'x:'"),
        (("--upstream", "a:1", "--tls-cert", "/no/cert.pem", "--tls-key", "/no/k"), "--tls-cert"),
        (("--upstream", "a:1", "--tls-cert", "/no/cert.pem"), "--tls-key"),
        (("--upstream", "a:1", "--prefix", "/no/such/dir"), "--prefix /no/such/dir"),
    ],
)
def test_bad_input_is_refused_naming_the_flag(flags, named):
    result = proxy_config(*flags)
    assert result.returncode == 2 and not result.stdout
    assert result.stderr.startswith("error: ") and named in result.stderr, result.stderr


def self_signed(directory) -> tuple[str, str]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"]
        + ["-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    key.chmod(0o644)  # nginx's user reads it (a test key)
    return str(cert), str(key)


def test_nginx_in_front_buffers_caches_limits_and_skips_a_dead_host(mart, champion, tmp_path):
    """A dead upstream costs no request; the page is cached and rate-limited; the page port is page-only."""
    token = mart.create_token("proxied-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion, POTABILITY_TRUST_FORWARDED_FOR="1")
    dead = f"127.0.0.1:{free_port()}"  # nothing listens there: a host that is down
    listen, page = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    proxy = Nginx(
        "--upstream", dead, "--upstream", f"127.0.0.1:{server.port}", "--page-listen", page,
        listen=listen,
        env={"POTABILITY_PAGE_RATE_BURST": "5", "POTABILITY_PAGE_RATE_PER_SECOND": "1"},
    )  # fmt: skip
    try:
        session = requests.Session()
        answers = [
            session.post(proxy.base + "/v1/predict", json=SAMPLE, headers=auth(token), timeout=10)
            for _ in range(20)
        ]
        assert [a.status_code for a in answers] == [200] * 20
        ids = {a.json()["inference_id"] for a in answers}
        assert wait_for(lambda: ids <= set(stored_ids(mart.url)))

        assert wait_for(lambda: requests.get(proxy.base + "/", timeout=10).status_code == 200)
        cached = requests.get(proxy.base + "/", timeout=10)
        assert cached.status_code == 200 and cached.headers["X-Cache-Status"] == "HIT"
        page_only = f"http://{page}"
        assert requests.get(page_only + "/v1/stats/model", timeout=10).status_code == 200
        refused = requests.post(page_only + "/v1/predict", json=SAMPLE, headers=auth(token))
        assert refused.status_code == 404 and refused.json()["error"]["code"] == "not_found"
        # 15 at once, burst 5: those over the rate wait their turn, those past the burst are
        # refused (the micro-cache is no way round)
        statuses: list[int] = []
        rush = [
            threading.Thread(
                target=lambda: statuses.append(
                    requests.get(proxy.base + "/", timeout=30).status_code
                )
            )
            for _ in range(15)
        ]
        for t in rush:
            t.start()
        for t in rush:
            t.join()
        assert 429 in statuses and 200 in statuses, statuses
        sensor = requests.post(proxy.base + "/v1/predict", json=SAMPLE, headers=auth(token))
        assert sensor.status_code == 200  # the sensors' API has no page rate limit

    finally:
        proxy.stop()
        server.stop()


def test_tls_with_a_certificate_and_absolute_paths_under_prefix(mart, champion, tmp_path):
    keys = prefix_dir()  # nginx's user reads them
    cert, key = self_signed(keys)
    server = Server(tmp_path, mart.url, champion)
    listen = f"127.0.0.1:{free_port()}"
    proxy = Nginx(
        "--upstream", f"127.0.0.1:{server.port}", "--tls-cert", cert, "--tls-key", key,
        listen=listen, absolute=True,
    )  # fmt: skip
    try:
        assert f"pid {proxy.prefix}/nginx.pid;" in proxy.conf.read_text()
        ready = requests.get(f"https://{listen}/readyz", verify=cert, timeout=10)
        assert ready.status_code == 200 and ready.json()["ready"]
        plain = requests.get(f"http://{listen}/healthz", timeout=5)
        assert plain.status_code == 400  # TLS only: nginx refuses plain HTTP on that port
    finally:
        proxy.stop()
        server.stop()
        shutil.rmtree(keys, ignore_errors=True)


def trickle(address: str, stop: threading.Event) -> None:
    """A client that sends its request header a byte a second (slowloris), until ``stop``."""
    host, port = address.rsplit(":", 1)
    request = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        for byte in request:
            if stop.wait(1.0):
                return
            try:
                sock.send(bytes([byte]))
            except OSError:
                return  # dropped by the proxy's header timeout: what it is for


def test_slow_clients_wait_in_nginx_and_a_sensor_is_answered_fast(mart, champion, tmp_path):
    """Four clients trickling their headers, two sync workers: a sensor's predict is still quick.

    Straight at gunicorn the same four clients hold both workers and the sensor waits.
    """
    token = mart.create_token("patient-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion, workers=2)
    listen = f"127.0.0.1:{free_port()}"
    proxy = Nginx("--upstream", f"127.0.0.1:{server.port}", listen=listen)
    stop = threading.Event()
    slow = [threading.Thread(target=trickle, args=(listen, stop)) for _ in range(4)]
    try:
        for t in slow:
            t.start()
        time.sleep(3)  # every slow client is connected and part-way through its header
        took = []
        for _ in range(5):
            started = time.perf_counter()
            answer = requests.post(
                proxy.base + "/v1/predict", json=SAMPLE, headers=auth(token), timeout=20
            )
            took.append(time.perf_counter() - started)
            assert answer.status_code == 200
        assert max(took) < 1.0, took
    finally:
        stop.set()
        for t in slow:
            t.join()
        proxy.stop()
        server.stop()
