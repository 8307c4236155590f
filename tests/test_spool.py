import os
from datetime import UTC, datetime

import numpy as np
import pytest

from potability.errors import DatabaseUnavailable
from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch
from potability.serve.spool import Spool, SpoolFull, decode_lines, encode
from tests.support.database import logged_row as row


def test_torn_last_record_is_skipped_and_the_rest_kept():
    rows = [row(i) for i in range(3)]
    blob = b"".join(encode(r) for r in rows)
    kept, bad = decode_lines(blob[:-10])  # cut mid-record, as a crash during write would
    assert [r["inference_id"] for r in kept] == [r["inference_id"] for r in rows[:2]] and bad == 1


def test_corrupt_record_in_the_middle_is_skipped():
    lines = [encode(row(i)) for i in range(3)]
    lines[1] = lines[1].replace(b'"s"', b'"x"')  # a flipped byte: checksum no longer matches
    kept, bad = decode_lines(b"".join(lines))
    assert len(kept) == 2 and bad == 1


def test_replay_writes_to_postgres_once_and_removes_the_file(mart, store, tmp_path):
    spool = Spool(tmp_path)
    rows = [row(i) for i in range(5)]
    path = spool.append(rows)
    with open(path, "ab") as fh:
        fh.write(encode(row(9))[:20])  # a torn tail
    assert spool.depth() == 5
    written, skipped = spool.replay(store.write)
    assert (written, skipped) == (5, 1) and spool.files() == []
    spool.append(rows)  # the same rows again (a replay after a crash): nothing doubles
    assert spool.replay(store.write) == (0, 0)
    assert len(mart.inferences()) == 5


def test_failed_replay_keeps_the_file_and_orphans_are_reclaimed(tmp_path):
    spool = Spool(tmp_path)
    spool.append([row()])

    def down(rows):
        raise DatabaseUnavailable("db down")

    with pytest.raises(DatabaseUnavailable):
        spool.replay(down)
    assert len(spool.files()) == 1 and not spool.quarantine_dir.exists()
    orphan = spool.files()[0]
    os.rename(
        orphan, orphan.with_name(orphan.name + ".replaying-999999999")
    )  # a dead worker's claim
    assert spool.files() == []
    assert spool.replay(lambda rows: len(rows)) == (1, 0)


def test_a_file_that_cannot_be_replayed_is_quarantined_and_the_rest_go_on(mart, store, tmp_path):
    spool = Spool(tmp_path)
    first = [row(i) for i in range(3)]
    spool.append(first)
    (tmp_path / "spool-not-a-number.jsonl").write_bytes(encode(row()))  # a name that does not parse
    (tmp_path / "spool-1-1.jsonl.replaying-x").write_bytes(b"")  # a claim whose pid does not parse
    refused = row()
    refused["probability"] = None  # NOT NULL in the table: Postgres refuses the file's rows
    spool.append([refused])
    last = [row(i) for i in range(4)]
    spool.append(last)
    quarantined = []
    spool._on_quarantine = lambda path, reason: quarantined.append(reason)
    written, _ = spool.replay(store.write)
    assert written == 7 and spool.files() == []
    assert spool.quarantined == 3 and len(quarantined) == 3
    assert len(list(spool.quarantine_dir.iterdir())) == 3
    assert set(mart.inferences()["inference_id"]) == {r["inference_id"] for r in first + last}


def test_the_disk_cap_refuses_rows_and_replay_goes_in_chunks(tmp_path):
    rows = [row(i) for i in range(10)]
    size = len(b"".join(encode(r) for r in rows))
    spool = Spool(tmp_path, max_bytes=size * 2)
    spool.append(rows)
    spool.append(rows)
    assert spool.room() == 0
    with pytest.raises(SpoolFull, match="full"):
        spool.append(rows[:1])
    chunks = []
    assert spool.replay(lambda part: chunks.append(len(part)) or len(part), chunk_rows=4) == (20, 0)
    assert chunks == [4, 4, 2, 4, 4, 2] and spool.room() == size * 2


def test_a_request_record_comes_back_exact_and_is_replayed_whole(mart, store, tmp_path):
    """A whole request (what a journal holds) beside row records: exact values, NULLs, one depth."""
    n = 7
    features = np.tile(np.linspace(0.5, 9.5, 9) * 123.456789, (n, 1))
    features[2, 4] = np.nan  # a missing measurement
    request = AnsweredBatch(uuid7_batch(n), datetime.now(UTC), "s", "v", features,
                            np.linspace(0.01, 0.99, n), 0.4)  # fmt: skip
    [back], bad = decode_lines(encode(request))
    assert bad == 0 and back.inference_ids == request.inference_ids
    assert back.received_at == request.received_at and back.times() == request.times()
    np.testing.assert_array_equal(back.features, request.features)  # NaN where NaN, bit for bit
    np.testing.assert_array_equal(back.probabilities, request.probabilities)
    spool = Spool(tmp_path)
    spool.append([row(0), request, row(1)])
    assert spool.depth() == n + 2
    chunks = []

    def write(chunk):
        chunks.append([len(r) if isinstance(r, AnsweredBatch) else 1 for r in chunk])
        return store.write(chunk)

    assert spool.replay(write, chunk_rows=3) == (n + 2, 0)
    assert chunks == [[1], [7], [1]]  # a request is never split across chunks
    stored = mart.inferences().set_index("inference_id")
    assert stored.loc[request.inference_ids, "probability"].tolist() == pytest.approx(
        request.probabilities.tolist(), abs=0
    )
    assert stored.loc[request.inference_ids[2]].isna().sum() == 1
