"""Idempotent readings on the server: a sensor's (reading_id, read_at) is logged once, however often sent."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from potability.sensor.readings import NAMESPACE, reading_inference_id
from potability.serve import context, create_app, shutdown
from tests.support.server import SAMPLE, auth, logged

HOUR_AGO = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)


@pytest.fixture
def served(mart, champion, tmp_path, server_settings):
    """The app, its test client and sensor-1's auth header; the log is written when a test says."""
    app = create_app(server_settings(**champion.app_config(tmp_path), log_flush_seconds=3600))
    try:
        yield app, app.test_client(), auth(mart.create_token("sensor-1", "sensor"))
    finally:
        shutdown(app)


def reading(reading_id: str, read_at: datetime = HOUR_AGO, **features) -> dict:
    return {**SAMPLE, **features, "reading_id": reading_id, "read_at": read_at.isoformat()}


def test_a_resent_reading_is_logged_once_under_the_same_inference_id(served, mart):
    app, client, h = served
    first = client.post("/v1/predict", json=reading("r-1"), headers=h)
    assert first.status_code == 200
    logged(app, mart)  # the first is stored; the resend takes the duplicate path
    again = client.post("/v1/predict", json=reading("r-1"), headers=h)
    assert again.get_json()["inference_id"] == first.get_json()["inference_id"]
    assert first.get_json()["inference_id"] == str(uuid.uuid5(NAMESPACE, "sensor-1/r-1"))
    rows = logged(app, mart)
    assert list(rows["inference_id"]) == [first.get_json()["inference_id"]]
    assert rows.loc[0, "received_at"] == HOUR_AGO  # the reading's time, not the request's


def test_a_batch_resent_before_its_first_copy_is_flushed_stores_each_reading_once(served, mart):
    app, client, h = served
    batch = {"samples": [reading("b-1"), SAMPLE, reading("b-2", ph=6.0)]}
    answers = [client.post("/v1/predict", json=batch, headers=h).get_json() for _ in range(3)]
    ids = [[p["inference_id"] for p in a["predictions"]] for a in answers]
    assert ids[0][0] == ids[1][0] == ids[2][0] and ids[0][2] == ids[1][2] == ids[2][2]
    assert len({i[1] for i in ids}) == 3  # a sample without a reading id is a new answer each time
    rows = logged(app, mart)  # all three copies were queued together: one COPY, then ON CONFLICT
    assert len(rows) == 2 + 3 and rows["inference_id"].is_unique


def test_two_sensors_reading_ids_never_collide(served, mart):
    app, client, h = served
    other = mart.create_token("sensor-2", "sensor")
    a = client.post("/v1/predict", json=reading("same"), headers=h)
    b = client.post("/v1/predict", json=reading("same"), headers=auth(other))
    assert a.get_json()["inference_id"] != b.get_json()["inference_id"]
    assert b.get_json()["inference_id"] == reading_inference_id("sensor-2", "same")
    assert len(logged(app, mart)) == 2


@pytest.mark.parametrize(
    ("sample", "field"),
    [
        ({**SAMPLE, "reading_id": "r-1"}, "read_at"),
        ({**SAMPLE, "read_at": HOUR_AGO.isoformat()}, "reading_id"),
        (reading("r-1", datetime.now(UTC) + timedelta(hours=1)), "read_at"),
        ({**reading("r-1"), "read_at": "2026-11-30T10:00:00"}, "read_at"),  # no offset
        ({**reading("r-1"), "read_at": 1764496800}, "read_at"),
        (reading(""), "reading_id"),
        (reading("x" * 201), "reading_id"),
        (reading("café"), "reading_id"),
        (reading("r-1\n"), "reading_id"),
        ({**reading("r-1"), "reading_id": 7}, "reading_id"),
        (reading("r-1", ph=15.0), "ph"),
    ],
)
def test_bad_reading_fields_are_a_400_naming_the_field(served, mart, sample, field):
    app, client, h = served
    r = client.post("/v1/predict", json=sample, headers=h)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"]["field"] == field
    assert logged(app, mart).empty


def test_a_batch_naming_one_reading_twice_answers_both_and_stores_it_once(served, mart):
    app, client, h = served
    batch = {"samples": [reading("d-1"), reading("d-2"), reading("d-1")]}
    r = client.post("/v1/predict", json=batch, headers=h)
    ids = [p["inference_id"] for p in r.get_json()["predictions"]]
    assert ids[0] == ids[2] != ids[1]
    assert sorted(logged(app, mart)["inference_id"]) == sorted(ids[:2])


def test_the_clock_skew_allowed_is_a_setting(served):
    app, client, h = served
    wider = context.settings(app).model_copy(update={"reading_max_skew_seconds": 7200})
    app.extensions[context.SETTINGS] = wider
    r = client.post(
        "/v1/predict",
        json=reading("late", datetime.now(UTC) + timedelta(hours=1)),
        headers=h,
    )
    assert r.status_code == 200
