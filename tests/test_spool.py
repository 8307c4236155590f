import os
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psycopg2
import pytest

from potability.errors import DatabaseUnavailable
from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch, InferenceStore
from potability.serve.spool import CONFLICTS, Spool, decode_lines, encode, rows_in
from tests.support.database import query, reading_row
from tests.support.database import request_row as row


def spooled(spool, requests):
    """A spool file as the log makes one: a journal segment, sealed while Postgres is down."""
    from potability.serve.journal import Journal

    journal, before = Journal(spool), set(spool.files())
    for r in requests:
        journal.append(r)
    assert journal.seal() == len(requests)
    [path] = set(spool.files()) - before
    return path


def test_torn_last_record_is_skipped_and_the_rest_kept():
    rows = [row(i) for i in range(3)]
    blob = b"".join(encode(r) for r in rows)
    kept, bad = decode_lines(blob[:-10])  # cut mid-record, as a crash during write would
    assert [r.inference_ids for r in kept] == [r.inference_ids for r in rows[:2]] and bad == 1


def test_corrupt_record_in_the_middle_is_skipped():
    lines = [encode(row(i)) for i in range(3)]
    lines[1] = lines[1].replace(b'"s"', b'"x"')  # a flipped byte: checksum no longer matches
    kept, bad = decode_lines(b"".join(lines))
    assert len(kept) == 2 and bad == 1


def test_replay_writes_to_postgres_once_and_removes_the_file(mart, store, tmp_path):
    spool = Spool(tmp_path)
    rows = [row(i) for i in range(5)]
    path = spooled(spool, rows)
    with open(path, "ab") as fh:
        fh.write(encode(row(9))[:20])  # a torn tail
    assert spool.depth() == 5
    written, skipped = spool.replay(store.write)
    assert (written, skipped) == (5, 1) and spool.files() == []
    spooled(spool, rows)  # the same rows again (a replay after a crash): nothing doubles
    assert spool.replay(store.write) == (0, 0)
    assert len(mart.inferences()) == 5


def test_failed_replay_keeps_the_file_and_orphans_are_reclaimed(tmp_path):
    spool = Spool(tmp_path)
    spooled(spool, [row()])

    def down(rows):
        raise DatabaseUnavailable("db down")

    with pytest.raises(DatabaseUnavailable):
        spool.replay(down)
    assert len(spool.files()) == 1 and not spool.quarantine_dir.exists()
    orphan = spool.files()[0]
    # a dead worker's claim
    os.rename(orphan, orphan.with_name(orphan.name + ".replaying-999999999"))
    assert spool.files() == []
    assert spool.replay(lambda rows: sum(map(len, rows))) == (1, 0)


def test_a_file_that_cannot_be_replayed_is_quarantined_and_the_rest_go_on(mart, store, tmp_path):
    spool = Spool(tmp_path)
    first = [row(i) for i in range(3)]
    spooled(spool, first)
    (tmp_path / "spool-not-a-number.jsonl").write_bytes(encode(row()))  # a name that does not parse
    (tmp_path / "spool-1-1.jsonl.replaying-x").write_bytes(b"")  # a claim whose pid does not parse
    # a NUL in a text column: Postgres refuses the file's rows
    spooled(spool, [row(sensor="s\x00")])
    last = [row(i) for i in range(4)]
    spooled(spool, last)
    quarantined = []
    spool._on_quarantine = lambda path, reason: quarantined.append(reason)
    written, _ = spool.replay(store.write)
    assert written == 7 and spool.files() == []
    assert spool.quarantined == 3 and len(quarantined) == 3
    assert len(list(spool.quarantine_dir.iterdir())) == 3
    stored = set(mart.inferences()["inference_id"])
    assert stored == {i for r in first + last for i in r.inference_ids}


def test_the_disk_cap_refuses_requests_and_replay_goes_in_chunks(tmp_path):
    from potability.serve.journal import Journal, JournalFull

    rows = [row(i) for i in range(10)]
    size = len(b"".join(encode(r) for r in rows))
    spool = Spool(tmp_path, max_bytes=size * 2)
    spooled(spool, rows)
    spooled(spool, rows)
    assert spool.room() == 0
    journal = Journal(spool)
    with pytest.raises(JournalFull, match="cap"):
        journal.append(rows[0])
    assert journal.size() == 0  # nothing written past the cap
    chunks = []
    assert spool.replay(lambda part: chunks.append(len(part)) or len(part), chunk_rows=4) == (20, 0)
    assert chunks == [4, 4, 2, 4, 4, 2] and spool.room() == size * 2
    journal.refresh_room()
    journal.append(rows[0])  # room again once the spool drained


def test_a_request_record_comes_back_exact_and_is_replayed_whole(mart, store, tmp_path):
    """A whole request beside one-row ones: exact values, NULLs, one depth, never split."""
    n = 7
    features = np.tile(np.linspace(0.5, 9.5, 9) * 123.456789, (n, 1))
    features[2, 4] = np.nan  # a missing measurement
    request = AnsweredBatch(
        uuid7_batch(n), datetime.now(UTC), "s", "v", features, np.linspace(0.01, 0.99, n), 0.4
    )
    [back], bad = decode_lines(encode(request))
    assert bad == 0 and back.inference_ids == request.inference_ids
    assert back.received_at == request.received_at and back.times() == request.times()
    np.testing.assert_array_equal(back.features, request.features)  # NaN where NaN, bit for bit
    np.testing.assert_array_equal(back.probabilities, request.probabilities)
    spool = Spool(tmp_path)
    spooled(spool, [row(0), request, row(1)])
    assert spool.depth() == n + 2
    chunks = []

    def write(chunk):
        chunks.append([len(r) for r in chunk])
        return store.write(chunk)

    assert spool.replay(write, chunk_rows=3) == (n + 2, 0)
    assert chunks == [[1], [7], [1]]  # a request is never split across chunks
    stored = mart.inferences().set_index("inference_id")
    assert stored.loc[request.inference_ids, "probability"].tolist() == pytest.approx(
        request.probabilities.tolist(), abs=0
    )
    assert stored.loc[request.inference_ids[2]].isna().sum() == 1


