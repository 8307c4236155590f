"""Candidates on disk: skops loads only the types the model zoo produces, and names any other."""

import os

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer

from potability import artifacts
from potability.pipeline.modeling import MODEL_KINDS, build_pipeline, build_vote


def _data(rows: int = 120) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 9))
    X[::7, 2] = np.nan  # missing values, as lab rows have them
    return X, (rng.random(rows) > 0.6).astype(int)


def test_every_candidate_of_the_zoo_loads_back(tmp_path):
    X, y = _data()
    fitted = [(kind, build_pipeline(kind, seed=0).fit(X, y)) for kind in MODEL_KINDS]
    for kind, model in [*fitted, ("vote", build_vote(fitted[:3], y))]:
        artifacts.save_candidate(model, tmp_path / kind)
        loaded = artifacts.load_candidate(tmp_path / kind)
        np.testing.assert_allclose(loaded.predict_proba(X), model.predict_proba(X), err_msg=kind)


@pytest.mark.parametrize("kind", ["knn", "vote"])
def test_a_knn_computes_its_distances_in_one_op_not_a_loop_over_training_rows(kind):
    """The sensors wait on this: a Scan over every training row cost 3.4 ms an answer."""
    import onnx

    X, y = _data(rows=400)
    fitted = [(k, build_pipeline(k, seed=0).fit(X, y)) for k in MODEL_KINDS]
    model = dict(fitted)["knn"] if kind == "knn" else build_vote(fitted, y)
    blob = artifacts.to_onnx(model)

    def ops(graph) -> set[str]:
        found = set()
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                if attribute.g.node:
                    found |= ops(attribute.g)
        return found

    used = ops(onnx.load_from_string(blob).graph)
    assert "CDist" in used and "Scan" not in used, sorted(used)
    assert artifacts.parity_gap(model, blob, X) < 1e-5


@pytest.mark.parametrize(
    "foreign,named",
    [
        # skops distrusts a bare function; the old loader trusted whatever the file asked for
        (Pipeline([("f", FunctionTransformer(func=os.getcwd))]), "posix.getcwd"),
        # skops trusts every scikit-learn estimator by default; the zoo never makes this one
        (
            Pipeline([("clf", HistGradientBoostingClassifier(max_iter=3))]),
            "HistGradientBoostingClassifier",
        ),
    ],
)
def test_a_candidate_holding_a_type_the_zoo_never_makes_is_refused_by_name(
    tmp_path, foreign, named
):
    X, y = _data()
    if named != "posix.getcwd":
        foreign.fit(np.nan_to_num(X), y)
    artifacts.save_candidate(foreign, tmp_path / "poisoned")
    with pytest.raises(artifacts.ArtifactError, match=named):
        artifacts.load_candidate(tmp_path / "poisoned")


def test_a_file_that_is_not_skops_is_refused(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / artifacts.CANDIDATE_FILE).write_bytes(b"\x80\x04not a zip")
    with pytest.raises(artifacts.ArtifactError, match="not a skops file"):
        artifacts.load_candidate(tmp_path / "bad")
