import os
import uuid
from datetime import UTC, datetime

from serve.spool import Spool, decode_lines, encode


def row(i=0):
    return {"inference_id": str(uuid.uuid4()), "received_at": datetime.now(UTC).isoformat(), "sensor_id": "s",
            "model_version": "v", "ph": 7.0 + i / 100, "hardness": None, "solids": None, "chloramines": None,
            "sulfate": None, "conductivity": None, "organic_carbon": None, "trihalomethanes": None,
            "turbidity": None, "probability": 0.5, "potable": True, "threshold": 0.4}  # fmt: skip


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


def test_replay_writes_to_postgres_once_and_removes_the_file(mart, tmp_path):
    spool = Spool(tmp_path)
    rows = [row(i) for i in range(5)]
    path = spool.append(rows)
    with open(path, "ab") as fh:
        fh.write(encode(row(9))[:20])  # a torn tail
    assert spool.depth() == 5
    written, skipped = spool.replay(mart.write_inferences)
    assert (written, skipped) == (5, 1) and spool.files() == []
    spool.append(rows)  # the same rows again (a replay after a crash): nothing doubles
    assert spool.replay(mart.write_inferences) == (0, 0)
    assert len(mart.inferences()) == 5


def test_failed_replay_keeps_the_file_and_orphans_are_reclaimed(tmp_path):
    spool = Spool(tmp_path)
    spool.append([row()])

    def down(rows):
        raise ConnectionError("db down")

    try:
        spool.replay(down)
    except ConnectionError:
        pass
    assert len(spool.files()) == 1
    orphan = spool.files()[0]
    os.rename(
        orphan, orphan.with_name(orphan.name + ".replaying-999999999")
    )  # a dead worker's claim
    assert spool.files() == []
    assert spool.replay(lambda rows: len(rows)) == (1, 0)
