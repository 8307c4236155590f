"""The inference log's storage: what a sensor was told is what Postgres keeps, once."""

import math
import threading
import uuid
from dataclasses import replace
from datetime import UTC, datetime

import numpy as np
import pytest

from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch, ConflictingRows, encode
from potability.schema import FEATURE_COLUMNS, FEATURE_NAMES


def answered(n: int, sensor: str = "plant-7", missing_every: int = 0) -> AnsweredBatch:
    rng = np.random.default_rng(n)
    features = rng.uniform(0.1, 14.0, size=(n, len(FEATURE_NAMES))) * rng.uniform(1, 500, size=9)
    if missing_every:
        features[::missing_every, 4] = np.nan  # Sulfate missing, as in the data set
        features[1::missing_every, [0, 8]] = np.nan
    received = datetime(2026, 11, 30, 14, 30, 1, 123_456, tzinfo=UTC)
    return AnsweredBatch(
        uuid7_batch(n, received),
        received,
        sensor,
        "nb-2026.11",
        features,
        rng.uniform(0, 1, size=n),
        0.37,
    )


def stored(mart) -> dict:
    frame = mart.inferences()
    return {row["inference_id"]: row for _, row in frame.iterrows()}


# every measurement present (one vectorised pass) or some NULL (row by row)
@pytest.mark.parametrize("missing_every", [0, 3])
def test_a_batch_is_stored_exactly_as_answered(store, mart, missing_every):
    batch = answered(250, missing_every=missing_every)
    assert store.write([batch], fresh=True) == 250
    assert_stored_as_answered(mart, batch)


def assert_stored_as_answered(mart, batch: AnsweredBatch) -> None:
    rows = stored(mart)
    assert set(batch.inference_ids) <= set(rows)
    for i, inference_id in enumerate(batch.inference_ids):
        row = rows[inference_id]
        assert row["received_at"] == batch.received_at  # to the microsecond
        assert row["sensor_id"] == batch.sensor_id and row["model_version"] == "nb-2026.11"
        for name, value in zip(FEATURE_NAMES, batch.features[i], strict=True):
            # bit-exact doubles; a missing measurement is NULL, never NaN
            if value != value:
                assert row[name] is None or math.isnan(row[name])  # pandas shows NULL as NaN
            else:
                assert row[name] == value
        assert row["probability"] == batch.probabilities[i] and row["threshold"] == 0.37
        assert bool(row["potable"]) == (batch.probabilities[i] >= 0.37)


def test_many_small_requests_from_several_sensors_go_in_one_copy(store, mart):
    batches = [
        answered(1 + i % 3, sensor=f"sensor-{i % 4}", missing_every=2 * (i % 2)) for i in range(60)
    ]
    replayed = answered(1, sensor="sensor-9")  # a replayed record in the same stream
    assert store.write([*batches[:30], replayed, *batches[30:]], fresh=True) == 121
    assert len(mart.inferences()) == 121
    for batch in batches:
        assert_stored_as_answered(mart, batch)


def test_missing_measurements_are_null_in_postgres(store, clean_db):
    import psycopg2

    store.write([answered(6, missing_every=3)], fresh=True)
    with psycopg2.connect(clean_db) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FILTER (WHERE sulfate IS NULL), count(*) FILTER (WHERE 'NaN' "
            "IN (ph, sulfate, turbidity)) FROM water.water_inferences"
        )
        assert cur.fetchone() == (2, 0)


def test_replays_are_idempotent_on_inference_id(store, mart):
    features = np.full((1, len(FEATURE_COLUMNS)), np.nan)
    features[0, 0] = 7.2
    row = AnsweredBatch(
        [str(uuid.uuid4())], datetime.now(UTC), "s\t1", "v1", features, np.array([0.42]), 0.5
    )
    assert store.write([row]) == 1
    assert store.write([row]) == 0  # a replay never doubles a row
    assert store.write([row, row]) == 0
    frame = mart.inferences()
    assert len(frame) == 1 and frame.loc[0, "sensor_id"] == "s\t1" and frame.loc[0, "ph"] == 7.2


