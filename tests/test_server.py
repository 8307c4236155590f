"""The Flask app through its test client, with a real Postgres and a real ONNX model."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import psycopg2
import pytest

from potability.artifacts import ArtifactError
from potability.ids import unix_ms
from potability.pipeline.small_model import build_model_dir
from potability.schema import FEATURE_NAMES, FEATURES
from potability.serve import create_app, shutdown
from tests.support.server import SAMPLE, auth, logged


@pytest.fixture
def app(server_settings, champion, tmp_path):
    settings = server_settings(
        **champion.app_config(tmp_path), token_cache_seconds=0.3, model_poll_seconds=3600
    )
    app = create_app(settings)
    yield app
    shutdown(app)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def tokens(mart):
    return {role: mart.create_token(f"{role}-1", role) for role in ("sensor", "lab", "admin")}


def test_single_prediction_is_answered_and_logged_under_the_token_name(app, client, mart, tokens):
    r = client.post("/v1/predict", json=SAMPLE, headers=auth(tokens["sensor"]))
    assert r.status_code == 200
    body = r.get_json()
    assert set(body) == {"potable", "probability", "threshold", "inference_id", "model_version"}
    assert (
        body["potable"] == (body["probability"] >= body["threshold"])
        and body["model_version"] == "test-rf-1"
    )
    rows = logged(app, mart)
    assert list(rows["inference_id"]) == [body["inference_id"]]
    assert rows.loc[0, "sensor_id"] == "sensor-1" and rows.loc[0, "Sulfate"] == 368.5


def test_batch_answers_in_order_and_missing_values_are_imputed(app, client, mart, tokens):
    samples = [SAMPLE, {"ph": 7.0}, {**SAMPLE, "Sulfate": None}]
    r = client.post("/v1/predict", json={"samples": samples}, headers=auth(tokens["sensor"]))
    assert r.status_code == 200
    predictions = r.get_json()["predictions"]
    assert len(predictions) == 3
    single = client.post("/v1/predict", json=samples[1], headers=auth(tokens["sensor"])).get_json()
    assert predictions[1]["probability"] == single["probability"]
    assert len(logged(app, mart)) == 4


def test_a_full_batch_is_answered_as_the_model_says_and_every_answer_logged_once(
    app, client, mart, tokens
):
    """1,000 samples (some with gaps): ids are time-ordered and stamped when received, each row
    logged exactly once with what the sensor was told."""
    samples = [{**SAMPLE, "ph": 6.0 + i / 500} for i in range(1000)]
    for i in range(0, 1000, 7):
        samples[i] = {**samples[i], "Sulfate": None}
    for i in range(3, 1000, 11):
        del samples[i]["Turbidity"]
    before = unix_ms(datetime.now(UTC))
    r = client.post("/v1/predict", json={"samples": samples}, headers=auth(tokens["sensor"]))
    after = unix_ms(datetime.now(UTC))
    assert r.status_code == 200 and r.mimetype == "application/json"
    body = r.get_json()
    assert set(body) == {"model_version", "predictions"} and body["model_version"] == "test-rf-1"
    answers = body["predictions"]
    assert len(answers) == 1000
    ids = [uuid.UUID(a["inference_id"]) for a in answers]
    assert {u.version for u in ids} == {7} and ids == sorted(ids) and len(set(ids)) == 1000
    assert before <= ids[0].int >> 80 <= after
    model = app.extensions["potability.model"].current
    X = [[s.get(n, None) for n in FEATURE_NAMES] for s in samples]
    expected = model.model.predict_proba(np.array(X, dtype=np.float64))
    for answer, p in zip(answers, expected.tolist(), strict=True):
        assert answer["probability"] == round(p, 6) and answer["potable"] is (p >= model.threshold)
        assert answer["threshold"] == model.threshold
    rows = logged(app, mart).set_index("inference_id")
    assert len(rows) == 1000 and set(rows.index) == {a["inference_id"] for a in answers}
    for answer in answers[:50]:
        row = rows.loc[answer["inference_id"]]
        assert round(row["probability"], 6) == answer["probability"]
        assert bool(row["potable"]) is answer["potable"] and row["sensor_id"] == "sensor-1"
        assert (
            unix_ms(row["received_at"].to_pydatetime())
            == uuid.UUID(answer["inference_id"]).int >> 80
        )
    assert rows["Sulfate"].isna().sum() == len(range(0, 1000, 7))


@pytest.mark.parametrize(
    ("body", "status", "field", "index"),
    [
        ({**SAMPLE, "ph": 15.2}, 400, "ph", None),
        ({**SAMPLE, "Sulfate": "abc"}, 400, "Sulfate", None),
        ({**SAMPLE, "Solids": -1}, 400, "Solids", None),
        ({**SAMPLE, "colour": 3}, 400, "colour", None),
        ({name: None for name in FEATURE_NAMES}, 400, None, None),
        ({"samples": [SAMPLE, {**SAMPLE, "Turbidity": 5000}]}, 400, "Turbidity", 1),
        ({"samples": []}, 422, "samples", None),
        ({"samples": [SAMPLE] * 1001}, 422, "samples", None),
        ([SAMPLE], 422, None, None),
    ],
)
def test_bad_input_is_refused_naming_the_field(
    client, app, mart, tokens, body, status, field, index
):
    r = client.post("/v1/predict", json=body, headers=auth(tokens["sensor"]))
    assert r.status_code == status
    error = r.get_json()["error"]
    assert error["field"] == field and error["message"] and error["code"]
    assert error.get("index") == index
    assert logged(app, mart).empty  # nothing answered, nothing logged


def test_broken_json_wrong_type_and_oversized_body(client, tokens, app):
    h = auth(tokens["sensor"])
    r = client.post(
        "/v1/predict", data="{not json", headers={**h, "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_json"
    r = client.post("/v1/predict", data="ph=7", headers={**h, "Content-Type": "text/plain"})
    assert r.status_code == 415
    big = json.dumps({"samples": [SAMPLE] * 20}) + " " * app.config["MAX_CONTENT_LENGTH"]
    r = client.post("/v1/predict", data=big, headers={**h, "Content-Type": "application/json"})
    assert r.status_code == 413 and "error" in r.get_json()


@pytest.mark.parametrize("path", ["/v1/predict", "/v1/samples"])
def test_deeply_nested_json_is_a_400_not_a_crash(client, tokens, mart, app, path):
    """20,000 levels of arrays: the parser's own limit is reached, and the answer says so."""
    token = tokens["sensor"] if path == "/v1/predict" else tokens["lab"]
    body = '{"samples": ' + "[" * 20_000 + "]" * 20_000 + "}"
    r = client.post(path, data=body, headers={**auth(token), "Content-Type": "application/json"})
    assert r.status_code == 400, r.get_data(as_text=True)[:200]
    assert r.get_json()["error"]["code"] == "invalid_json"
    assert "deeply" in r.get_json()["error"]["message"]
    assert logged(app, mart).empty