def a_request(n: int, ph: list[float]) -> AnsweredBatch:
    """One request of ``n`` rows with these pH values (everything else missing)."""
    features = np.full((n, 9), np.nan)
    features[:, 0] = ph
    return AnsweredBatch(
        uuid7_batch(n), datetime.now(UTC), "s", "v", features, np.full(n, 0.5), 0.4
    )


def refusing_url(url: str, refusal: str) -> str:
    """The log's database as a standby (read only) or as a role that may read but not write it."""
    if refusal == "read_only":  # what a standby promoted-away-from says to every write
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}options=-c%20default_transaction_read_only%3Don"
    query(
        url,
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pytest_reader') THEN "
        "CREATE ROLE pytest_reader LOGIN; END IF; END $$; "
        "GRANT USAGE ON SCHEMA water TO pytest_reader; "
        "GRANT SELECT ON ALL TABLES IN SCHEMA water TO pytest_reader",
    )
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc="pytest_reader@" + parts.netloc.rpartition("@")[2]))


@pytest.mark.parametrize(
    ("refusal", "says"), [("read_only", "read-only transaction"), ("no_privilege", "permission")]
)
def test_an_error_that_is_not_about_the_rows_keeps_the_file(mart, tmp_path, refusal, says):
    spool = Spool(tmp_path)
    path = spooled(spool, [row(0), row(1)])
    refusing = InferenceStore(url=refusing_url(mart.url, refusal))
    try:
        with pytest.raises(psycopg2.Error, match=says):
            spool.replay(refusing.write)
    finally:
        refusing.close()
    assert spool.files() == [path] and not spool.quarantine_dir.exists()
    assert spool.quarantined == 0
    store = InferenceStore(url=mart.url)
    try:
        assert spool.replay(store.write) == (2, 0)  # the cause gone: all of it stored
    finally:
        store.close()


def test_rows_refused_as_data_are_quarantined_one_by_one_counted_and_requeued(
    mart, store, tmp_path
):
    """A constraint refuses one row of a request: the others are stored, that one set aside."""
    spool = Spool(tmp_path)
    good, mixed = a_request(2, [7.0, 7.5]), a_request(3, [6.0, 13.5, 8.0])
    spooled(spool, [good, mixed])
    query(
        mart.url,
        "ALTER TABLE water.water_inferences ADD CONSTRAINT pytest_ph CHECK (ph < 13)",
    )
    try:
        reasons = []
        spool._on_quarantine = lambda path, reason: reasons.append(reason)
        assert spool.replay(store.write, chunk_rows=10) == (4, 0)
        assert spool.files() == [] and spool.quarantined == 1 and "CheckViolation" in reasons[0]
        [kept] = spool.quarantine_dir.iterdir()
        assert rows_in(kept.read_bytes()) == 1
        assert spool.used() == kept.stat().st_size  # quarantine counts against the disk cap
        assert sorted(mart.inferences()["ph"]) == [6.0, 7.0, 7.5, 8.0]
        assert spool.requeue() == 1 and len(spool.files()) == 1
        assert spool.replay(store.write) == (0, 0)  # refused again: back to quarantine
        assert len(list(spool.quarantine_dir.iterdir())) == 1 and spool.files() == []
    finally:
        query(mart.url, "ALTER TABLE water.water_inferences DROP CONSTRAINT IF EXISTS pytest_ph")
    assert spool.requeue() == 1  # the cause fixed: requeued and stored
    assert spool.replay(store.write) == (1, 0)
    assert sorted(mart.inferences()["ph"]) == [6.0, 7.0, 7.5, 8.0, 13.5]


def test_a_replayed_row_whose_reading_is_logged_with_other_measurements_is_kept_as_a_conflict(
    mart, store, tmp_path, caplog
):
    """Two answers for one reading: the first stands, the second is quarantined, never dropped."""
    spool = Spool(tmp_path)
    store.write([reading_row("a", 7.0)])  # answered and stored before the outage
    spooled(
        spool,
        [
            reading_row("a", 6.0),  # answered again while Postgres was down: other measurements
            reading_row("b", 7.0),
            reading_row("b", 8.0),  # twice in the spool, the second changed
            reading_row("c", 7.0),
            reading_row("c", 7.0),  # a resend: the same reading, stored once
        ],
    )
    with caplog.at_level("ERROR", logger="potability.serve.spool"):
        assert spool.replay(store.write) == (2, 0)
    assert spool.files() == [] and spool.conflicts == 2 and spool.quarantined == 1
    [kept] = spool.quarantine_dir.iterdir()
    assert CONFLICTS in kept.name
    records, _ = decode_lines(kept.read_bytes())
    assert [r.features[0, 0] for r in records] == [6.0, 8.0]
    stored = mart.inferences().set_index("inference_id")["ph"]
    assert stored.to_dict() == {reading_row(r, 0).inference_ids[0]: 7.0 for r in "abc"}
    said = caplog.text
    assert "other measurements" in said and "sensor 's'" in said
    assert all(reading_row(r, 0).inference_ids[0] in said for r in "ab")
    assert spool.requeue() == 1 and spool.replay(store.write) == (0, 0)  # refused again, kept
    assert spool.conflicts == 4 and len(list(spool.quarantine_dir.iterdir())) == 1
    assert mart.inferences()["ph"].tolist() == [7.0, 7.0, 7.0]
