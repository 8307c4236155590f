"""Inference ids: RFC 9562 UUIDv7, stamped with the time the batch was received, ordered, never repeated."""

import threading
import uuid
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from potability.ids import unix_ms, uuid7_batch


@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])  # both the small-batch and the vectorised path
def test_ids_are_version_7_with_the_rfc_variant_and_the_received_millisecond(n):
    at = datetime(2026, 11, 30, 14, 5, 6, 789_999, tzinfo=UTC)
    ids = [uuid.UUID(s) for s in uuid7_batch(n, at)]
    assert len(ids) == n
    assert {u.version for u in ids} == {7}
    assert {u.variant for u in ids} == {uuid.RFC_4122}
    stamp = datetime.fromtimestamp((ids[0].int >> 80) / 1000, UTC)
    assert {u.int >> 80 for u in ids} == {unix_ms(at)}
    assert stamp == at.replace(microsecond=789_000)  # received_at to the ms, truncated


def test_strings_are_canonical_and_round_trip():
    for s in uuid7_batch(20):
        assert str(uuid.UUID(s)) == s and len(s) == 36


def test_ids_increase_within_and_across_batches_of_one_millisecond_and_with_the_clock():
    now = datetime.now(UTC)
    later = now + timedelta(milliseconds=1)
    ids = (
        uuid7_batch(500, now) + uuid7_batch(3, now) + uuid7_batch(1, now) + uuid7_batch(500, later)
    )
    ints = [uuid.UUID(s).int for s in ids]
    assert ints == sorted(ints) and len(set(ints)) == len(ints)


def test_a_clock_stepping_back_stamps_the_true_time_and_repeats_nothing():
    now = datetime.now(UTC)
    first, earlier = uuid7_batch(1000, now), uuid7_batch(1000, now - timedelta(seconds=5))
    assert uuid.UUID(earlier[0]).int >> 80 == unix_ms(now - timedelta(seconds=5))
    assert not set(first) & set(earlier)


def test_ids_are_unique_and_ordered_per_thread_across_threads():
    at = datetime.now(UTC)  # one millisecond for everyone: the counter alone keeps them apart
    results: list[list[str]] = []

    def work():
        mine = []
        for size in (1, 5, 100, 1000) * 5:
            mine += uuid7_batch(size, at)
        results.append(mine)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [s for r in results for s in r]
    assert len(set(everything)) == len(everything) == 8 * 5 * 1106
    for r in results:
        assert r == sorted(r)  # canonical strings sort like the ids (lower-case hex, fixed width)


def _batch_in_another_process(at: datetime) -> list[str]:
    return uuid7_batch(5000, at) + uuid7_batch(1, at)


def test_ids_are_unique_across_processes_in_the_same_millisecond():
    uuid7_batch(1, datetime.now(UTC))  # a forked child starts from a counter the parent holds
    at = datetime.now(UTC)
    with ProcessPoolExecutor(max_workers=2) as pool:
        batches = list(pool.map(_batch_in_another_process, [at] * 4))
    everything = [s for b in batches for s in b] + uuid7_batch(5000, at)
    assert len(set(everything)) == len(everything)