@pytest.mark.parametrize("path", ["/", "/model", "/v1/stats/live", "/healthz", "/v1/predict"])
def test_every_answer_carries_the_security_headers(client, path):
    """HTML and JSON, success and error: no sniffing, no framing, nothing loaded from elsewhere."""
    r = client.get(path)  # GET /v1/predict is a 405: errors carry them too
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    policy = r.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy


def test_roles_are_enforced(client, tokens):
    assert client.post("/v1/predict", json=SAMPLE).status_code == 401
    assert client.post("/v1/predict", json=SAMPLE, headers=auth("pot_nope")).status_code == 401
    assert client.post("/v1/predict", json=SAMPLE, headers=auth(tokens["lab"])).status_code == 403
    lab_row = {**SAMPLE, "sample_id": "L1", "Potability": 1}
    assert (
        client.post("/v1/samples", json=lab_row, headers=auth(tokens["sensor"])).status_code == 403
    )
    assert client.post("/admin/reload", headers=auth(tokens["sensor"])).status_code == 403
    assert (
        client.get("/v1/model", headers=auth(tokens["sensor"])).get_json()["version"] == "test-rf-1"
    )
    assert client.get("/v1/model").status_code == 401


def test_the_model_endpoint_gives_the_input_schema_not_training_rows(client, tokens):
    meta = client.get("/v1/model", headers=auth(tokens["sensor"])).get_json()
    assert "input_example" not in meta  # real lab rows from the training data
    assert set(meta["input_schema"]["properties"]) == set(SAMPLE)


