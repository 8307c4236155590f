import os
from datetime import UTC, datetime

import numpy as np
import pytest

from potability.errors import DatabaseUnavailable
from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch
from potability.serve.spool import Spool, decode_lines, encode
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
