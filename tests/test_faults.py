"""Faults from outside, through gunicorn with a real Postgres of the test's own.

Postgres killed (immediate stop, crash recovery at restart) or restarted under
load; the spool's disk cap reached while Postgres is down; corrupt spool files.
Each test compares counts: answered == logged, 0 duplicates, 0 × 5xx for
sensors (503 only where the issue asks for it), and the time to drain once
Postgres is back (printed; run with -s to see the figures).
"""

from __future__ import annotations

import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
import requests

from potability import db, migrator
from potability.mart import WaterMart
from potability.serve.spool import CONFLICTS, Spool, decode_lines
from tests.support.database import query
from tests.support.database import request_row as row
from tests.support.server import SAMPLE, Server, stored_ids, wait_for

REPLAY_SECONDS = 1.0


class Load:
    """Threads posting samples (one thread batches of 100) until stopped; every answer and status kept."""

    def __init__(self, base: str, token: str, threads: int = 4, batch_threads: int = 1):
        self.base, self.token = base, token
        self.answered: list[str] = []
        self.statuses: list[int] = []  # non-200 statuses; -1 = no answer at all
        self.errors: list[dict] = []
        self._lock, self._stop = threading.Lock(), threading.Event()
        # batches make the log's COPYs long, so a crash is likely to land in the middle of one
        self._threads = [
            threading.Thread(target=self._work, args=(i < batch_threads,)) for i in range(threads)
        ]

    def _work(self, batch: bool) -> None:
        session = requests.Session()
        headers = {"Authorization": f"Bearer {self.token}"}
        body = {"samples": [SAMPLE] * 100} if batch else SAMPLE
        while not self._stop.is_set():
            try:
                r = session.post(self.base + "/v1/predict", json=body, headers=headers, timeout=30)
            except requests.RequestException:
                with self._lock:
                    self.statuses.append(-1)
                continue
            with self._lock:
                if r.status_code == 200 and batch:
                    self.answered.extend(p["inference_id"] for p in r.json()["predictions"])
                elif r.status_code == 200:
                    self.answered.append(r.json()["inference_id"])
                else:
                    self.statuses.append(r.status_code)
                    self.errors.append(r.json()["error"])

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()

    def wait_answers(self, count: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.answered)
        while len(self.answered) - start < count and time.monotonic() < deadline:
            time.sleep(0.05)


