"""No answered inference lost to a SIGKILL: the workers' write-ahead journal (serve/journal.py).

Real gunicorn with a long flush interval, so every answered row still sits in
a worker's memory when the worker is killed with SIGKILL (no worker_exit, no
flush); with the journal the new workers replay them, each exactly once.
Below, the journal itself against a real Postgres: a torn record, replays
that meet stored rows, space released, a disk that refuses the write.
"""

from __future__ import annotations

import os
import re
import resource
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import psutil
import psycopg2
import pytest
import requests

from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch
from potability.serve.inference_log import InferenceLog, LogUnavailable
from potability.serve.journal import Journal, JournalUnavailable
from potability.serve.spool import Spool, decode_lines, encode
from tests.support.server import SAMPLE, Server, hammer, stored_ids, wait_for

DEAD_PID = 999_999_999  # above any pid_max: never alive
HELD = {"POTABILITY_LOG_FLUSH_SECONDS": "600", "POTABILITY_LOG_BATCH_ROWS": "100000"}


def copies(url: str) -> dict[str, int]:
    """How many times each inference id is stored."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute("SELECT inference_id::text, count(*) FROM water.water_inferences GROUP BY 1")
        return dict(cur.fetchall())


def workers(server: Server) -> list[psutil.Process]:
    """The gunicorn workers (the master's children but the page renderer)."""
    found = []
    for child in psutil.Process(server.proc.pid).children():
        try:
            if (
                "potability.serve.renderer" not in child.cmdline()
                and child.status() != psutil.STATUS_ZOMBIE
            ):
                found.append(child)
        except psutil.Error:  # gone meanwhile (a killed worker being reaped)
            continue
    return found


def gone(pid: int) -> bool:
    """Dead and reaped by the master (a zombie still answers kill(pid, 0))."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def kill_workers(server: Server) -> set[int]:
    """SIGKILL every worker (no worker_exit, no flush); the master starts new ones."""
    killed = {worker.pid for worker in workers(server)}
    assert len(killed) == 2
    for pid in killed:
        os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: all(gone(pid) for pid in killed))
    return killed


@pytest.mark.slow
def test_sigkilled_workers_lose_no_answered_inference(mart, champion, tmp_path):
    """Rows held in memory when both workers die by SIGKILL are stored exactly once."""
    token = mart.create_token("kill-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion, **HELD)
    try:
        answered, failures = hammer(server.base, token, 300, 4)
        batch = requests.post(
            server.base + "/v1/predict",
            json={"samples": [SAMPLE] * 100},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        answered += [p["inference_id"] for p in batch.json()["predictions"]]
        assert len(answered) == 400 and not failures
        assert stored_ids(mart.url) == []  # every answer is still in a worker's memory
        killed = kill_workers(server)
        assert wait_for(lambda: set(p.pid for p in workers(server)) - killed, timeout=60)
        assert wait_for(lambda: set(answered) <= set(stored_ids(mart.url)), timeout=60), (
            f"{len(set(answered) - set(stored_ids(mart.url)))} answered inferences lost"
        )
        stored = copies(mart.url)
        assert set(stored) == set(answered) and set(stored.values()) == {1}
        print(f"\nSIGKILL: {len(answered)} answered, {len(stored)} stored once")
    finally:
        server.stop()
    # nothing is left to replay: the journals were moved to the spool and the spool drained
    assert not list((tmp_path / "spool").glob("spool-*"))
    assert not (tmp_path / "spool" / "quarantine").exists()


def journal_bytes(base: str) -> float:
    """The journal's size as /metrics reports it."""
    text = requests.get(base + "/metrics", timeout=10).text
    [value] = re.findall(r"^potability_inference_journal_bytes(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(value)


def on_disk(directory) -> int:
    return sum(path.stat().st_size for path in directory.glob("journal-*"))


@pytest.mark.slow
def test_readyz_follows_the_journal_out_and_back_unattended(mart, champion, tmp_path):
    """A worker whose journal cannot be written leaves readiness, naming it, and comes back alone.

    The journal's directory is moved aside and a regular file put in its place (root
    ignores chmod): /readyz says 503 with ``journal_ok`` false, and requests are refused,
    not written into the moved file no new worker would find. The file removed, /readyz
    is 200 with no restart and requests are journalled again. /metrics has the bytes on disk.
    """
    token = mart.create_token("journal-ready", "sensor")
    auth = {"Authorization": f"Bearer {token}"}
    server = Server(tmp_path, mart.url, champion, workers=1, **HELD)
    directory = tmp_path / "spool" / "journal"

    def predict() -> requests.Response:
        return requests.post(server.base + "/v1/predict", json=SAMPLE, headers=auth, timeout=10)

    try:
        assert [predict().status_code for _ in range(3)] == [200] * 3
        before = journal_bytes(server.base), on_disk(directory)
        directory.rename(tmp_path / "journal-aside")
        directory.write_text("a file where the journal's directory was\n")
        broken = requests.get(server.base + "/readyz", timeout=10)
        refused = predict()
        directory.unlink()
        healed = requests.get(server.base + "/readyz", timeout=10)
        answered = predict()
        after = journal_bytes(server.base), on_disk(directory)
    finally:
        server.stop()
    assert before[0] == before[1] > 0  # three requests held in the journal (flush 600 s)
    assert broken.status_code == 503 and broken.json()["ready"] is False
    assert broken.json()["journal_ok"] is False and str(directory) in broken.json()["journal_error"]
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "log_unavailable"
    assert healed.status_code == 200 and healed.json()["journal_ok"] is True
    assert healed.json()["journal_error"] is None
    assert answered.status_code == 200 and after[0] == after[1] > 0


def predict_once(base: str, token: str) -> str | None:
    """One single-sample predict: its inference id, or None when the kill cut it off."""
    try:
        r = requests.post(
            base + "/v1/predict",
            json=SAMPLE,
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        return r.json()["inference_id"] if r.status_code == 200 else None
    except requests.RequestException:  # refused, reset, or the answer's body cut short
        return None


@pytest.mark.slow
def test_sigkill_mid_load_with_the_default_flush(mart, champion, tmp_path):
    """The probe of the defect: one worker killed while four clients post; answered = stored."""
    token = mart.create_token("probe-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion)
    try:
        with ThreadPoolExecutor(4) as pool:
            first = list(pool.map(lambda _: predict_once(server.base, token), range(300)))
            victim = workers(server)[0]
            later = [pool.submit(predict_once, server.base, token) for _ in range(300)]
            time.sleep(0.05)  # mid-load: requests in flight on both workers
            victim.send_signal(signal.SIGKILL)
            outcomes = first + [f.result() for f in later]
        answered = [i for i in outcomes if i is not None]
        assert len(answered) > 300
        wait_for(lambda: set(answered) <= set(stored_ids(mart.url)), timeout=60)
    finally:
        server.stop()
    stored = copies(mart.url)
    kept = set(answered) & set(stored)
    print(
        f"\nSIGKILL mid-load (flush 0.2 s): {len(answered)} answered, {len(kept)} of them stored "
        f"({len(outcomes) - len(answered)} requests cut off by the kill)"
    )
    assert len(kept) == len(answered), f"{len(answered) - len(kept)} answered inferences lost"
    assert set(stored.values()) == {1}


@pytest.mark.slow
def test_a_server_killed_whole_replays_at_its_next_start(mart, champion, tmp_path):
    """Master and workers killed at once: the restarted server stores the journals first thing."""
    token = mart.create_token("restart-sensor", "sensor")
    server = Server(tmp_path, mart.url, champion, **HELD)
    try:
        answered, _ = hammer(server.base, token, 200, 4)
    finally:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(timeout=10)
    assert stored_ids(mart.url) == [] and len(answered) == 200
    server = Server(tmp_path, mart.url, champion, **HELD)
    try:
        assert wait_for(lambda: len(stored_ids(mart.url)) >= 200, timeout=30)
        stored = copies(mart.url)
        assert set(stored) == set(answered) and set(stored.values()) == {1}
    finally:
        server.stop()


# the journal itself, against a real Postgres


def request(n: int, missing: bool = False) -> AnsweredBatch:
    features = np.tile(np.linspace(0.5, 9.5, 9) * 123.456789, (n, 1))
    if missing:
        features[0, 4] = np.nan  # a missing measurement: NULL in the table
    return AnsweredBatch(
        uuid7_batch(n), datetime.now(UTC), "sensor-1", "v1", features, np.linspace(0.1, 0.9, n), 0.4
    )


def as_dead(journal: Journal) -> None:
    """Leave the journal as a SIGKILL would: its files, under a pid no process has."""
    for path in journal.directory.glob("journal-*"):
        pid, rest = path.name.removeprefix("journal-").split("-", 1)
        path.rename(path.with_name(f"journal-{DEAD_PID}-{rest}"))


def test_a_torn_record_keeps_the_good_ones_and_replays_never_double(mart, store, tmp_path):
    spool = Spool(tmp_path)
    dead = Journal(spool)
    requests_ = [request(1), request(3, missing=True), request(1)]
    for r in requests_:
        dead.append(r)
    [segment] = dead.directory.glob("journal-*")
    with open(segment, "ab") as fh:
        fh.write(encode(request(2))[:-40])  # killed mid-write: that request was never answered
    store.write([requests_[0]], fresh=True)  # the writer stored this one before the kill
    as_dead(dead)

    live = Journal(spool)
    assert live.adopt_orphans() == 1 and not list(live.directory.iterdir())
    assert spool.depth() >= 5
    written, torn = spool.replay(store.write)
    assert (written, torn) == (4, 1)  # the one already stored is not stored again
    stored = copies(mart.url)
    assert set(stored) == {i for r in requests_ for i in r.inference_ids}
    assert set(stored.values()) == {1}
    missing = mart.inferences().set_index("inference_id").loc[requests_[1].inference_ids[0]]
    assert missing.isna().sum() == 1  # the NaN came back as NULL, not as a number
    # the file is kept in quarantine, never deleted: its good records and the torn one
    [kept] = spool.quarantine_dir.iterdir()
    records, bad = decode_lines(kept.read_bytes())
    assert len(records) == 3 and bad == 1
    kept.rename(tmp_path / "spool-1-1.jsonl")  # replayed again by hand: nothing doubles
    assert spool.replay(store.write) == (0, 1)
    assert set(copies(mart.url).values()) == {1}


def test_a_seal_cut_short_leaves_the_whole_segment_to_replay(tmp_path):
    """A worker killed while rewriting a segment's tail (``.tail``, before its rename): the segment
    itself is whole, so it is replayed and the partial copy removed, nothing quarantined."""
    spool = Spool(tmp_path)
    dead = Journal(spool)
    dead.append(request(2))
    [segment] = dead.directory.glob("journal-*")
    partial = segment.with_name(segment.name + ".tail")
    partial.write_bytes(segment.read_bytes()[:10])  # the rewrite had begun when it died
    as_dead(dead)
    live = Journal(spool)
    assert live.adopt_orphans() == 1
    assert not list(live.directory.iterdir())  # the segment adopted, the partial copy gone
    assert spool.depth() == 2
    assert not spool.quarantine_dir.exists() or not list(spool.quarantine_dir.iterdir())


def test_a_live_workers_journal_is_left_alone(tmp_path):
    spool = Spool(tmp_path)
    mine, other = Journal(spool), Journal(spool)
    mine.append(request(1))
    assert other.adopt_orphans() == 0  # same process, still writing it
    (mine.directory / f"journal-{os.getppid()}-1.jsonl").write_bytes(encode(request(1)))
    assert other.adopt_orphans() == 0 and spool.files() == []  # a live process's journal
    mine.close()  # closed with a request not yet stored: now it is an orphan
    assert other.adopt_orphans() == 1 and len(spool.files()) == 1


def test_stored_requests_release_the_journal_and_it_stays_bounded(mart, store, tmp_path):
    spool = Spool(tmp_path)
    journal = Journal(spool, segment_bytes=2_000)
    log = InferenceLog(store, journal, 60.0, 50, 60.0)
    for _ in range(40):  # about 13 kB of records: several segments
        log.submit(request(1))
    files = list(journal.directory.iterdir())
    assert len(files) > 3 and journal.pending == 40
    log.submit(request(1))
    log.flush()
    [left] = journal.directory.iterdir()  # older segments deleted, the open one emptied
    assert left.stat().st_size == 0 and journal.pending == 0
    log.submit(request(2))
    assert journal.pending == 1 and left.stat().st_size > 0
    log.close()  # stored, then the journal removed
    assert list(journal.directory.iterdir()) == [] and len(mart.inferences()) == 43


def test_a_request_the_disk_refuses_is_not_answered(store, tmp_path):
    """A write the kernel refuses (here a file-size limit, as a full disk would) is a 503."""
    spool = Spool(tmp_path)
    journal = Journal(spool)
    log = InferenceLog(store, journal, 60.0, 500, 60.0)
    log.submit(request(1))
    [segment] = journal.directory.iterdir()
    good = segment.stat().st_size
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (good + 100, limit[1]))
    try:
        with pytest.raises(LogUnavailable, match="journal"):
            log.submit(request(20))  # 100 bytes fit: a partial write, then the error
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    assert log.queued == 1 and segment.stat().st_size == good  # the partial record cut off
    log.submit(request(2))
    records, bad = decode_lines(segment.read_bytes())
    assert len(records) == 2 and bad == 0


def test_a_journal_whose_directory_is_replaced_is_not_ready_until_it_is_back(tmp_path):
    """``check`` (readiness) names the journal, and the open file moved aside is not written on."""
    journal = Journal(Spool(tmp_path))
    journal.append(request(1))
    assert journal.check() is None
    aside = tmp_path / "journal-aside"
    journal.directory.rename(aside)
    journal.directory.write_text("not a directory")
    assert str(journal.directory) in journal.check()
    with pytest.raises(JournalUnavailable, match="journal"):
        journal.append(request(1))  # not into the file moved aside: no new worker would adopt it
    [moved] = aside.iterdir()
    assert len(decode_lines(moved.read_bytes())[0]) == 1
    journal.directory.unlink()  # gone altogether: made again
    assert journal.check() is None and journal.directory.is_dir()
    journal.append(request(1))
    [segment] = journal.directory.iterdir()  # the probe's file is not left behind
    assert journal.size() == segment.stat().st_size > 0 and journal.pending == 2
    journal.release(2)
    assert journal.pending == 0 and journal.size() == 0


def test_with_postgres_down_the_journal_itself_waits_and_is_replayed_once(mart, store, tmp_path):
    """No second copy: the segments a request was journalled in are what the spool replays."""
    from potability.errors import DatabaseUnavailable

    class Flaky:
        down = True

        def write(self, batches, fresh=False):
            if self.down:
                raise DatabaseUnavailable("lost the connection to Postgres: test")
            return store.write(batches, fresh=fresh)

    flaky = Flaky()
    spool = Spool(tmp_path)
    journal = Journal(spool)
    log = InferenceLog(flaky, journal, 60.0, 50, 0.0)
    sent = [request(3), request(1, missing=True), request(2)]
    for r in sent[:2]:
        log.submit(r)
    [segment] = journal.directory.iterdir()
    inode = segment.stat().st_ino
    store.write([sent[0]], fresh=True)  # stored before the outage was noticed (a lost commit reply)
    log.flush()
    assert not log.db_ok and log.queued == 0 and journal.pending == 0
    [spooled] = spool.files()
    assert spooled.stat().st_ino == inode  # the very file, renamed
    log.submit(sent[2])  # journalled in a new segment while Postgres is still down
    flaky.down = False
    log.flush()
    log.flush()
    assert log.db_ok and log.spooled == 0 and spool.files() == []
    stored = copies(mart.url)
    assert set(stored) == {i for r in sent for i in r.inference_ids} and set(stored.values()) == {1}
    log.close()
    assert list(journal.directory.iterdir()) == []
