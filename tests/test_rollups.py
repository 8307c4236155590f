"""Rollups, lab matches, partitions and retention of the inference log, on real Postgres."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg2
import pytest

from potability import log_maintenance, rollups
from potability.config import Settings
from potability.inference_store import AnsweredBatch
from potability.quality import reference_profile
from potability.schema import FEATURE_COLUMNS, FEATURE_NAMES
from potability.synth import generate
from tests.support.database import lab_row, query
from tests.support.project import REPO

NOW = datetime.now(UTC).replace(microsecond=0)


def answer(sensor="s1", at=None, version="v1", probability=0.7, **features):
    """One logged answer: a one-row request (features by column; missing ones NaN, NULL in the log)."""
    values = [features.get(c) for c in FEATURE_COLUMNS]
    row = np.array([[np.nan if v is None else v for v in values]], dtype=float)
    return AnsweredBatch(
        [str(uuid.uuid4())], at or NOW, sensor, version, row, np.array([probability]), 0.5
    )


def matched(url):
    """Lab sample -> the model version of the answer it is matched with."""
    return dict(query(url, "SELECT sample_id, model_version FROM water.lab_matches"))


def assert_hourly_matches_the_raw_log(url):
    """The rollup equals an aggregate of the raw rows computed from scratch."""
    rolled = query(
        url,
        "SELECT hour, sensor_id, model_version, answers, potable, probability_sum, "
        "last_received_at FROM water.inference_hourly ORDER BY 1, 2, 3",
    )
    scratch = query(
        url,
        "SELECT date_trunc('hour', received_at, 'UTC'), sensor_id, model_version, count(*), "
        "count(*) FILTER (WHERE potable), sum(probability), max(received_at) "
        "FROM water.water_inferences GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
    )
    assert [r[:5] + r[6:] for r in rolled] == [r[:5] + r[6:] for r in scratch]
    assert [r[5] for r in rolled] == pytest.approx([r[5] for r in scratch])


def live_features(n, seed):
    frame = generate(n, seed=seed)
    return [
        {c: (None if v != v else float(v)) for c, v in zip(FEATURE_COLUMNS, row, strict=True)}
        for row in frame[list(FEATURE_NAMES)].itertuples(index=False)
    ]


def test_rollups_equal_the_raw_log_after_copy_replay_two_statements_and_insert_select(mart, store):
    profile = reference_profile(generate(800, seed=5), 10)
    assert rollups.register_edges(mart.url, "v1", profile) is True
    assert rollups.register_edges(mart.url, "v1", profile) is False  # registered once
    rows = [
        answer(f"s{i % 3}", NOW - timedelta(minutes=7 * i), probability=(i % 10) / 10, **f)
        for i, f in enumerate(live_features(600, seed=6))
    ]
    assert store.write(rows[:250], fresh=True) == 250  # the server's COPY
    assert store.write(rows[200:400]) == 150  # a replay: 50 already stored, not counted twice
    assert store.write(rows[400:500]) == 100  # one batch in two statements, same hours
    assert store.write(rows[500:]) == 100
    assert_hourly_matches_the_raw_log(mart.url)
    # a bench-style fill
    query(
        mart.url,
        "INSERT INTO water.water_inferences SELECT gen_random_uuid(), received_at, sensor_id, "
        "model_version, ph, hardness, solids, chloramines, sulfate, conductivity, organic_carbon, "
        "trihalomethanes, turbidity, probability, potable, threshold "
        "FROM water.water_inferences WHERE sensor_id = 's1'",
    )
    # not stored by the writer, so not rolled up as it arrived: the recompute counts it
    assert query(mart.url, "SELECT sum(answers) FROM water.inference_hourly") == [(600,)]
    [(first,)] = query(mart.url, "SELECT water.recompute_rollups()")
    assert first == min(r.received_at for r in rows).replace(minute=0, second=0)
    assert_hourly_matches_the_raw_log(mart.url)

    # the drift histogram holds what numpy's binning of the raw rows gives, missing last
    raw = mart.inferences()
    counts, total, as_of = rollups.Rollups(mart.url, 1).feature_counts(
        "v1", {n: p["edges"] for n, p in profile.items()}, NOW - timedelta(days=30)
    )
    assert total == len(raw) and as_of == raw["received_at"].max()
    for name in FEATURE_NAMES:
        values = raw[name].to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        edges = np.asarray(profile[name]["edges"])
        expected = np.bincount(
            np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1
        )
        assert counts[name].tolist() == [*expected.tolist(), len(values) - len(present)], name


def test_a_version_registered_late_counts_its_answers_already_logged(mart, store):
    profile = reference_profile(generate(300, seed=7), 5)
    version = f"late-{uuid.uuid4().hex[:6]}"
    store.write([answer(version=version, **f) for f in live_features(40, seed=8)])
    assert rollups.register_edges(mart.url, version, profile)
    counts, total, _ = rollups.Rollups(mart.url, 1).feature_counts(
        version, {n: p["edges"] for n, p in profile.items()}, NOW - timedelta(hours=2)
    )
    assert total == 40 and all(c.sum() == 40 for c in counts.values())


def test_a_lab_sample_matches_the_nearest_answer_of_its_sensor_within_the_window(mart, store):
    collected = NOW - timedelta(hours=5)

    def at(sensor, minutes, probability):
        return answer(sensor, collected + timedelta(minutes=minutes), f"v{minutes}", probability)

    store.write(
        [
            at("p1", -50, 0.1),
            at("p1", -7, 0.9),
            at("p1", 9, 0.2),
            at("p1", 30, 0.3),
            at("p2", -3, 0.1),  # another sensor, nearer in time: never a match for p1
            at("p3", 61, 0.8),
            at("p3", -61, 0.8),  # outside the 60-minute window
        ]
    )
    mart.insert_samples(
        [
            {**lab_row("near", 1), "sensor_id": "p1", "collected_at": collected.isoformat()},
            {**lab_row("none", 0), "sensor_id": "p3", "collected_at": collected.isoformat()},
            {**lab_row("no-sensor", 1), "collected_at": collected.isoformat()},
        ],
        added_by="test",
    )
    assert matched(mart.url) == {"near": "v-7"}
    confusion, as_of = rollups.Rollups(mart.url, 1).lab_confusion()
    assert confusion == {"tp": 1, "fp": 0, "fn": 0, "tn": 0} and as_of == collected


def test_a_lab_row_arriving_before_its_answer_is_matched_and_a_nearer_answer_wins(mart, store):
    collected = NOW - timedelta(hours=3)
    mart.insert_samples(
        [{**lab_row("early-lab", 0), "sensor_id": "q1", "collected_at": collected.isoformat()}],
        added_by="test",
    )
    assert matched(mart.url) == {}  # no answer yet
    store.write([answer("q1", collected + timedelta(minutes=20), "far", 0.9)])
    assert matched(mart.url) == {"early-lab": "far"}
    store.write(
        [
            answer("q1", collected - timedelta(minutes=2), "near", 0.1),
            answer("q1", collected + timedelta(minutes=40), "farther", 0.9),
        ]
    )
    assert matched(mart.url) == {"early-lab": "near"}
    store.write([answer("q1", collected + timedelta(minutes=2), "as-near-but-later", 0.9)])
    assert matched(mart.url) == {"early-lab": "near"}  # ties go to the earlier answer


def partitions(url):
    return {
        r[0]
        for r in query(
            url,
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'water.water_inferences'::regclass",
        )
    }


def day_name(day):
    return f"water_inferences_p{day:%Y%m%d}"


def test_maintain_creates_partitions_ahead(mart, monkeypatch):
    monkeypatch.setenv("POTABILITY_LOG_PARTITIONS_AHEAD_DAYS", "10")
    report = log_maintenance.maintain(Settings(root=REPO), mart.url)
    assert report.skipped is None and report.window_minutes == 60
    today = NOW.date()
    assert {day_name(today + timedelta(days=d)) for d in range(-1, 11)} <= partitions(mart.url)
    assert log_maintenance.maintain(Settings(root=REPO), mart.url).created == []  # idempotent


def test_a_row_far_in_the_past_or_future_is_kept_in_the_default_partition(mart, store):
    far = [answer(at=datetime(1999, 1, 1, tzinfo=UTC)), answer(at=datetime(2199, 1, 1, tzinfo=UTC))]
    assert store.write(far) == 2
    rows = query(mart.url, "SELECT tableoid::regclass::text FROM water.water_inferences")
    assert [r[0] for r in rows] == ["water.water_inferences_default"] * 2
    # a partition created later for such a day takes its rows over, counted once
    query(mart.url, "SELECT water.ensure_inference_partition('2199-01-01')")
    rows = query(
        mart.url, "SELECT tableoid::regclass::text FROM water.water_inferences ORDER BY received_at"
    )
    assert [r[0] for r in rows] == [
        "water.water_inferences_default",
        "water.water_inferences_p21990101",
    ]
    assert_hourly_matches_the_raw_log(mart.url)
    query(mart.url, "DROP TABLE water.water_inferences_p21990101")


def test_retention_drops_old_partitions_and_keeps_rollups_and_lab_matches(mart, monkeypatch, store):
    old_day = (NOW - timedelta(days=20)).date()
    query(mart.url, "SELECT water.ensure_inference_partition(%s)", (old_day,))
    old = NOW - timedelta(days=20)
    store.write(
        [
            answer("r1", old, probability=0.9),
            answer("r1", old, probability=0.2),
            answer("r1", NOW - timedelta(days=40)),  # no partition: default, then deleted
            answer("r1", NOW),
        ]
    )
    mart.insert_samples(
        [{**lab_row("old-lab", 1), "sensor_id": "r1", "collected_at": old.isoformat()}],
        added_by="test",
    )
    hourly_before = query(mart.url, "SELECT * FROM water.inference_hourly ORDER BY 1, 2, 3")
    monkeypatch.setenv("POTABILITY_LOG_RETENTION_DAYS", "10")
    report = log_maintenance.maintain(Settings(root=REPO), mart.url)
    assert day_name(old_day) in report.dropped
    assert "water_inferences_default: 1 rows" in report.dropped
    assert day_name(old_day) not in partitions(mart.url)
    # today's stays
    assert query(mart.url, "SELECT count(*) FROM water.water_inferences")[0][0] == 1
    assert query(mart.url, "SELECT * FROM water.inference_hourly ORDER BY 1, 2, 3") == hourly_before
    assert matched(mart.url) == {"old-lab": "v1"}  # the match outlives its answer


def test_retention_zero_keeps_everything(mart, monkeypatch, store):
    monkeypatch.setenv("POTABILITY_LOG_RETENTION_DAYS", "0")
    store.write([answer(at=NOW - timedelta(days=3000))])
    assert log_maintenance.maintain(Settings(root=REPO), mart.url).dropped == []
    assert query(mart.url, "SELECT count(*) FROM water.water_inferences")[0][0] == 1


def test_a_new_window_matches_every_lab_sample_again(mart, store):
    collected = NOW - timedelta(hours=6)
    store.write([answer("w1", collected + timedelta(minutes=90), "late")])
    mart.insert_samples(
        [{**lab_row("w", 1), "sensor_id": "w1", "collected_at": collected.isoformat()}],
        added_by="test",
    )
    assert matched(mart.url) == {}  # 90 minutes: outside the 60-minute window
    try:
        log_maintenance.maintain(Settings(root=REPO), mart.url, window_minutes=120)
        assert matched(mart.url) == {"w": "late"}
        log_maintenance.maintain(Settings(root=REPO), mart.url, window_minutes=30)
        assert matched(mart.url) == {}
    finally:
        log_maintenance.maintain(Settings(root=REPO), mart.url)  # back to params.yaml's window


def test_log_maintain_command_says_what_it_did(clean_db, monkeypatch, capsys):
    from potability import cli

    monkeypatch.setenv("POTABILITY_LOG_RETENTION_DAYS", "400")
    assert cli.main(["log", "maintain"]) == 0
    out = capsys.readouterr().out
    assert "retention (POTABILITY_LOG_RETENTION_DAYS): 400 days" in out
    assert "partitions created:" in out and "lab-match window: 60 min" in out


def test_a_lab_row_and_its_answer_committed_together_are_matched_by_maintenance(mart, store):
    """Two transactions in flight at once do not see each other's rows in their triggers."""
    collected = NOW - timedelta(minutes=30)
    lab = psycopg2.connect(mart.url)
    with lab.cursor() as cur:  # the lab's transaction: inserted, not committed yet
        cur.execute(
            "INSERT INTO water.water_potability (sample_id, sensor_id, potability, collected_at, added_by) "
            "VALUES ('racing', 'z1', 1, %s, 'test')",
            (collected,),
        )
    store.write([answer("z1", collected + timedelta(minutes=1), "racing-answer")])
    lab.commit()
    lab.close()
    assert matched(mart.url) == {}  # neither trigger saw the other's row
    log_maintenance.maintain(Settings(root=REPO), mart.url)
    assert matched(mart.url) == {"racing": "racing-answer"}
