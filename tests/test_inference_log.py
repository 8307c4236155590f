"""The inference log's promises without a server: a bounded queue, no answer the disk cap has no room for."""

from datetime import UTC, datetime

import numpy as np
import pytest

from potability.errors import DatabaseUnavailable
from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch
from potability.serve.inference_log import InferenceLog, LogUnavailable, ReadingConflict
from potability.serve.journal import Journal
from potability.serve.spool import CONFLICTS, Spool, encode, rows_in
from tests.support.database import reading_row


class DownMart:
    """A store whose Postgres is down."""

    def write(self, rows, fresh=False):
        raise DatabaseUnavailable("lost the connection to Postgres: test")


def rows(n):
    """One request's n answers, every measurement present (the spool's largest records)."""
    features = np.tile(np.linspace(0.5, 9.5, 9) * 123.456789, (n, 1))
    return AnsweredBatch(
        uuid7_batch(n), datetime.now(UTC), "sensor-1", "v1", features, np.full(n, 0.123456789), 0.4
    )


def test_the_queue_is_bounded(tmp_path):
    log = InferenceLog(DownMart(), Journal(Spool(tmp_path)), 1.0, 100, 1.0, max_queue_rows=10)
    log.submit(rows(10))
    with pytest.raises(LogUnavailable, match="full"):
        log.submit(rows(1))
    assert log.queued == 10 and not log.accepting


def test_with_postgres_down_only_what_the_disk_cap_has_room_for_is_answered(tmp_path):
    record = len(encode(rows(1)))
    spool = Spool(tmp_path, max_bytes=record * 30)
    journal = Journal(spool)
    log = InferenceLog(DownMart(), journal, 1.0, 100, 60.0, max_queue_rows=1000)
    for _ in range(20):
        log.submit(rows(1))
    log.flush()  # Postgres refuses: the journal is sealed into the spool, and the log knows it is down
    assert not log.db_ok and log.spooled == 20 and log.queued == 0 and journal.size() == 0
    [sealed] = spool.files()  # the journal's own file, renamed: no copy
    assert sealed.stat().st_size == record * 20
    with pytest.raises(LogUnavailable, match="cap"):
        for _ in range(20):
            log.submit(rows(1))
    assert log.queued == 10 and log.accepting is False  # these 10 fitted; nothing past the cap
    log.flush()
    assert log.spooled == 30 and spool.used() <= spool.max_bytes and log.queued == 0
    with pytest.raises(LogUnavailable, match="cap"):
        log.submit(rows(1))


def test_a_reading_answered_and_not_yet_stored_refuses_other_measurements(tmp_path):
    """Queued, then spooled while Postgres is down: the same reading again is answered, a changed one not."""
    log = InferenceLog(DownMart(), Journal(Spool(tmp_path)), 1.0, 100, 60.0)
    log.submit(reading_row("r-1", 7.0))
    with pytest.raises(ReadingConflict) as changed:
        log.submit(reading_row("r-1", 6.0))
    assert changed.value.index == 0 and log.queued == 1  # refused before it was journalled
    log.submit(reading_row("r-1", 7.0))  # a resend: the same measurements
    log.flush()  # Postgres refuses: sealed into the spool, still remembered
    assert log.spooled == 2 and log.queued == 0
    with pytest.raises(ReadingConflict):
        log.submit(reading_row("r-1", 6.5))
    log.submit(reading_row("r-2", 6.5))  # another reading


def test_two_workers_answering_one_reading_differently_keep_the_second_in_quarantine(
    mart, store, tmp_path
):
    """Each worker checks only what it answered: the second answer, met at store time, is set aside."""
    spool = Spool(tmp_path)
    first, second = (InferenceLog(store, Journal(spool), 1.0, 100, 0.0) for _ in range(2))
    first.submit(reading_row("r-1", 7.0))
    second.submit(reading_row("r-1", 6.0))
    first.flush()
    second.flush()  # Postgres has the first: the second goes by the spool...
    assert second.db_ok and second.spooled == 1
    second.flush()  # ...whose replay keeps it in quarantine
    assert second.spooled == 0 and spool.conflicts == 1
    [kept] = spool.quarantine_dir.iterdir()
    assert CONFLICTS in kept.name and rows_in(kept.read_bytes()) == 1
    assert mart.inferences()["ph"].tolist() == [7.0]