def test_a_replayed_batch_is_stored_as_answered_and_once(store, mart):
    batch = answered(40, missing_every=5)
    assert store.write([batch, batch]) == 40  # a replay: a record named twice is stored once
    assert_stored_as_answered(mart, batch)
    assert store.write([batch], fresh=True) == 0  # the fresh COPY meets them, falls back, skips all
    assert len(mart.inferences()) == 40


def test_fresh_copy_falls_back_when_a_row_is_already_stored(store, mart):
    first, second = answered(3), answered(5)
    assert store.write([first], fresh=True) == 3
    # the duplicates skipped, the new rows kept
    assert store.write([first, second], fresh=True) == 5
    assert len(mart.inferences()) == 8
    part = first.take(np.array([False, True, False]))
    assert part.inference_ids == [first.inference_ids[1]] and len(part.features) == 1
    assert store.write([answered(4), part, answered(2)]) == 6  # a replay: the stored row left out
    assert len(mart.inferences()) == 14


@pytest.mark.parametrize("fresh", [True, False])
def test_a_stored_key_with_other_measurements_is_refused_never_skipped(store, mart, fresh):
    """Skipping is for a resend; a second answer for one reading is named, and nothing is written."""
    first, other = answered(3, missing_every=3), answered(2, sensor="plant-8")
    store.write([first], fresh=True)
    changed = replace(first, features=first.features.copy(), model_version="v2")
    changed.features[1, 2] += 1.0
    with pytest.raises(ConflictingRows, match=first.inference_ids[1]) as refused:
        store.write([other, changed], fresh=fresh)
    assert "1 row(s)" in str(refused.value) and "sensor 'plant-7'" in str(refused.value)
    twice = replace(
        other,
        inference_ids=other.inference_ids * 2,
        features=np.vstack([other.features, other.features + 1]),
        probabilities=np.ones(4),
    )
    with pytest.raises(ConflictingRows, match="2 row"):  # named twice in one write, changed
        store.write([twice], fresh=fresh)
    assert len(mart.inferences()) == 3
    assert store.write([other, first], fresh=fresh) == 2  # the same measurements: a resend


def test_the_stream_is_one_header_and_trailer_for_many_batches():
    stream, count = encode([answered(10), answered(4, missing_every=2), answered(1)])
    assert (
        count == 15 and stream.startswith(b"PGCOPY\n\xff\r\n\x00") and stream.endswith(b"\xff\xff")
    )


def test_a_copy_in_progress_never_holds_up_a_token_lookup(store, mart):
    token = mart.create_token("sensor-a", "sensor")
    with store._lock:  # the log writer mid-COPY
        found = []
        reader = threading.Thread(target=lambda: found.append(mart.lookup_token(token)))
        reader.start()
        reader.join(timeout=5)
    assert found and found[0].name == "sensor-a"


def test_rows_with_their_own_reading_time_are_stored_at_it(store, mart):
    batch = answered(4, missing_every=3)
    read_at = datetime(2026, 11, 30, 9, 15, 0, 250_000, tzinfo=UTC)
    times = [read_at.isoformat(), batch.received_at, read_at, batch.received_at]
    batch = AnsweredBatch(**{**batch.__dict__, "logged_at": times})
    assert store.write([batch], fresh=True) == 4
    rows = stored(mart)
    expected = [read_at, batch.received_at, read_at, batch.received_at]
    assert [rows[i]["received_at"] for i in batch.inference_ids] == expected
    assert batch.times() == [t.isoformat() for t in expected]


def test_an_answer_at_the_threshold_is_potable_in_the_answer_the_log_and_the_rollup(store, mart):
    """One decision rule (``AnsweredBatch.potable``): the client, the row and the hourly count agree."""
    import dataclasses

    from potability.inference_store import hourly_deltas
    from potability.serve.api import answers_of

    base = answered(4, missing_every=2)  # rows 0 and 2 have a NULL: the row-by-row path too
    at = base.threshold
    batch = dataclasses.replace(base, probabilities=np.array([at, np.nextafter(at, 0), at, 0.9]))
    told = [answer["potable"] for answer in answers_of(batch)]
    assert told == [True, False, True, True]
    assert store.write([batch], fresh=True) == 4
    rows = stored(mart)
    assert [bool(rows[i]["potable"]) for i in batch.inference_ids] == told
    assert hourly_deltas([batch])[4] == [sum(told)]  # the potable answers of that hour
