"""Idempotent readings on the server: a sensor's (reading_id, read_at) is logged once, however often sent."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from potability.sensor.readings import NAMESPACE, reading_inference_id
from potability.sensor.readings_csv import read_readings
from potability.serve import context, create_app, shutdown
from tests.support.project import HEADER_HINT
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
        (reading("r-1", datetime.now(UTC) - timedelta(days=8)), "read_at"),  # backdated
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


def test_a_sensor_and_a_reading_id_holding_slashes_never_collide(served, mart):
    """Sensor ``plant`` + reading ``7/r1`` and sensor ``plant/7`` + reading ``r1``: two rows."""
    app, client, _ = served
    plant, plant_7 = mart.create_token("plant", "sensor"), mart.create_token("plant/7", "sensor")
    a = client.post("/v1/predict", json=reading("7/r1"), headers=auth(plant)).get_json()
    b = client.post("/v1/predict", json=reading("r1", ph=6.0), headers=auth(plant_7)).get_json()
    assert a["inference_id"] != b["inference_id"]
    assert reading_inference_id("a", "b%2Fc") != reading_inference_id("a", "b/c")
    assert sorted(logged(app, mart)["sensor_id"]) == ["plant", "plant/7"]


def test_a_resend_with_other_measurements_is_a_409_naming_the_reading(served, mart):
    app, client, h = served
    first = client.post("/v1/predict", json=reading("r-1"), headers=h)
    assert first.status_code == 200
    logged(app, mart)  # stored: the resend is compared with the log in Postgres
    changed = client.post("/v1/predict", json=reading("r-1", ph=6.0), headers=h)
    assert changed.status_code == 409, changed.get_json()
    error = changed.get_json()["error"]
    assert error["code"] == "reading_conflict" and error["field"] == "reading_id"
    assert "'r-1'" in error["message"]
    batch = {"samples": [reading("r-2"), reading("r-1", Sulfate=None)]}
    r = client.post("/v1/predict", json=batch, headers=h)
    assert r.status_code == 409 and r.get_json()["error"]["index"] == 1
    same = client.post("/v1/predict", json=reading("r-1"), headers=h)
    assert same.status_code == 200  # the same measurements: the idempotent answer
    assert same.get_json()["inference_id"] == first.get_json()["inference_id"]
    rows = logged(app, mart)
    assert len(rows) == 1 and rows.loc[0, "ph"] == SAMPLE["ph"]


def test_a_changed_resend_before_the_first_copy_is_stored_is_a_409(served, mart):
    """The first copy is only in the worker's journal and queue: Postgres cannot say, the worker can."""
    app, client, h = served
    first = client.post("/v1/predict", json=reading("q-1"), headers=h)
    assert first.status_code == 200
    changed = client.post("/v1/predict", json=reading("q-1", ph=6.0), headers=h)
    assert changed.status_code == 409, changed.get_json()
    error = changed.get_json()["error"]
    assert error["code"] == "reading_conflict" and "'q-1'" in error["message"]
    assert "not yet stored" in error["message"]
    batch = {"samples": [reading("q-2"), reading("q-1", Turbidity=None)]}
    r = client.post("/v1/predict", json=batch, headers=h)
    assert r.status_code == 409 and r.get_json()["error"]["index"] == 1
    same = client.post("/v1/predict", json=reading("q-1"), headers=h)
    assert same.status_code == 200
    assert same.get_json()["inference_id"] == first.get_json()["inference_id"]
    rows = logged(app, mart)
    assert len(rows) == 1 and rows.loc[0, "ph"] == SAMPLE["ph"]
    spool = app.extensions["potability.log"].spool
    assert not spool.quarantine_dir.exists()  # nothing answered that the log had to set aside


def test_a_batch_naming_one_reading_twice_with_other_measurements_is_a_409(served, mart):
    app, client, h = served
    batch = {"samples": [reading("d-1"), reading("d-2"), reading("d-1", Hardness=100.0)]}
    r = client.post("/v1/predict", json=batch, headers=h)
    assert r.status_code == 409 and r.get_json()["error"]["index"] == 2
    assert "index 0" in r.get_json()["error"]["message"]
    assert logged(app, mart).empty


def test_how_old_a_reading_may_be_is_a_setting(served):
    app, client, h = served
    older = context.settings(app).model_copy(update={"reading_max_age_seconds": 30 * 86_400})
    app.extensions[context.SETTINGS] = older
    r = client.post(
        "/v1/predict", json=reading("old", datetime.now(UTC) - timedelta(days=8)), headers=h
    )
    assert r.status_code == 200


def test_a_csv_rows_time_comes_from_the_row_never_the_files_mtime(tmp_path):
    """``touch`` on the file changes nothing; a row with no time of its own is refused."""
    data = tmp_path / "readings.csv"
    data.write_text(
        HEADER_HINT.replace("Potability", "read_at")
        + "7,200,20000,7,300,400,14,60,4,2026-12-01T10:00:00+00:00\n"
        + "7,200,20000,7,300,400,14,60,4,\n"
    )
    readings, problems = read_readings(data)
    assert [(p.line, p.field) for p in problems] == [(3, "read_at")]
    assert readings[2].read_at == "2026-12-01T10:00:00+00:00"
    given = "2026-12-02T08:00:00+00:00"
    before, _ = read_readings(data, read_at=given)
    os.utime(data, (0, 0))  # a touch, a copy, a restore from backup
    after, problems = read_readings(data, read_at=given)
    assert problems == [] and before == after and after[3].read_at == given
    lab = tmp_path / "lab.csv"  # a lab file's collected_at is its rows' time
    lab.write_text(
        HEADER_HINT.replace("\n", ",collected_at\n")
        + "7,200,20000,7,300,400,14,60,4,1,2026-12-03T09:00:00Z\n"
    )
    readings, problems = read_readings(lab)
    assert problems == [] and readings[2].read_at == "2026-12-03T09:00:00+00:00"
