"""The public quality page and its JSON twins, on real Postgres data (and on none)."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

from potability.serve import create_app, shutdown
from tests.support.project import SERVED_MODEL
from tests.support.server import SAMPLE, auth


@pytest.fixture
def app(server_settings, champion, tmp_path):
    app = create_app(server_settings(**champion.app_config(tmp_path)))
    yield app
    shutdown(app)


def test_empty_database_says_no_data_yet(app):
    client = app.test_client()
    r = client.get("/")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert html.count("No data yet") == 3  # live, agreement, drift; the model card is there
    assert "test precision" in html and "Promotion history" in html
    for name in ("model", "live", "agreement", "drift"):
        assert client.get(f"/v1/stats/{name}").status_code == 200
    assert client.get("/v1/stats/nope").status_code == 404


def test_model_card_states_intervals_and_operating_points(app, champion):
    """Regulators read precision with its uncertainty, and what another recall floor would cost."""
    html = app.test_client().get("/").get_data(as_text=True)
    metrics = json.loads((champion.directory / "meta.json").read_text())["metrics"]
    low, high = metrics["precision_ci"]
    assert f"95 % interval {low:.3f}–{high:.3f}" in html
    # the precision promise beside its point estimate, and the recall rule in one sentence
    assert f"at least <b>{metrics['precision_lower_bound']:.3f}</b>" in html
    assert f"point estimate {metrics['precision_pooled']:.3f}" in html
    assert f'<p id="recall-rule">{metrics["recall_rule"]}</p>' in html
    points = metrics["operating_points"]
    assert 'id="operating-points"' in html
    for name, value in points.items():
        assert f"<td>{name.removeprefix('p_at_r')}</td><td>{value:.3f}</td>" in html


def test_no_model_at_all_is_friendly(app_without_model):
    r = app_without_model.test_client().get("/model")
    assert r.status_code == 200 and "no model has been deployed" in r.get_data(as_text=True)


def test_panels_after_traffic_and_lab_results(app, mart):
    client = app.test_client()
    sensor = mart.create_token("plant-7", "sensor")
    lab = mart.create_token("lab-1", "lab")
    shifted = [{**SAMPLE, "ph": 12.5 + i / 1000} for i in range(60)]  # a drifting pH probe
    answers = client.post(
        "/v1/predict", json={"samples": shifted}, headers=auth(sensor)
    ).get_json()["predictions"]
    app.extensions["potability.log"].flush()
    now = datetime.now(UTC)
    lab_rows = [
        {
            **shifted[i],
            "sample_id": f"lab-{i}",
            "sensor_id": "plant-7",
            "collected_at": now.isoformat(),
            "Potability": i % 2,
        }
        for i in range(10)
    ]
    assert (
        client.post("/v1/samples", json={"samples": lab_rows}, headers=auth(lab)).status_code == 201
    )

    live = client.get("/v1/stats/live").get_json()
    assert live["answers"] == 60 and live["sensors"][0]["sensor_id"] == "plant-7"
    expected_share = sum(a["potable"] for a in answers) / 60
    assert live["sensors"][0]["potable_share"] == pytest.approx(expected_share, abs=1e-4)

    agreement = client.get("/v1/stats/agreement").get_json()
    assert agreement["matched"] == 10

    drift = client.get("/v1/stats/drift").get_json()
    assert "ph" in drift["flagged"] and drift["rows"] == 60

    # each panel says how fresh its rollup is: the newest answer / lab sample it covers
    newest = mart.inferences()["received_at"].max()
    assert datetime.fromisoformat(live["as_of"]) == newest == datetime.fromisoformat(drift["as_of"])
    assert datetime.fromisoformat(agreement["as_of"]) == datetime.fromisoformat(now.isoformat())

    html = client.get("/").get_data(as_text=True)
    assert "plant-7" in html and "<svg" in html and "ph" in html
    assert sensor not in html and lab not in html  # no secrets on a public page
    assert "No data yet" not in html


def test_page_can_require_a_token(mart, champion, tmp_path, server_settings):
    app = create_app(server_settings(**champion.app_config(tmp_path), page_requires_token=True))
    try:
        client = app.test_client()
        assert client.get("/").status_code == 401
        assert client.get("/v1/stats/live").status_code == 401
        token = mart.create_token("regulator", "sensor")
        assert client.get("/", headers=auth(token)).status_code == 200
    finally:
        shutdown(app)


def test_old_answers_fall_out_of_the_live_window(app, store):
    import uuid

    old = datetime.now(UTC) - timedelta(days=30)
    import numpy as np

    from potability.inference_store import AnsweredBatch

    features = np.array([[7.0] + [np.nan] * 8])
    store.write([AnsweredBatch([str(uuid.uuid4())], old, "s", "v", features, np.array([0.3]), 0.5)])
    assert app.test_client().get("/v1/stats/live").get_json()["answers"] == 0


def test_the_page_lists_every_deployment_and_rollback(deploy_dir, mart, tmp_path, server_settings):
    """Regulators see who shipped which version, when and why, rollbacks included."""
    from potability import deploy
    from potability.config import Settings
    from potability.pipeline.small_model import build_model_dir

    name = f"page-{tmp_path.name[-8:]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), name)
    os.environ["POTABILITY_REGISTERED_MODEL"] = name
    try:
        deploy.rollback(
            first.version, "operator-ann", "v2 calls too many samples potable", Settings()
        )
    finally:
        os.environ["POTABILITY_REGISTERED_MODEL"] = SERVED_MODEL
    app = create_app(server_settings(**first.app_config(tmp_path)))
    try:
        card = app.test_client().get("/v1/stats/model").get_json()
        assert card["version"] == "test-rf-1"  # the rollback is what is served
        actions = [(d["action"], d["model_version"], d["deployed_by"]) for d in card["deployments"]]
        assert actions == [
            ("rollback", "test-rf-1", "operator-ann"),
            ("deploy", "test-rf-2", "pytest"),
            ("deploy", "test-rf-1", "pytest"),
        ]
        html = app.test_client().get("/").get_data(as_text=True)
        assert "v2 calls too many samples potable" in html and "operator-ann" in html
    finally:
        shutdown(app)


def test_the_model_card_names_the_commit_that_built_the_served_version(
    deploy_dir, mart, tmp_path, server_settings
):
    """Lineage on the page: the commit holding the dvc.lock of the served version, or "not reproducible"."""
    from potability import deployments
    from potability.pipeline.small_model import build_model_dir

    name = f"lineage-{tmp_path.name[-8:]}"
    shipped = deploy_dir(build_model_dir(tmp_path / "v1"), name)  # forced: no commit recorded
    app = create_app(  # no cached copy: every page load renders
        server_settings(**shipped.app_config(tmp_path), page_stale_seconds=0.001),
        start_background=False,
    )
    try:
        html = app.test_client().get("/").get_data(as_text=True)
        assert "no recorded commit: not reproducible" in html
        commit = "5" * 40  # as `potability deploy` records a committed dvc.lock's commit
        deployments.record(
            deployments.Deployment(
                None,
                "retrain-potability",
                "deploy",
                name,
                shipped.version,
                shipped.model_version,
                None,
                None,
                "retrain flow: promoted",
                commit,
            ),
            url=mart.url,
        )
        card = app.test_client().get("/v1/stats/model").get_json()
        assert card["commit"] == commit and card["deployments"][0]["lock_commit"] == commit
        html = app.test_client().get("/").get_data(as_text=True)
        assert f"built from commit <code>{commit[:12]}</code>" in html
    finally:
        shutdown(app)


def test_the_server_bins_the_answers_of_a_model_no_deploy_registered(
    mart, champion, tmp_path, server_settings
):
    """Drift works for a served version whose bins are missing (deployed by an older release)."""
    import psycopg2

    with psycopg2.connect(mart.url) as conn, conn.cursor() as cur:
        cur.execute(
            "DELETE FROM water.feature_edges WHERE model_version = %s", (champion.model_version,)
        )
    conn.close()
    app = create_app(  # no cached copy: every page load renders
        server_settings(**champion.app_config(tmp_path), page_stale_seconds=0.001),
        start_background=False,
    )
    try:
        sensor = mart.create_token("plant-9", "sensor")
        client = app.test_client()
        shifted = [{**SAMPLE, "ph": 12.5 + i / 1000} for i in range(40)]
        response = client.post("/v1/predict", json={"samples": shifted}, headers=auth(sensor))
        assert response.status_code == 200
        app.extensions["potability.log"].flush()
        assert client.get("/v1/stats/drift").get_json()["rows"] == 0  # no bins yet: not counted
        app.extensions["potability.maintenance"].run_once()  # at start, hourly, and on a model swap
        drift = client.get("/v1/stats/drift").get_json()
        # answers already logged are counted
        assert drift["rows"] == 40 and "ph" in drift["flagged"]
    finally:
        shutdown(app)