def drain_seconds(url: str, answered: set[str], timeout: float) -> float:
    """Seconds until every answered row is in the table (fails after ``timeout``)."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if answered <= set(stored_ids(url)):
                return time.monotonic() - start
        except psycopg2.OperationalError:
            pass  # still recovering
        time.sleep(0.1)
    missing = len(answered - set(stored_ids(url)))
    raise AssertionError(f"{missing} answered row(s) not in the table after {timeout:.0f} s")


def started(server: Server, workers: int = 2, timeout: float = 60) -> Server:
    """Wait until every worker serves the model: one that boots during the outage never saw a token."""
    deadline = time.monotonic() + timeout
    while server.log.read_text().count("INFO potability.serve.model_holder: serving") < workers:
        assert time.monotonic() < deadline, server.log.read_text()[-2000:]
        time.sleep(0.1)
    return server


def readyz_everywhere(server: Server, tries: int = 8) -> list[dict]:
    """/readyz as several workers see it (each request lands on whichever is free)."""
    return [requests.get(server.base + "/readyz", timeout=10).json() for _ in range(tries)]


def spool_files(tmp: Path) -> list[Path]:
    return sorted((tmp / "spool").glob("spool-*"))


@pytest.fixture
def own_postgres(tmp_path):
    pgdata = tmp_path / "pg"
    url = db.embedded_server_url(pgdata)
    migrator.migrate(url=url)
    yield pgdata, url
    db.stop_embedded_server(pgdata)


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_postgres_crash_under_load_heals_without_a_restart(own_postgres, champion, tmp_path, mode):
    """Killed (crash recovery at start) or stopped cleanly, mid-load: nothing lost, doubled or 5xx."""
    pgdata, url = own_postgres
    token = WaterMart(url=url).create_token("crash-sensor", "sensor")
    server = started(
        Server(
            tmp_path,
            url,
            champion,
            POTABILITY_TOKEN_CACHE_SECONDS="1",
            POTABILITY_SPOOL_REPLAY_SECONDS=str(REPLAY_SECONDS),
        )
    )
    try:
        with Load(server.base, token) as load:
            load.wait_answers(2000)  # both workers have seen the token and written to Postgres
            before_outage = len(load.answered)
            db.stop_embedded_server(pgdata, mode=mode)
            load.wait_answers(2000)  # answered while Postgres is down: spooled
            time.sleep(1.5)  # past the token cache: lookups fail and the stale entry answers
            down_answers = len(load.answered) - before_outage
            db.embedded_server_url(pgdata)  # back (after crash recovery, for "immediate")
            back = time.monotonic()
            load.wait_answers(2000)
        answered = set(load.answered)
        drained = drain_seconds(url, answered, timeout=REPLAY_SECONDS + 30)
        since_back = time.monotonic() - back
        ids = stored_ids(url)
        # a worker notices Postgres is back at its next probe (one replay interval), not at once:
        # another worker may have replayed its spooled rows already, so it may not have written since
        healed = wait_seconds(
            lambda: all(s["database"] and s["ready"] for s in readyz_everywhere(server)),
            timeout=REPLAY_SECONDS + 10,
        )
    finally:
        server.stop()
    print(
        f"\ncrash ({mode}): answered {len(answered)} ({down_answers} while down), logged {len(set(ids))}, "
        f"duplicated {len(ids) - len(set(ids))}, non-200 {len(load.statuses)}, "
        f"drained {drained:.1f} s after the load ({since_back:.1f} s after Postgres was back), "
        f"every worker ready {healed:.1f} s later"
    )
    assert load.statuses == [], load.errors[:5]  # 0 x 5xx, 0 refused, 0 unanswered
    assert len(ids) == len(set(ids)) == len(answered) == len(load.answered)  # logged == answered
    assert down_answers > 2000 and "spooling" in server.log.read_text()  # the outage was real
    assert spool_files(tmp_path) == [] and since_back < REPLAY_SECONDS + 30


def test_a_different_postgres_behind_the_same_url(own_postgres, champion, tmp_path):
    """Failover: the primary dies under load and a standby (a copy from before) takes its URL."""
    pgdata, url = own_postgres
    token = WaterMart(url=url).create_token("failover-sensor", "sensor")
    db.stop_embedded_server(pgdata, mode="fast")
    standby, old = tmp_path / "standby", tmp_path / "old-primary"
    subprocess.run(["cp", "-a", str(pgdata), str(standby)], check=True)  # keeps the owner
    assert db.embedded_server_url(pgdata) == url
    batch_rows = 500  # what one worker's writer may have in flight when the primary dies
    server = started(
        Server(
            tmp_path,
            url,
            champion,
            POTABILITY_SPOOL_REPLAY_SECONDS=str(REPLAY_SECONDS),
            POTABILITY_LOG_BATCH_ROWS=str(batch_rows),
        )
    )
    try:
        with Load(server.base, token) as load:
            load.wait_answers(2000)
            db.stop_embedded_server(pgdata, mode="immediate")
            pgdata.rename(old)
            standby.rename(pgdata)
            load.wait_answers(2000)
            assert db.embedded_server_url(pgdata) == url  # another server, the same URL
            back = time.monotonic()
            load.wait_answers(2000)
        answered = set(load.answered)
        # the old primary's rows are gone with it; everything else must reach the standby
        drained = wait_seconds(
            lambda: (
                spool_files(tmp_path) == []
                and all(s["database"] for s in readyz_everywhere(server))
            ),
            timeout=REPLAY_SECONDS + 30,
        )
        since_back = time.monotonic() - back
        time.sleep(0.5)  # the last queued rows (flushed every 0.2 s)
        on_standby = stored_ids(url)
    finally:
        server.stop()
    db.stop_embedded_server(pgdata)
    on_primary = stored_ids_of(old)
    ids = [*on_primary, *on_standby]
    # a batch the primary committed as it died, without telling the writer, is spooled and lands on
    # the standby too: only that commit-ack race may put a row on both (in a real failover the old
    # primary's rows are lost anyway); each table itself never holds a row twice
    both = set(on_primary) & set(on_standby)
    print(
        f"\nfailover: answered {len(answered)}, on the old primary {len(on_primary)}, "
        f"on the standby {len(on_standby)}, on both {len(both)}, "
        f"duplicated {len(on_standby) - len(set(on_standby))}, "
        f"non-200 {len(load.statuses)}, drained {drained:.1f} s after the load "
        f"({since_back:.1f} s after the standby was up)"
    )
    assert load.statuses == [], load.errors[:5]
    assert len(on_standby) == len(set(on_standby)) and len(on_primary) == len(set(on_primary))
    assert set(ids) == answered and len(answered) == len(load.answered)  # every answer logged
    assert len(both) <= 2 * batch_rows  # at most the batch in flight per worker
    assert len(on_standby) > 2000 and on_primary  # the failover happened mid-load


def wait_seconds(predicate, timeout: float) -> float:
    """Seconds until ``predicate()`` holds (fails after ``timeout``)."""
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout, f"not within {timeout:.0f} s"
        time.sleep(0.1)
    return time.monotonic() - start


def stored_ids_of(pgdata: Path) -> list[str]:
    """The inference ids in the embedded Postgres of ``pgdata`` (started for the read, then stopped)."""
    url = db.embedded_server_url(pgdata)
    try:
        return stored_ids(url)
    finally:
        db.stop_embedded_server(pgdata)


def test_a_full_spool_refuses_answers_instead_of_losing_them(own_postgres, champion, tmp_path):
    pgdata, url = own_postgres
    token = WaterMart(url=url).create_token("cap-sensor", "sensor")
    cap = 100_000  # about 240 spooled rows
    server = Server(
        tmp_path,
        url,
        champion,
        workers=1,
        POTABILITY_SPOOL_MAX_BYTES=str(cap),
        POTABILITY_SPOOL_REPLAY_SECONDS=str(REPLAY_SECONDS),
    )
    h = {"Authorization": f"Bearer {token}"}
    try:
        assert requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h).status_code == 200
        db.stop_embedded_server(pgdata, mode="immediate")
        answered, refused = [], []
        for _ in range(400):
            r = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h, timeout=30)
            if r.status_code == 200:
                answered.append(r.json()["inference_id"])
            else:
                refused.append((r.status_code, r.json()["error"]["code"]))
            time.sleep(0.005)
        ready_when_full = requests.get(server.base + "/readyz", timeout=10)
        spooled_bytes = Spool(tmp_path / "spool").used()  # journal and spool files: all capped
        db.embedded_server_url(pgdata)
        drained = drain_seconds(url, set(answered), timeout=REPLAY_SECONDS + 30)
        after = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h, timeout=30)
        ready_after = requests.get(server.base + "/readyz", timeout=10)
        ids = stored_ids(url)
    finally:
        server.stop()
    print(
        f"\nspool cap {cap} B: answered {len(answered)}, refused {len(refused)} x 503, "
        f"logged {len(ids) - 1}, spooled {spooled_bytes} B, drained {drained:.1f} s"
    )
    assert refused and set(refused) == {(503, "log_unavailable")}
    assert 100 < len(answered) < 400 and spooled_bytes <= cap
    assert ready_when_full.status_code == 503 and ready_when_full.json()["log_accepting"] is False
    assert len(ids) == len(set(ids)) and set(answered) <= set(ids) and len(ids) == len(answered) + 1
    assert after.status_code == 200 and ready_after.status_code == 200


def test_corrupt_spool_files_are_quarantined_and_never_block_the_rest(
    own_postgres, champion, tmp_path
):
    _, url = own_postgres
    from potability.serve.journal import Journal

    spool = Spool(tmp_path / "spool")
    good = [row(i) for i in range(50)]

    def spooled(requests_):  # as a worker leaves them while Postgres is down: its journal, sealed
        journal = Journal(spool)
        for r in requests_:
            journal.append(r)
        assert journal.seal() == len(requests_)

    spooled(good[:25])
    (spool.directory / "spool-not-a-number.jsonl").write_bytes(b"junk\n")  # name does not parse
    (spool.directory / "spool-1-2.jsonl").write_bytes(b"garbage, not a record\n" * 3)
    spooled([row(sensor="s\x00")])  # Postgres refuses it (a NUL in a text column)
    spooled(good[25:])
    server = Server(tmp_path, url, champion, POTABILITY_SPOOL_REPLAY_SECONDS=str(REPLAY_SECONDS))
    try:
        drained = drain_seconds(
            url, {i for r in good for i in r.inference_ids}, timeout=REPLAY_SECONDS + 30
        )
        time.sleep(0.5)
        metrics = requests.get(server.base + "/metrics", timeout=10).text
    finally:
        server.stop()
    quarantined = sorted(p.name for p in (spool.directory / "quarantine").iterdir())
    print(
        f"\ncorrupt spool: {len(quarantined)} quarantined, {len(good)} good rows logged "
        f"in {drained:.1f} s"
    )
    assert len(quarantined) == 3 and spool_files(tmp_path) == []
    assert len(stored_ids(url)) == 50
    assert "potability_spool_quarantined_files_total 3.0" in metrics
    assert server.log.read_text().count("quarantined") == 3


def test_sensors_get_no_5xx_during_an_outage_and_lab_admin_need_the_database(
    own_postgres, champion, tmp_path
):
    pgdata, url = own_postgres
    mart = WaterMart(url=url)
    tokens = {role: mart.create_token(f"out-{role}", role) for role in ("sensor", "lab", "admin")}
    unseen = mart.create_token("never-seen", "sensor")
    server = Server(
        tmp_path,
        url,
        champion,
        workers=1,
        POTABILITY_TOKEN_CACHE_SECONDS="0.2",
        POTABILITY_TOKEN_STALE_SECONDS="3",
    )

    def post(role_token, path="/v1/predict", body=SAMPLE):
        return requests.post(
            server.base + path,
            json=body,
            headers={"Authorization": f"Bearer {role_token}"},
            timeout=30,
        )

    lab_row = {**SAMPLE, "sample_id": "out-1", "Potability": 1}
    try:
        assert (
            post(tokens["sensor"]).status_code == 200 and post(tokens["admin"]).status_code == 200
        )
        assert post(tokens["lab"], "/v1/samples", lab_row).status_code == 201
        db.stop_embedded_server(pgdata, mode="immediate")
        time.sleep(0.5)  # every cached entry is past its time
        during = {
            "sensor": post(tokens["sensor"]),
            "unseen": post(unseen),
            "admin": post(tokens["admin"]),
            "lab": post(tokens["lab"], "/v1/samples", {**lab_row, "sample_id": "out-2"}),
        }
        time.sleep(3.5)  # past POTABILITY_TOKEN_STALE_SECONDS
        stale = post(tokens["sensor"])
    finally:
        server.stop()
    assert during["sensor"].status_code == 200
    for who in ("unseen", "admin", "lab"):
        assert during[who].status_code == 503, who
        assert during[who].json()["error"]["code"] == "database_unavailable", who
    assert stale.status_code == 503 and stale.json()["error"]["code"] == "database_unavailable"


def _spool_gauge(base: str) -> float:
    text = requests.get(base + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("potability_inference_spool_rows"))
    return float(line.split()[-1])


def test_spooled_rows_gauge_counts_the_spool_once_with_several_workers(
    own_postgres, champion, tmp_path
):
    """Every worker spools into one directory; the gauge says its rows, not a sum of each worker's view."""
    pgdata, url = own_postgres
    token = WaterMart(url=url).create_token("gauge-sensor", "sensor")
    server = started(
        Server(
            tmp_path,
            url,
            champion,
            workers=2,
            POTABILITY_LOG_FLUSH_SECONDS="0.05",
            POTABILITY_SPOOL_REPLAY_SECONDS="600",
        )
    )
    h = {"Authorization": f"Bearer {token}"}
    spool = Spool(tmp_path / "spool")
    try:
        for _ in range(40):  # both workers verify the token while Postgres is up
            assert (
                requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h).status_code
                == 200
            )
        db.stop_embedded_server(pgdata, mode="fast")
        for _ in range(200):  # one connection each (sync workers): both workers answer some
            r = requests.post(server.base + "/v1/predict", json=SAMPLE, headers=h, timeout=30)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30
        while spool.depth() < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # past every worker's next flush, which published its own view before
        gauges = {_spool_gauge(server.base) for _ in range(6)}  # scrapes land on either worker
        spooled_by = {path.name.split("-")[1] for path in spool.files()}
        on_disk = spool.depth()
    finally:
        server.stop()
        db.embedded_server_url(pgdata)
    assert on_disk >= 200  # and warm-up rows not yet written when Postgres stopped
    assert len(spooled_by) == 2  # both workers spooled: each knows its own files best
    assert gauges == {float(on_disk)}, f"the spool holds {on_disk} rows; /metrics said {gauges}"


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_changed_resend_during_an_outage_is_refused_or_kept_never_dropped(
    own_postgres, champion, tmp_path, mode
):
    """No answer without its log row, for a reading sent again with other measurements too.

    One this worker answered and has not stored (spooled, Postgres down): a 409. One stored
    before the outage: the worker cannot ask Postgres, so it answers; the replay keeps that
    second copy in quarantine, counted and logged, and the first stands in the table.
    """
    pgdata, url = own_postgres
    token = WaterMart(url=url).create_token("resend-sensor", "sensor")
    server = Server(
        tmp_path, url, champion, workers=1, POTABILITY_SPOOL_REPLAY_SECONDS=str(REPLAY_SECONDS)
    )
    read_at = (datetime.now(UTC) - timedelta(minutes=5)).replace(microsecond=0).isoformat()

    def post(reading_id: str, **changes) -> requests.Response:
        body = {**SAMPLE, **changes, "reading_id": reading_id, "read_at": read_at}
        h = {"Authorization": f"Bearer {token}"}
        return requests.post(server.base + "/v1/predict", json=body, headers=h, timeout=30)

    quarantine = tmp_path / "spool" / "quarantine"
    try:
        before = post("before")
        first = before.json()["inference_id"]
        assert before.status_code == 200 and wait_for(lambda: first in stored_ids(url))
        db.stop_embedded_server(pgdata, mode=mode)
        during = post("during")
        changed = post("during", ph=6.0)
        again = post("during")
        unchecked = post("before", ph=6.0)  # only Postgres knows "before", and it is down
        db.embedded_server_url(pgdata)
        assert wait_for(
            lambda: any(quarantine.glob(f"*{CONFLICTS}*")) and spool_files(tmp_path) == [],
            timeout=REPLAY_SECONDS + 30,
        ), server.log.read_text()[-3000:]
        time.sleep(0.5)  # the last queued rows
        metrics = requests.get(server.base + "/metrics", timeout=10).text
        rows = dict(query(url, "SELECT inference_id::text, ph FROM water.water_inferences"))
    finally:
        server.stop()
    assert [r.status_code for r in (during, changed, again, unchecked)] == [200, 409, 200, 200]
    error = changed.json()["error"]
    assert error["code"] == "reading_conflict" and "'during'" in error["message"]
    assert again.json()["inference_id"] == during.json()["inference_id"]
    assert unchecked.json()["inference_id"] == first
    assert rows == {first: SAMPLE["ph"], during.json()["inference_id"]: SAMPLE["ph"]}
    [kept] = quarantine.glob(f"*{CONFLICTS}*")
    [record], _ = decode_lines(kept.read_bytes())
    assert record.inference_ids == [first] and record.features[0, 0] == 6.0  # the answer, kept
    assert "potability_log_conflicting_rows_total 1.0" in metrics
    said = server.log.read_text()
    assert "logged already with other measurements" in said and first in said
