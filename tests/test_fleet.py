"""The fleet: an MLflow tracking server, two serving hosts that share no disk, nginx in front.

Each host has its own root (model cache, journal, spool) and is started in a mount
namespace of its own (``unshare -m``) with an empty tmpfs over the pipeline's workspace
and over the registry's artifact directory, as on another machine: only the database
and the tracking server's URL are shared.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import threading
import time
from datetime import UTC, datetime

import psycopg2
import pytest
import requests

from potability.mart import WaterMart
from potability.pipeline.small_model import build_model_dir
from tests.support.mlflow_server import MlflowServer
from tests.support.nginx import Nginx
from tests.support.project import project_env, run
from tests.support.server import SAMPLE, Server, auth, free_port, wait_for

pytestmark = [
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("unshare"),
        reason="hiding the pipeline's disk from a host needs root (unshare -m, mount)",
    ),
]
POLL_SECONDS = 2.0
HIDE = 'mount -t tmpfs fleet "$1" && mount -t tmpfs fleet "$2" && shift 2 && exec "$@"'


def model_on(server: Server, tries: int = 6) -> set[str]:
    """The versions a host's workers serve (each request lands on whichever worker is free)."""
    seen = set()
    for _ in range(tries):
        with requests.Session() as fresh:  # a new connection each time: not always one worker
            seen.add(fresh.get(server.base + "/readyz", timeout=10).json()["model_version"])
    return seen


def send_readings(base: str, token: str, stop: threading.Event, answered: list, failed: list):
    """One sensor connection posting readings (reading_id, read_at) until ``stop``."""
    session = requests.Session()
    while not stop.is_set():
        reading = next(READING_IDS)
        body = {**SAMPLE, "reading_id": reading, "read_at": datetime.now(UTC).isoformat()}
        try:
            r = session.post(base + "/v1/predict", json=body, headers=auth(token), timeout=15)
        except requests.RequestException as exc:
            failed.append(type(exc).__name__)
            session = requests.Session()
            continue
        if r.status_code == 200:
            answered.append(r.json()["inference_id"])
        else:
            failed.append(r.status_code)


READING_IDS = (f"fleet-{n}" for n in itertools.count())


def logged_count(url: str, ids: list[str]) -> dict[str, int]:
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT inference_id::text, count(*) FROM water.water_inferences "
            "WHERE inference_id = ANY(%s::uuid[]) GROUP BY 1",
            (ids,),
        )
        return dict(cur.fetchall())


def test_one_deploy_reaches_both_hosts_and_a_killed_host_costs_no_sensor_request(
    clean_db, tmp_path
):
    registry_dir, workspace = tmp_path / "registry-artifacts", tmp_path / "pipeline"
    workspace.mkdir()
    registry_dir.mkdir()  # a mount point for the hosts' tmpfs, whatever lands in it
    registry = MlflowServer(tmp_path, clean_db, registry_dir, database="mlflow_fleet")
    hosts: list[Server] = []
    proxy = None
    try:
        pipeline_env = {
            **project_env(workspace, clean_db),
            "MLFLOW_TRACKING_URI": registry.url,
            # the embedded default, on the pipeline's disk: hidden from the hosts, never used here
            "POTABILITY_MLFLOW_ARTIFACTS": str(workspace / "mlartifacts"),
        }
        name = pipeline_env["POTABILITY_REGISTERED_MODEL"]

        def deploy(model_dir) -> None:
            run(
                ["potability", "deploy", "--force", "--from", str(model_dir)],
                workspace,
                pipeline_env,
            )

        deploy(build_model_dir(workspace / "first", version="fleet-1"))
        host_env = {
            "MLFLOW_TRACKING_URI": registry.url,
            "POTABILITY_REGISTERED_MODEL": name,
            "POTABILITY_MODEL_POLL_SECONDS": str(POLL_SECONDS),
            "POTABILITY_TRUST_FORWARDED_FOR": "1",
        }
        hide = ("unshare", "-m", "--", "sh", "-c", HIDE, "sh", str(workspace), str(registry_dir))

        def start_host(home, port=None) -> Server:
            home.mkdir(exist_ok=True)
            return Server(
                home,
                clean_db,
                None,
                workers=2,
                port=port,
                wrap=hide,
                POTABILITY_MODEL_CACHE=str(home / "model-cache"),
                **host_env,
            )

        hosts = [start_host(tmp_path / "host-a"), start_host(tmp_path / "host-b")]
        assert all(model_on(h) == {"fleet-1"} for h in hosts)

        # one deploy from the pipeline's workspace: both hosts follow within one poll
        deploy(build_model_dir(workspace / "second", version="fleet-2", seed=32))
        deployed = time.monotonic()
        assert wait_for(lambda: all(model_on(h) == {"fleet-2"} for h in hosts), timeout=30)
        followed = time.monotonic() - deployed
        assert followed < POLL_SECONDS + 3, f"both hosts followed after {followed:.1f} s"

        listen = f"127.0.0.1:{free_port()}"
        upstreams = [f for h in hosts for f in ("--upstream", f"127.0.0.1:{h.port}")]
        proxy = Nginx(*upstreams, listen=listen)
        token = WaterMart(url=clean_db).create_token("fleet-sensor", "sensor")
        answered: list[str] = []
        failed: list = []
        stop = threading.Event()
        load = [
            threading.Thread(target=send_readings, args=(proxy.base, token, stop, answered, failed))
            for _ in range(4)
        ]
        for t in load:
            t.start()
        assert wait_for(lambda: len(answered) >= 200, timeout=60)
        os.killpg(hosts[0].proc.pid, signal.SIGKILL)  # host A's gunicorn: master and workers
        hosts[0].proc.wait()
        at_kill = len(answered)
        assert wait_for(lambda: len(answered) >= at_kill + 300, timeout=60)
        stop.set()
        for t in load:
            t.join()
        assert failed == [], f"{len(failed)} failed sensor requests: {failed[:10]}"

        # host A back on its own root: its journal (answers it gave before the kill) is stored
        hosts[0] = start_host(tmp_path / "host-a", port=hosts[0].port)
        assert len(set(answered)) == len(answered)
        assert wait_for(lambda: len(logged_count(clean_db, answered)) == len(answered), 60), (
            f"{len(answered) - len(logged_count(clean_db, answered))} answered readings not logged"
        )
        counts = logged_count(clean_db, answered)
        assert set(counts.values()) == {1}, "an answered reading was logged more than once"
    finally:
        if proxy is not None:
            proxy.stop()
        for h in hosts:
            h.stop()
        registry.stop()
