import numpy as np
import pytest

from potability.pipeline.modeling import (
    MODEL_KINDS,
    VOTE,
    SearchSettings,
    build_pipeline,
    choose_threshold,
    classification_metrics,
    oof_estimate,
    search_zoo,
    threshold_at_recall,
)
from potability.synth import generate


def test_threshold_maximises_precision_at_the_recall_floor():
    y = np.array([1, 1, 0, 1, 0, 0, 1, 0, 0, 0])
    p = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    # recall >= 0.5 needs 2 of 4 positives: top-2 gives precision 1.0
    assert choose_threshold(y, p, 0.5, 1).threshold == 0.9
    # with at least 4 positive answers, top-4 (3 of 4 right) beats top-7
    choice = choose_threshold(y, p, 0.5, 4)
    assert (choice.threshold, choice.precision, choice.positives, choice.feasible) == (
        0.8,
        0.75,
        4,
        True,
    )


def test_degenerate_top_score_does_not_win_below_the_floor():
    # one very confident right answer would be precision 1.0 at recall 0.01
    y = np.r_[1, np.tile([1, 0], 50)]
    p = np.r_[0.99, np.linspace(0.8, 0.1, 100)]
    choice = choose_threshold(y, p, min_recall=0.2, min_positives=10)
    assert choice.recall >= 0.2 and choice.positives >= 10


def test_infeasible_floor_is_marked():
    y = np.array([0, 0, 0, 1])
    choice = choose_threshold(y, np.array([0.9, 0.8, 0.7, 0.1]), min_recall=0.5, min_positives=10)
    assert not choice.feasible


def test_equal_scores_share_one_threshold():
    y = np.array([1, 0, 1, 0])
    choice = choose_threshold(y, np.array([0.5, 0.5, 0.5, 0.5]), 0.1, 1)
    assert choice.positives == 4 and choice.precision == 0.5


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_every_kind_handles_missing_values(kind):
    frame = generate(300, seed=5)
    X = frame.drop(columns=["sample_id", "Potability"]).to_numpy()
    model = build_pipeline(kind, seed=0).fit(X, frame["Potability"])
    proba = model.predict_proba(np.full((1, 9), np.nan))[:, 1]
    assert np.isfinite(proba).all()


def test_metrics_at_threshold():
    m = classification_metrics(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.2, 0.1]), 0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert (m["precision"], m["recall"], m["positives"]) == (0.5, 0.5, 2)


def test_threshold_at_recall_stops_at_the_aim_instead_of_chasing_a_spike():
    y = np.array([1, 0, 1, 0, 1, 1, 1, 1, 0, 0])
    p = np.linspace(0.95, 0.05, 10)
    # recall 0.3 is reached at the 3rd answer (2 of 6): precision 0.667; a spike of 0.75 lies at 8
    choice = threshold_at_recall(y, p, 0.3, 1)
    assert (choice.positives, round(choice.precision, 3), choice.feasible) == (3, 0.667, True)
    assert choose_threshold(y, p, 0.3, 1).positives == 8
    assert not threshold_at_recall(y, p, 0.3, 20).feasible


def test_oof_estimate_takes_the_median_threshold_and_checks_it_on_every_repeat():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    oof = np.clip(y * 0.2 + rng.random((3, 500)) * 0.8, 0, 1)
    estimate = oof_estimate(y, oof, 0.3, 10, [0.2, 0.3])
    per_repeat = [threshold_at_recall(y, row, 0.3, 10).threshold for row in oof]
    assert estimate.threshold == np.median(per_repeat) and estimate.feasible
    assert estimate.min_recall_at_threshold <= estimate.recall_at_threshold
    assert abs(estimate.recall_at_threshold - 0.3) < 0.03
    assert set(estimate.operating_points) == {"p_at_r0.20", "p_at_r0.30"}


def test_the_search_scores_every_kind_out_of_fold_and_every_candidate_exports_to_onnx():
    """The zoo and its vote, tuned on a small synthetic set: ONNX answers like scikit-learn."""
    from potability import artifacts

    frame = generate(500, seed=9)
    X = frame.drop(columns=["sample_id", "Potability"]).to_numpy()
    y = frame["Potability"].to_numpy()
    grids = {
        "rf": {"n_estimators": [20]},
        "et": {"n_estimators": [20]},
        "svm": {"C": [1.0]},
        "knn": {"n_neighbors": [10, 40]},
        "qda": {"reg_param": [0.3]},
    }
    settings = SearchSettings(
        seed=0,
        cv_folds=3,
        cv_repeats=2,
        aim=0.3,
        min_positives=5,
        floors=[0.25],
        vote_members=3,
        n_jobs=1,
    )
    zoo = search_zoo(X[:400], y[:400], grids, settings)
    assert set(zoo) == {*grids, VOTE} and len(zoo["knn"].grid) == 2
    assert zoo[VOTE].best_params["members"] == [
        c.kind for c in sorted((zoo[k] for k in grids), key=lambda c: -c.estimate.precision)[:3]
    ]
    for kind, candidate in zoo.items():
        assert candidate.oof.shape == (2, 400)
        gap = artifacts.parity_gap(candidate.model, artifacts.to_onnx(candidate.model), X[400:])
        assert gap <= 1e-5, kind
