"""The per-client rate limit on the open page and stats: 429 past the burst, sensors never limited."""

from __future__ import annotations

import pytest
import requests

from potability.serve import create_app, shutdown
from tests.support.server import SAMPLE, auth, sensor_and_server


@pytest.fixture
def limited_app(server_settings, champion, tmp_path):
    def build(**fields):
        settings = {"page_rate_burst": 3, "page_rate_per_second": 0.01, **fields}
        app = create_app(server_settings(**champion.app_config(tmp_path), **settings))
        apps.append(app)
        return app

    apps: list = []
    yield build
    for app in apps:
        shutdown(app)


def test_past_the_burst_the_page_says_429_with_retry_after(limited_app, mart):
    client = limited_app().test_client()
    sensor = mart.create_token("rl-sensor", "sensor")
    assert [client.get(path).status_code for path in ("/", "/v1/stats/live", "/model")] == [200] * 3
    r = client.get("/v1/stats/drift")
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) >= 1
    error = r.get_json()["error"]
    assert error["code"] == "rate_limited" and "per second" in error["message"]
    # the same address with a sensor token: answered, however many page loads it made
    for _ in range(5):
        assert client.post("/v1/predict", json=SAMPLE, headers=auth(sensor)).status_code == 200
    # operations endpoints stay open for probes and scrapers
    assert client.get("/healthz").status_code == 200 and client.get("/metrics").status_code == 200


def test_forwarded_for_is_ignored_unless_trusted(limited_app):
    untrusted = limited_app().test_client()
    statuses = [
        untrusted.get("/", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code for i in range(4)
    ]
    assert statuses == [200, 200, 200, 429]  # one client (the peer), whatever the header claims


def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_bucket(limited_app, tmp_path):
    client = limited_app(
        TRUST_FORWARDED_FOR=True, SPOOL_DIR=str(tmp_path / "proxied")
    ).test_client()
    first = [
        client.get("/", headers={"X-Forwarded-For": "evil, 10.0.0.1"}).status_code for _ in range(4)
    ]
    second = client.get("/", headers={"X-Forwarded-For": "10.0.0.2"}).status_code
    assert first == [200, 200, 200, 429] and second == 200  # the proxy's last hop names the client


@pytest.mark.slow
def test_the_limit_holds_across_gunicorn_workers(mart, champion, tmp_path):
    """Two workers share one bucket per client: the burst is the server's, not each worker's."""
    h, server = sensor_and_server(
        mart,
        champion,
        tmp_path,
        "rl-gsensor",
        POTABILITY_PAGE_RATE_BURST="6",
        POTABILITY_PAGE_RATE_PER_SECOND="0.05",
    )
    try:
        statuses = []
        for _ in range(10):  # new connections each time: spread over both workers
            statuses.append(requests.get(server.base + "/v1/stats/model", timeout=10).status_code)
        # the first six pass (200, or 503 while the very first render is under way), the rest do not
        assert set(statuses[:6]) <= {200, 503} and statuses[6:] == [429] * 4, statuses
        limited = requests.get(server.base + "/", timeout=10)
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["error"]["code"] == "rate_limited"
        for _ in range(20):
            r = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h, timeout=10)
            assert r.status_code == 200
    finally:
        server.stop()