def test_failed_logins_are_logged_with_the_client_address_never_the_token(client, tokens, caplog):
    guess, sensor = "pot_a-guessed-token", tokens["sensor"]
    where = {"REMOTE_ADDR": "203.0.113.9"}
    with caplog.at_level(logging.WARNING, logger="potability.serve.auth"):
        client.post("/v1/predict", json=SAMPLE, headers=auth(guess), environ_base=where)
        client.post("/v1/predict", json=SAMPLE, environ_base=where)
        client.post("/admin/reload", headers=auth(sensor), environ_base=where)
    lines = [r.getMessage() for r in caplog.records if r.name == "potability.serve.auth"]
    assert len(lines) == 3 and all("203.0.113.9" in line for line in lines), lines
    assert "unknown or revoked" in lines[0] and "no bearer token" in lines[1]
    assert "403" in lines[2] and "sensor-1" in lines[2]
    assert not any(guess in line or sensor in line for line in lines)


def test_revocation_takes_effect_within_the_cache_time(client, mart, tokens):
    h = auth(tokens["sensor"])
    assert client.post("/v1/predict", json=SAMPLE, headers=h).status_code == 200
    mart.revoke_tokens("sensor-1")
    time.sleep(0.4)
    assert client.post("/v1/predict", json=SAMPLE, headers=h).status_code == 401


def test_lab_samples_are_idempotent_and_conflicts_refused(client, mart, tokens):
    h = auth(tokens["lab"])
    row = {
        **SAMPLE,
        "sample_id": "L-1",
        "Potability": 1,
        "sensor_id": "plant-2",
        "collected_at": "2026-11-20T10:00:00Z",
    }
    r1 = client.post("/v1/samples", json=row, headers=h)
    assert r1.status_code == 201 and r1.get_json()["inserted"] == 1
    r2 = client.post("/v1/samples", json={"samples": [row]}, headers=h)
    assert r2.status_code == 201 and r2.get_json() | {"sample_ids": None} == {
        "inserted": 0,
        "duplicates": 1,
        "sample_ids": None,
    }
    r3 = client.post("/v1/samples", json={**row, "Potability": 0}, headers=h)
    assert r3.status_code == 409 and "L-1" in r3.get_json()["error"]["message"]
    bad = client.post(
        "/v1/samples",
        json={
            "samples": [
                {**row, "sample_id": "L-2"},
                {**row, "sample_id": "L-3", "Potability": None},
            ]
        },
        headers=h,
    )
    assert bad.status_code == 400 and bad.get_json()["error"] | {"message": ""} == {
        "code": "invalid_field",
        "message": "",
        "field": "Potability",
        "index": 1,
    }
    assert mart.sample_count() == 1  # the good row of a refused batch is not half-stored


def test_ops_endpoints(client, tokens):
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["model_version"] == "test-rf-1"
    client.post("/v1/predict", json=SAMPLE, headers=auth(tokens["sensor"]))
    text = client.get("/metrics").get_data(as_text=True)
    assert 'potability_requests_total{endpoint="/v1/predict",status="200"}' in text
    assert "potability_request_seconds_bucket" in text and "potability_inference_spool_rows" in text
    spec = client.get("/openapi.json").get_json()
    assert spec["openapi"].startswith("3.") and "/v1/predict" in spec["paths"]
    props = spec["components"]["schemas"]["Sample"]["properties"]
    assert [props[f.name]["maximum"] for f in FEATURES] == [f.high for f in FEATURES]


@pytest.fixture
def own_champion(deploy_dir, server_settings, tmp_path):
    """A registered model of this test alone (the session's champion is never moved)."""
    name = f"reload-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    app = create_app(server_settings(**first.app_config(tmp_path), model_poll_seconds=3600))
    yield app, first
    shutdown(app)


