"""A server whose only Postgres (log, tokens and the MLflow registry) goes down, and is restarted meanwhile."""

from __future__ import annotations

import time

import pytest
import requests

from potability import db
from potability.mart import WaterMart
from potability.pipeline.small_model import build_model_dir
from tests.support.project import REPO, project_env, run
from tests.support.server import SAMPLE, Server

pytestmark = pytest.mark.slow


def readyz(server: Server) -> dict:
    return requests.get(server.base + "/readyz", timeout=10).json()


def says_nothing_of_where_the_database_is(server: Server, pgdata) -> None:
    """The open surfaces during the outage: "database unavailable", no host, socket, user or port."""
    deadline = time.monotonic() + 30  # the renderer's next cycle meets the outage
    while (
        "database unavailable" not in requests.get(server.base + "/", timeout=10).text
        and time.monotonic() < deadline
    ):
        time.sleep(0.5)
    for path in ("/", "/model", "/v1/stats/live", "/v1/stats/model", "/readyz"):
        body = requests.get(server.base + path, timeout=10).text
        leaks = [
            word
            for word in (
                "host=",
                "socket",
                "postgres:",
                ":5432",
                "port 5432",
                ".s.PGSQL",
                str(pgdata),
            )
            if word in body
        ]
        assert not leaks, f"{path} shows {leaks}: {body[:2000]}"
    assert "database unavailable" in requests.get(server.base + "/v1/stats/live", timeout=10).text
    assert readyz(server)["last_log_error"] in (None, "database unavailable")


def test_the_cached_champion_serves_through_an_outage_and_a_restart(tmp_path):
    pgdata = tmp_path / "pg"
    url = db.embedded_server_url(pgdata)
    server = None
    try:
        env = {
            **project_env(tmp_path, url),
            "POTABILITY_MLFLOW_ARTIFACTS": str(tmp_path / "artifacts"),
        }
        run(["potability", "db", "migrate"], REPO, env)
        version = run(
            [
                "potability",
                "deploy",
                "--force",  # a model built outside any git work tree: no lineage to record
                "--from",
                str(build_model_dir(tmp_path / "promoted")),
            ],
            REPO,
            env,
        ).stdout.split()[-1]
        token = WaterMart(url=url).create_token("outage-sensor", "sensor")
        auth = {"Authorization": f"Bearer {token}"}
        cache = {
            "POTABILITY_MODEL_CACHE": str(tmp_path / "cache"),
            "POTABILITY_MODEL_POLL_SECONDS": "0.5",
            "POTABILITY_PAGE_REFRESH_SECONDS": "0.5",
        }
        # one worker: the token it verified before the outage is the one it answers with during it
        # (a worker that never saw a token must say 503 then, which is not what this test is about)
        server = Server(tmp_path, url, None, workers=1, **cache)
        assert readyz(server)["model_version"] == "test-rf-1"
        assert (
            requests.post(server.base + "/v1/predict", json=SAMPLE, headers=auth).status_code == 200
        )

        db.stop_embedded_server(pgdata, mode="immediate")  # everything the server reads is gone
        deadline = time.monotonic() + 30  # a poll has to fail before the error shows
        while not readyz(server)["last_model_error"] and time.monotonic() < deadline:
            time.sleep(0.5)
        answer = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=auth)
        assert answer.status_code == 200 and answer.json()["model_version"] == "test-rf-1"
        status = readyz(server)
        assert status["model_version"] == "test-rf-1" and "registry" in status["last_model_error"]
        says_nothing_of_where_the_database_is(server, pgdata)

        server.stop()  # restarted during the outage: it starts from its local cache
        server = Server(tmp_path, url, None, workers=1, **cache)
        status = readyz(server)
        assert status["ready"] and status["model_version"] == "test-rf-1"

        db.embedded_server_url(pgdata)  # Postgres is back (crash recovery): the registry heals
        deadline = time.monotonic() + 30
        while readyz(server)["last_model_error"] and time.monotonic() < deadline:
            time.sleep(0.5)
        assert readyz(server)["last_model_error"] is None
        meta = requests.get(server.base + "/v1/model", headers=auth, timeout=10).json()
        assert meta["registered_version"] == version
    finally:
        if server is not None:
            server.stop()
        db.stop_embedded_server(pgdata)
