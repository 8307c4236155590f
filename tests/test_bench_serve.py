"""bench/serve.py --kind: a candidate is benched from a scratch database that is gone afterwards.

The bench serves a model that is not the champion by giving our server its own
inference log (a scratch database on the workspace's Postgres); the workspace's
log and tokens must not keep anything of it, even when a server's session has
not let go when the bench ends.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from contextlib import ExitStack

import pytest

from potability import db, migrator
from potability.mart import WaterMart
from tests.support.project import REPO


@pytest.fixture(scope="module")
def bench_serve():
    """bench/serve.py as a module (it puts bench/ on sys.path, where a `serve.py` would shadow ours)."""
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_serve", REPO / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = saved
    return module


def databases(url: str) -> set[str]:
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute("SELECT datname FROM pg_database")
        return {row[0] for row in cur.fetchall()}


def tokens_named(url: str, name: str) -> int:
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM water.api_tokens WHERE name = %s", (name,))
        return cur.fetchone()[0]


def test_scratch_database_holds_the_bench_log_and_is_dropped_with_its_sessions(bench_serve, pg_url):
    name = f"{bench_serve.SCRATCH_PREFIX}test_{os.getpid()}"
    sensor = f"bench-sensor-{os.getpid()}"
    with ExitStack() as cleanup:
        url = bench_serve.scratch_database(pg_url, name, cleanup)
        migrator.migrate(url=url)
        mart = WaterMart(url=url)
        mart.create_token(sensor, "sensor")
        mart.close()
        lingering = db.connect(url=url)  # a server's session that did not let go in time
        assert name in databases(pg_url)
        assert tokens_named(url, sensor) == 1
        assert tokens_named(pg_url, sensor) == 0  # the workspace's tokens are not the bench's
    assert name not in databases(pg_url)
    lingering.close()