def test_corrupt_model_is_refused_and_the_old_one_keeps_serving(own_champion, tmp_path, mart):
    from potability import tracking

    app, first = own_champion
    client = app.test_client()
    tokens = {role: mart.create_token(f"{role}-c", role) for role in ("sensor", "admin")}
    h = auth(tokens["sensor"])
    before = client.post("/v1/predict", json=SAMPLE, headers=h).get_json()
    bad = build_model_dir(tmp_path / "bad", version="test-rf-bad")
    with open(bad / "model.onnx", "r+b") as fh:  # changed after meta.json recorded its sha256
        fh.seek(100)
        fh.write(b"garbage!")
    meta = json.loads((bad / "meta.json").read_text())
    registered = tracking.register_model_dir(
        bad, first.name, None, {"model_version": "test-rf-bad"}, meta["input_example"]
    )
    tracking.set_alias(first.name, "champion", registered.version)
    r = client.post("/admin/reload", headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "sha256" in r.get_json()["error"]["message"]
    after = client.post("/v1/predict", json=SAMPLE, headers=h).get_json()
    assert after["probability"] == before["probability"] and after["model_version"] == "test-rf-1"
    # the open /readyz says what kind of trouble; the why (paths, hashes) is for the admin and the log
    said = client.get("/readyz").get_json()["last_model_error"]
    assert said.startswith("model reload refused") and "/" not in said.split(";")[0]


def test_reload_follows_the_alias_to_a_new_deployment(deploy_dir, own_champion, mart, tmp_path):
    app, first = own_champion
    client = app.test_client()
    tokens = {role: mart.create_token(f"{role}-r", role) for role in ("sensor", "admin")}
    second = deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), first.name)
    assert second.version != first.version
    r = client.post("/admin/reload", headers=auth(tokens["admin"]))
    assert r.status_code == 200 and r.get_json() == {
        "version": "test-rf-2",
        "previous": "test-rf-1",
        "changed": True,
    }
    answer = client.post("/v1/predict", json=SAMPLE, headers=auth(tokens["sensor"])).get_json()
    assert answer["model_version"] == "test-rf-2"
    meta = client.get("/v1/model", headers=auth(tokens["sensor"])).get_json()
    assert meta["registered_version"] == second.version


def test_replicas_follow_the_alias_without_being_asked(deploy_dir, server_settings, tmp_path):
    """Two servers with their own caches (two hosts) move to a new deployment by themselves."""
    name = f"watch-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    hosts = [tmp_path / f"host-{i}" for i in range(2)]
    replicas = [
        create_app(server_settings(tmp=host, **first.app_config(host), model_poll_seconds=0.2))
        for host in hosts
    ]
    try:
        holders = [app.extensions["potability.model"] for app in replicas]
        assert [h.current.version for h in holders] == ["test-rf-1", "test-rf-1"]
        deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), name)
        deadline = time.monotonic() + 20
        while {h.current.version for h in holders} != {"test-rf-2"} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert [h.current.version for h in holders] == ["test-rf-2", "test-rf-2"]
    finally:
        for app in replicas:
            shutdown(app)


def test_a_restart_while_the_registry_is_down_serves_the_cached_champion(
    champion, mart, tmp_path, server_settings
):
    config = {**champion.app_config(tmp_path), "model_poll_seconds": 3600}
    first = create_app(server_settings(**config))
    shutdown(first)
    # the same server restarted while the registry's database refuses connections
    dead = "postgresql+psycopg2://nobody@127.0.0.1:9/mlflow?connect_timeout=2"
    second = create_app(server_settings(**{**config, "mlflow_tracking_uri": dead}))
    try:
        holder = second.extensions["potability.model"]
        assert holder.current is not None and holder.current.version == champion.model_version
        token = mart.create_token("cache-sensor", "sensor")
        r = second.test_client().post("/v1/predict", json=SAMPLE, headers=auth(token))
        assert r.status_code == 200 and r.get_json()["model_version"] == champion.model_version
        with pytest.raises(ArtifactError, match="cannot read the registry"):
            holder.reload()
        assert holder.current.version == champion.model_version  # still serving
        assert second.test_client().get("/readyz").status_code == 200
    finally:
        shutdown(second)


def test_artifact_store_down_keeps_the_old_model(
    deploy_dir, own_champion, mart, tmp_path, monkeypatch
):
    app, first = own_champion
    holder = app.extensions["potability.model"]
    second = deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), first.name)
    store = Path(os.environ["POTABILITY_MLFLOW_ARTIFACTS"])
    hidden = store.with_name(store.name + "-away")
    store.rename(hidden)  # the artifact store is unreachable
    try:
        with pytest.raises(ArtifactError, match=f"cannot download version {second.version}"):
            holder.reload()
        assert holder.current.version == "test-rf-1"
    finally:
        hidden.rename(store)
    assert holder.reload().version == "test-rf-2"  # back: the next poll or reload picks it up


