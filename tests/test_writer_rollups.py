"""The log writer's rollups (the only ones since migration 007) equal a count from scratch, on real Postgres."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg2
import psycopg2.extras
import pytest

from potability import rollups
from potability.ids import uuid7_batch
from potability.inference_store import COPY_DIRECT, AnsweredBatch, encode, histogram_deltas
from potability.quality import reference_profile
from potability.schema import FEATURE_COLUMNS, FEATURE_NAMES
from potability.synth import generate
from tests.support.database import lab_row, query

NOW = datetime.now(UTC).replace(minute=30, second=0, microsecond=0)
HOURLY = "SELECT * FROM water.inference_hourly ORDER BY hour, sensor_id, model_version"
HISTOGRAM = (
    "SELECT * FROM water.feature_histogram_hourly ORDER BY model_version, hour, feature, bucket"
)
MATCHES = "SELECT * FROM water.lab_matches ORDER BY sample_id"


def rollup_tables(url) -> dict[str, list]:
    return {
        "hourly": query(url, HOURLY),
        "histogram": query(url, HISTOGRAM),
        "matches": query(url, MATCHES),
    }


def assert_same_rollups(got: dict, want: dict) -> None:
    """Equal tables; only the sum of probabilities may differ in its last bits (summed in another order)."""
    assert [r[:5] + r[6:] for r in got["hourly"]] == [r[:5] + r[6:] for r in want["hourly"]]
    assert [r[5] for r in got["hourly"]] == pytest.approx([r[5] for r in want["hourly"]], rel=1e-12)
    assert got["histogram"] == want["histogram"]
    assert got["matches"] == want["matches"]


@pytest.fixture
def versions(mart):
    """A version with a profile (one feature without edges) and one never registered."""
    profiled, bare = f"eq-{uuid.uuid4().hex[:6]}", f"bare-{uuid.uuid4().hex[:6]}"
    profile = reference_profile(generate(800, seed=11), 6)
    profile.pop("Turbidity")  # registered with no edges for it: every value in bucket 0
    assert rollups.register_edges(mart.url, profiled, profile)
    edges = {name: np.asarray(profile[name]["edges"]) for name in profile}
    return profiled, bare, edges


def flushes(profiled: str, bare: str, edges: dict[str, np.ndarray]) -> list[list[AnsweredBatch]]:
    """Three flushes of requests over several hours, sensors and versions, with the bins' corner cases."""
    rng = np.random.default_rng(12)
    out = []
    for flush in range(3):
        batches = []
        for request in range(6):
            n = 40
            features = generate(n, seed=100 * flush + request)[list(FEATURE_NAMES)].to_numpy(float)
            for j, name in enumerate(FEATURE_NAMES):
                if name in edges:
                    e = edges[name]
                    features[:5, j] = [e[0], e[-1], e[len(e) // 2], e[0] - 1.0, e[-1] + 1.0]
            features[5:8, [0, 4, 8]] = np.nan  # missing: bucket -1
            received = NOW - timedelta(hours=flush)
            # a sensor's own reading times: one request spans up to four hours
            logged = [received - timedelta(minutes=int(m)) for m in rng.integers(0, 240, n)]
            batches.append(
                AnsweredBatch(
                    uuid7_batch(n, received),
                    received,
                    f"s{request % 3}",
                    profiled if request % 2 else bare,
                    features,
                    rng.random(n),
                    0.35 + 0.1 * flush,
                    logged_at=logged,
                )
            )
        out.append(batches)
    return out


def insert_plainly(url, batches: list[AnsweredBatch]) -> None:
    """One plain COPY of the batches' rows without the writer's deltas (a bulk load)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.copy_expert(COPY_DIRECT, io.BytesIO(encode(batches)[0]))
    conn.close()


def lab_samples(mart) -> None:
    """Lab rows near some answers (and one far from all), so both paths match lab samples."""
    mart.insert_samples(
        [
            {
                **lab_row(f"lab-{i}", i % 2),
                "sensor_id": f"s{i % 3}",
                "collected_at": (NOW - timedelta(minutes=25 * i)).isoformat(),
            }
            for i in range(12)
        ]
        + [
            {
                **lab_row("lab-far", 1),
                "sensor_id": "s1",
                "collected_at": (NOW - timedelta(days=3)).isoformat(),
            }
        ],
        added_by="test",
    )


def test_the_writers_rollups_equal_a_recompute_from_the_log(mart, store, versions):
    profiled, bare, edges = versions
    lab_samples(mart)
    written = flushes(profiled, bare, edges)
    for batches in written:
        assert store.write(batches, fresh=True) == sum(len(b) for b in batches)
    by_writer = rollup_tables(mart.url)

    query(
        mart.url,
        "TRUNCATE water.water_inferences, water.inference_hourly, "
        "water.feature_histogram_hourly, water.lab_matches",
    )
    for batches in written:
        insert_plainly(mart.url, batches)  # the trigger matches lab samples, and only that
    assert query(mart.url, "SELECT count(*) FROM water.inference_hourly") == [(0,)]
    query(mart.url, "SELECT water.recompute_rollups()")
    by_trigger = rollup_tables(mart.url)  # matches by the trigger, hourly and histogram by SQL

    assert_same_rollups(by_writer, by_trigger)
    # what the comparison covered: hours, sensors, both versions, every corner of the bins, matches
    assert len({r[0] for r in by_trigger["hourly"]}) >= 6
    assert {(r[1], r[2]) for r in by_trigger["hourly"]} == {
        (f"s{i}", v) for i in range(3) for v in (profiled, bare)
    }
    histogram = by_trigger["histogram"]
    assert {r[0] for r in histogram} == {profiled}  # the version without edges is not binned
    buckets = {(r[2], r[3]) for r in histogram}
    top = len(edges["ph"])
    assert {
        ("ph", -1),
        ("ph", 0),
        ("ph", 1),
        ("ph", top),
    } <= buckets  # missing, below, on edges, above
    assert {b for f, b in buckets if f == "turbidity"} == {-1, 0}  # no edges: present -> 0
    assert len(by_trigger["matches"]) == 12


def test_a_replay_of_answers_already_stored_changes_no_rollup(mart, store, versions):
    profiled, bare, edges = versions
    lab_samples(mart)
    written = flushes(profiled, bare, edges)
    for batches in written:
        store.write(batches, fresh=True)
    before = rollup_tables(mart.url)
    for batches in written:
        assert store.write(batches, fresh=True) == 0  # met its own rows: nothing inserted
        assert store.write(batches) == 0  # a journal's replay
    assert_same_rollups(rollup_tables(mart.url), before)
    assert before["histogram"] and before["matches"]


def test_a_version_registered_after_the_writer_logged_its_answers_counts_them_once(mart, store):
    version = f"late-{uuid.uuid4().hex[:6]}"
    profile = reference_profile(generate(300, seed=7), 5)
    batches = flushes(version, version, {})[0]
    store.write(batches, fresh=True)
    assert query(
        mart.url,
        "SELECT count(*) FROM water.feature_histogram_hourly WHERE model_version = %s",
        (version,),
    ) == [(0,)]
    assert rollups.register_edges(mart.url, version, profile)  # its backfill counts them
    store.write(flushes(version, version, {})[1], fresh=True)  # and the writer bins from now on
    counts, total, _ = rollups.Rollups(mart.url, 1).feature_counts(
        version, {n: p["edges"] for n, p in profile.items()}, NOW - timedelta(days=1)
    )
    assert total == sum(len(b) for b in batches) * 2


def test_histogram_deltas_bin_like_width_bucket(mart):
    """numpy's bins against Postgres' width_bucket on the same doubles, corner cases included."""
    edges = [-1.5, 0.0, 0.0, 2.25, 1e300]
    values = [-np.inf, -2.0, -1.5, -0.0, 0.0, 1e-300, 2.25, 3.0, 1e300, np.inf, np.nan]
    received = datetime(2026, 11, 30, 10, 59, 59, 999_999, tzinfo=UTC)
    features = np.array([[v] * len(FEATURE_COLUMNS) for v in values])
    batch = AnsweredBatch(
        [str(uuid.uuid4()) for _ in values],
        received,
        "s",
        "v",
        features,
        np.zeros(len(values)),
        0.5,
    )
    _, hours, columns, buckets, answers = histogram_deltas(
        [batch], {"v": [edges] * len(FEATURE_COLUMNS)}
    )
    got = {b: a for c, b, a in zip(columns, buckets, answers, strict=True) if c == "ph"}
    want = query(
        mart.url,
        "SELECT coalesce(width_bucket(v, %s::float8[]), -1), count(*) "
        "FROM unnest(%s::float8[]) v GROUP BY 1",
        (edges, [None if v != v else v for v in values]),
    )
    assert got == dict(want)
    hour = received.replace(minute=0, second=0, microsecond=0) - datetime(2000, 1, 1, tzinfo=UTC)
    assert set(hours) == {hour // timedelta(microseconds=1)}  # the hour it began, not the next


def test_migrations_006_007_apply_to_a_filled_005_database_and_count_nothing_twice(pg_url):
    from potability import migrator
    from potability.inference_store import InferenceStore
    from tests.support.database import migrate_by_hand, scratch_database

    with scratch_database(pg_url, "migrate_v5") as probe:
        with psycopg2.connect(probe) as conn, conn.cursor() as cur:
            migrate_by_hand(cur, up_to=5)
        version = f"filled-{uuid.uuid4().hex[:6]}"
        profile = reference_profile(generate(300, seed=7), 5)
        assert rollups.register_edges(probe, version, profile)
        written = flushes(version, version, {})
        insert_plainly(probe, written[0])  # rolled up by 005's trigger
        before = rollup_tables(probe)
        applied = migrator.migrate(url=probe)
        assert applied[:2] == ["006_writer_rollups", "007_one_rollup_path"]
        assert rollup_tables(probe) == before  # nothing recounted
        store = InferenceStore(url=probe)
        assert store.write(written[1], fresh=True) == 240  # rolled up by the writer
        assert store.write(written[2]) == 240  # a replay: the writer too, and the trigger no more
        store.close()
        hourly = query(
            probe,
            "SELECT hour, sensor_id, answers, potable, last_received_at FROM "
            "water.inference_hourly ORDER BY 1, 2",
        )
        raw = query(
            probe,
            "SELECT date_trunc('hour', received_at, 'UTC'), sensor_id, count(*), "
            "count(*) FILTER (WHERE potable), max(received_at) FROM water.water_inferences "
            "GROUP BY 1, 2 ORDER BY 1, 2",
        )
        assert hourly == raw
        histogram = query(
            probe, "SELECT feature, sum(answers) FROM water.feature_histogram_hourly GROUP BY 1"
        )
        assert dict(histogram) == {c: 720 for c in FEATURE_COLUMNS}


def test_registering_edges_waits_for_a_writer_holding_that_version_then_counts_its_rows(mart):
    """The writer found no edges and bins nothing; the registration's backfill must see its rows."""
    import threading

    version = f"race-{uuid.uuid4().hex[:6]}"
    writer = psycopg2.connect(mart.url)
    with writer.cursor() as cur:  # the writer's transaction, as InferenceStore.write runs it
        cur.execute("SELECT count(*) FROM water.begin_writer_rollups(%s)", ([version],))
        assert cur.fetchone() == (0,)  # no edges yet
        rows = flushes(version, version, {})[0][0]
        cur.copy_expert(COPY_DIRECT, io.BytesIO(encode([rows])[0]))
    registered = threading.Thread(
        target=rollups.register_edges,
        args=(mart.url, version, reference_profile(generate(300, seed=7), 5)),
    )
    registered.start()
    registered.join(1.0)
    assert registered.is_alive()  # waits for the writer's shared lock
    writer.commit()
    writer.close()
    registered.join(10)
    counted = query(
        mart.url,
        "SELECT feature, sum(answers) FROM water.feature_histogram_hourly "
        "WHERE model_version = %s GROUP BY 1",
        (version,),
    )
    assert dict(counted) == {c: len(rows) for c in FEATURE_COLUMNS}  # once each, by the backfill
