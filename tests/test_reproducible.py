"""Same rows, same params, same code: two workspaces reach the same models and the same decision."""

from __future__ import annotations

import json

import numpy as np
import pytest

from potability import artifacts, db
from potability.config import load_params
from potability.features import feature_matrix, read_samples
from potability.pipeline.modeling import candidate_kinds
from tests.support.project import REPO, copy_project, project_env, run, seed_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_workspaces(tmp_path_factory, pg_url):
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute("TRUNCATE water.water_potability, water.flow_state")
    seed_rows(pg_url, 1200, seed=51)
    roots = []
    for name in ("a", "b"):
        root = copy_project(tmp_path_factory.mktemp(f"twin-{name}") / "repo")
        run(["dvc", "repro"], root, project_env(root, pg_url))
        roots.append(root)
    return roots


def test_two_full_repros_give_the_same_candidates(two_workspaces):
    a, b = two_workspaces
    assert (a / "data/split/test.csv").read_bytes() == (b / "data/split/test.csv").read_bytes()
    X = feature_matrix(read_samples(a / "data/split/test.csv"))
    for kind in candidate_kinds(load_params(REPO / "params.yaml")["train"]):
        pa = artifacts.load_candidate(a / "models/candidates" / kind).predict_proba(X)[:, 1]
        pb = artifacts.load_candidate(b / "models/candidates" / kind).predict_proba(X)[:, 1]
        assert np.abs(pa - pb).max() <= 1e-12, kind
    ea = json.loads((a / "metrics/evaluate.json").read_text())
    eb = json.loads((b / "metrics/evaluate.json").read_text())
    assert ea == eb


def test_two_full_repros_reach_the_same_decision(two_workspaces):
    a, b = two_workspaces
    da = json.loads((a / "metrics/promotion.json").read_text())
    db_ = json.loads((b / "metrics/promotion.json").read_text())
    assert (da["promoted"], da["challenger"], da["reason"]) == (
        db_["promoted"],
        db_["challenger"],
        db_["reason"],
    )
    ma, mb = (artifacts.load_model_dir(root / "models/promoted") for root in (a, b))
    assert ma.threshold == mb.threshold and ma.meta["kind"] == mb.meta["kind"]
    # the ONNX files differ in node names only: what they answer is the same
    X = feature_matrix(read_samples(a / "data/split/test.csv"))
    assert np.abs(ma.model.predict_proba(X) - mb.model.predict_proba(X)).max() <= 1e-12