def test_without_a_model_not_ready_and_503(app_without_model, mart):
    client = app_without_model.test_client()
    assert client.get("/readyz").status_code == 503
    token = mart.create_token("s", "sensor")
    r = client.post("/v1/predict", json=SAMPLE, headers=auth(token))
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "no_model"


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_json_literals_are_refused(client, tokens, literal):
    body = json.dumps(SAMPLE).replace("7.1", literal, 1)
    r = client.post(
        "/v1/predict",
        data=body,
        headers={**auth(tokens["sensor"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "ph"


@pytest.mark.parametrize(
    ("field", "raw", "words"),
    [
        ("sample_id", '"a\\u0000b"', "NUL"),
        ("sample_id", '"a\\ud800"', "surrogate"),
        ("sample_id", json.dumps("x" * 201), "longer than 200"),
        ("sensor_id", '"plant\\u0000"', "NUL"),
        ("sensor_id", '"\\udfff"', "surrogate"),
        ("sensor_id", json.dumps("p" * 201), "longer than 200"),
    ],
)
def test_strings_postgres_cannot_store_are_a_400_naming_the_field(
    client, mart, tokens, field, raw, words
):
    row = {**SAMPLE, "sample_id": "S-1", "Potability": 1}
    body = json.dumps(row)[:-1] + f', "{field}": {raw}}}'  # the escape sent as is, like a client
    for data in (body, '{"samples": [' + body + "]}"):
        r = client.post(
            "/v1/samples",
            data=data,
            headers={**auth(tokens["lab"]), "Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.get_data(as_text=True)
        assert r.get_json()["error"]["field"] == field and words in r.get_json()["error"]["message"]
    assert mart.sample_count() == 0


def test_wrong_method_is_405_with_allow(client):
    for method, path, allowed in (
        ("get", "/v1/predict", "OPTIONS, POST"),
        ("delete", "/v1/samples", "OPTIONS, POST"),
        ("post", "/healthz", "GET, HEAD, OPTIONS"),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == 405 and r.headers["Allow"] == allowed
        assert r.get_json()["error"]["code"] == "method_not_allowed"


def within(seconds: float, call):
    """``call()`` on a thread: its result and how long it took, or None if still running after ``seconds``."""
    done: list = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(seconds)
    return (done[0], time.monotonic() - started) if done else None


def test_a_hung_database_is_answered_from_caches_within_the_statement_timeout(
    server_settings, champion, mart, tmp_path
):
    """Postgres up but every read of the tokens and the hourly rollup waits on a lock another
    connection holds: the sensor's verified token (stale-if-error) and the page's last copy answer
    within the statement timeout, not when gunicorn kills the worker."""
    settings = server_settings(
        **champion.app_config(tmp_path),
        token_cache_seconds=0,  # ask Postgres every request
        db_statement_timeout_seconds=1,
        page_stale_seconds=0.5,
        model_poll_seconds=3600,
    )
    app = create_app(settings)
    holder = psycopg2.connect(mart.url)
    try:
        client, h = app.test_client(), auth(mart.create_token("sensor-1", "sensor"))
        assert client.post("/v1/predict", json=SAMPLE, headers=h).status_code == 200
        page = client.get("/").data
        with holder.cursor() as cur:  # held until the test ends: a hung database
            cur.execute(
                "LOCK TABLE water.api_tokens, water.inference_hourly IN ACCESS EXCLUSIVE MODE"
            )
        time.sleep(0.6)  # the page's copy is stale: the next request renders it again
        answered = within(8, lambda: client.post("/v1/predict", json=SAMPLE, headers=h))
        assert answered is not None, "the sensor's request hung with the database"
        response, took = answered
        assert response.status_code == 200 and took < 5, (response.get_json(), took)
        shown = within(8, lambda: client.get("/"))
        assert shown is not None, "the page hung with the database"
        response, took = shown
        assert response.status_code == 200 and response.data == page and took < 5
    finally:
        holder.rollback()
        holder.close()
        shutdown(app)
