"""`dvc repro` for real, in a temp copy of the project, against the session's Postgres and MLflow."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potability import artifacts, db
from potability.features import feature_matrix, labels, read_samples
from potability.mart import WaterMart
from potability.modeling import MODEL_KINDS
from potability.synth import generate
from tests.conftest import copy_project, project_env, run

pytestmark = pytest.mark.slow


def seed_rows(url: str, rows: int, seed: int) -> None:
    frame = generate(rows, seed)
    records = [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict("records")]
    WaterMart(url=url).insert_samples(records, added_by="test")


@pytest.fixture(scope="module")
def project(tmp_path_factory, pg_url):
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE water.water_potability, water.water_inferences, water.api_tokens, water.flow_state"
        )
    root = copy_project(tmp_path_factory.mktemp("project") / "repo")
    env = project_env(root, pg_url)
    seed_rows(pg_url, 1500, seed=21)
    first = run(["dvc", "repro"], root, env)
    return root, env, first.stdout


def test_full_repro_produces_every_output(project):
    root, _, log = project
    assert (root / "data/raw/samples.csv").exists()
    assert (
        len(read_samples(root / "data/split/test.csv"))
        + len(read_samples(root / "data/split/train.csv"))
        == 1500
    )
    for kind in MODEL_KINDS:
        assert (root / f"models/candidates/{kind}/model.skops").exists(), kind
        assert (root / f"plots/pr/{kind}.csv").exists() and (
            root / f"plots/confusion/{kind}.csv"
        ).exists()
    metrics = json.loads((root / "metrics/evaluate.json").read_text())
    assert set(metrics) == set(MODEL_KINDS)
    meta = json.loads((root / "models/production/meta.json").read_text())
    assert meta["sha256"] == artifacts.sha256_bytes(
        (root / "models/production/model.onnx").read_bytes()
    )
    assert meta["metrics"]["recall"] >= 0.2 and meta["kind"] in MODEL_KINDS
    assert meta["features"][0] == "ph" and len(meta["features"]) == 9
    assert "promoted" in log


def test_export_is_byte_identical_for_identical_rows(project):
    root, env, _ = project
    before = (root / "data/raw/samples.csv").read_bytes()
    run(["python", "-m", "potability.stages.export", "--out", "data/raw/samples.csv"], root, env)
    assert (root / "data/raw/samples.csv").read_bytes() == before


def test_second_repro_is_a_noop(project):
    root, env, _ = project
    lock = (root / "dvc.lock").read_text()
    out = run(["dvc", "repro"], root, env).stdout
    assert "Running stage 'train" not in out and "didn't change" in out
    assert (root / "dvc.lock").read_text() == lock


def test_onnx_probabilities_match_sklearn_on_the_test_split(project):
    root, _, _ = project
    production = artifacts.load_production(root / "models/production")
    candidate = artifacts.load_candidate(root / "models/candidates" / production.meta["kind"])
    X = feature_matrix(read_samples(root / "data/split/test.csv")).astype(np.float32)
    gap = np.abs(
        candidate.predict_proba(X.astype(np.float64))[:, 1] - production.model.predict_proba(X)
    )
    assert gap.max() <= 1e-5


def test_mlflow_has_a_run_per_candidate_and_the_champion_alias(project):
    import mlflow

    root, _, _ = project
    mlflow.set_tracking_uri(db.mlflow_tracking_uri())
    client = mlflow.MlflowClient()
    for kind in MODEL_KINDS:
        info = json.loads((root / f"models/candidates/{kind}/train.json").read_text())
        run_ = client.get_run(info["mlflow_run_id"])
        assert run_.data.tags["kind"] == kind and run_.data.tags["data_hash"] == info["data_hash"]
        assert "threshold" in run_.data.metrics and "cv_precision_at_recall" in run_.data.metrics
        assert run_.data.tags["git_commit"] != "unknown"
    meta = json.loads((root / "models/production/meta.json").read_text())
    champion = client.get_model_version_by_alias("water-potability", "champion")
    assert (
        champion.run_id == meta["mlflow_run_id"]
        and str(champion.version) == meta["registered_version"]
    )


def test_dvc_metrics_and_plots_work(project):
    root, env, _ = project
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], root, env).stdout)
    assert shown  # metrics/evaluate.json and promotion.json are readable by DVC
    run(["dvc", "plots", "show", "-o", "dvc_plots"], root, env)
    assert (root / "dvc_plots/index.html").exists()


def test_promote_refuses_a_worse_challenger_and_a_degenerate_one(project):
    """Feed promote candidates worse than the real champion: production must not move."""
    from potability.config import Settings, load_params
    from potability.stages.promote import Paths, promote

    root, _, _ = project
    before = (root / "models/production/model.onnx").read_bytes()
    champion = json.loads((root / "models/production/meta.json").read_text())
    fake = {
        kind: dict(champion["metrics"], precision=champion["metrics"]["precision"] - 0.05)
        for kind in MODEL_KINDS
    }
    fake["svm"] = dict(fake["svm"], precision=1.0, recall=0.01, positives=2)
    metrics_path = root / "metrics/worse.json"
    metrics_path.write_text(json.dumps(fake))
    paths = Paths(train=root / "data/split/train.csv", test=root / "data/split/test.csv",
                  candidates=root / "models/candidates", metrics=metrics_path, model_dir=root / "models/production")  # fmt: skip
    record = promote(paths, load_params(root / "params.yaml"), Settings(root=root))
    assert not record["promote"] and "kept the champion" in record["reason"]
    assert "not eligible" in record["candidates"]["svm"]
    assert (root / "models/production/model.onnx").read_bytes() == before
    history = json.loads((root / "models/production/history.json").read_text())
    assert history[-1]["promote"] is False and history[-1]["version"] == champion["version"]
    metrics_path.unlink()


def test_new_rows_retrain_and_old_samples_stay_where_they_were(project, pg_url):
    root, env, _ = project
    old_test = set(read_samples(root / "data/split/test.csv")["sample_id"])
    old_train = set(read_samples(root / "data/split/train.csv")["sample_id"])
    seed_rows(pg_url, 300, seed=22)
    out = run(["dvc", "repro"], root, env).stdout
    assert "Running stage 'train@rf'" in out and "Running stage 'promote'" in out
    new_test = set(read_samples(root / "data/split/test.csv")["sample_id"])
    new_train = set(read_samples(root / "data/split/train.csv")["sample_id"])
    assert old_test <= new_test and old_train <= new_train and len(new_test | new_train) == 1800
    decision = json.loads((root / "metrics/promotion.json").read_text())
    assert decision["reason"] and decision["promoted"] in (True, False)
    assert labels(read_samples(root / "data/split/test.csv")).sum() > 0


def test_experiment_with_a_stricter_floor(project):
    root, env, _ = project
    run(["dvc", "exp", "run", "-S", "train.min_recall=0.3"], root, env)
    shown = run(["dvc", "exp", "show", "--json"], root, env).stdout
    assert "0.3" in shown
