import numpy as np
import pytest

from potability.intervals import wilson_lower
from potability.pipeline.modeling import (
    MODEL_KINDS,
    VOTE,
    SearchSettings,
    build_pipeline,
    choose_threshold,
    classification_metrics,
    oof_estimate,
    precision_at_recall,
    precision_promise,
    recall_lower_bound,
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


def _noisy_scores(n: int, repeats: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.39).astype(int)
    signal = y * 0.25 + rng.random(n) * 0.75  # the model: shared by every repeat
    oof = np.clip(signal + rng.normal(0, 0.03, (repeats, n)), 0, 1)  # the folds move it a little
    return y, oof


def test_the_threshold_aims_at_the_least_recall_whose_lower_bound_clears_the_floor():
    y, oof = _noisy_scores(2000, 3)
    estimate = oof_estimate(y, oof, 0.25, 0.95, 10, [0.2, 0.3])
    assert estimate.feasible and estimate.recall_lower_bound >= 0.25
    # the least such recall: just above the floor, not a fixed margin above it
    assert 0.25 < estimate.recall_at_threshold < 0.25 + 0.045
    # one step higher (a higher threshold, less recall) the bound no longer clears the floor
    thresholds = np.unique(oof)[::-1]
    higher = thresholds[np.searchsorted(-thresholds, -estimate.threshold) - 1]
    tp = np.array([[((row >= higher) & (y == 1)).sum()] for row in oof], dtype=float)
    assert recall_lower_bound(tp, int(y.sum()), 0.95)[0] < 0.25
    # each repeat's achieved recall at the threshold is reported beside the aimed one
    assert len(estimate.recalls) == 3 and estimate.min_recall_at_threshold == min(estimate.recalls)
    assert estimate.recall_at_threshold == pytest.approx(np.mean(estimate.recalls))
    metrics = estimate.as_metrics()
    assert {
        "oof_recall",
        "oof_recall_lower_bound",
        "oof_recall_repeat3",
        "oof_tp",
        "oof_answers",
    } <= set(metrics)
    assert set(estimate.operating_points) == {"p_at_r0.20", "p_at_r0.30"}


def test_more_evidence_aims_closer_to_the_floor_and_a_higher_level_further_from_it():
    small = oof_estimate(*_noisy_scores(600, 2), 0.25, 0.95, 10, [])
    large = oof_estimate(*_noisy_scores(6000, 2), 0.25, 0.95, 10, [])
    strict = oof_estimate(*_noisy_scores(6000, 2), 0.25, 0.99, 10, [])
    assert 0.25 < large.recall_at_threshold < small.recall_at_threshold
    assert large.recall_at_threshold < strict.recall_at_threshold


def test_recall_lower_bound_is_wilson_when_repeats_agree_and_lower_when_they_spread():
    same = recall_lower_bound(np.array([[60.0], [60.0]]), 200, 0.95)[0]
    assert same == pytest.approx(wilson_lower(60, 200, 0.95))
    spread = recall_lower_bound(np.array([[50.0], [70.0]]), 200, 0.95)[0]
    assert spread < same


def test_an_unreachable_floor_is_infeasible():
    y, oof = _noisy_scores(500, 2)
    estimate = oof_estimate(y, oof, 0.999, 0.99, 10, [])
    assert not estimate.feasible and estimate.recall_at_threshold == 1.0


def test_precision_promise_pools_out_of_fold_and_test_answers():
    promise = precision_promise(
        oof_tp=150, oof_answers=200, test_tp=30, test_answers=50, level=0.95
    )
    assert promise["precision_pooled"] == pytest.approx(180 / 250, abs=1e-4)
    assert promise["precision_lower_bound"] == pytest.approx(wilson_lower(180, 250, 0.95), abs=1e-4)
    assert promise["precision_lower_bound"] < 180 / 250
    # more answers at the same precision: a tighter promise
    assert (
        precision_promise(1500, 2000, 300, 500, 0.95)["precision_lower_bound"]
        > promise["precision_lower_bound"]
    )


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
        min_recall=0.25,
        level=0.95,
        min_positives=5,
        floors=[0.25],
        vote_members=5,  # every kind, as params.yaml has it
        n_jobs=1,
    )
    zoo = search_zoo(X[:400], y[:400], grids, settings)
    assert set(zoo) == {*grids, VOTE} and len(zoo["knn"].grid) == 2
    assert zoo[VOTE].best_params["members"] == [
        c.kind for c in sorted((zoo[k] for k in grids), key=lambda c: -c.estimate.precision)[:5]
    ]
    for kind, candidate in zoo.items():
        assert candidate.oof.shape == (2, 400)
        gap = artifacts.parity_gap(candidate.model, artifacts.to_onnx(candidate.model), X[400:])
        assert gap <= 1e-5, kind


# -- quality: the operating point on rows the search never saw ------------------------------
def _unseen_operating_points(splits: int = 3) -> list[tuple[float, float]]:
    """(test recall, gap to the best precision at that recall) of a small forest, per 80/20 split."""
    rows = []
    for seed in range(splits):
        frame = generate(3000, seed=200 + seed)
        X = frame.drop(columns=["sample_id", "Potability"]).to_numpy()
        y = frame["Potability"].to_numpy()
        test = np.zeros(len(y), dtype=bool)
        test[np.random.default_rng(seed).permutation(len(y))[: len(y) // 5]] = True
        settings = SearchSettings(
            seed=seed,
            cv_folds=5,
            cv_repeats=2,
            min_recall=0.25,
            level=0.95,
            min_positives=10,
            floors=[],
            vote_members=0,
            n_jobs=1,
        )
        grid = {"rf": {"n_estimators": [60], "min_samples_leaf": [5]}}
        candidate = search_zoo(X[~test], y[~test], grid, settings)["rf"]
        proba = candidate.model.predict_proba(X[test])[:, 1]
        got = classification_metrics(y[test], proba, candidate.estimate.threshold)
        best = precision_at_recall(y[test], proba, got["recall"] - 1e-9)
        rows.append((got["recall"], best - got["precision"]))
    return rows


def assert_near_the_floor(rows: list[tuple[float, float]]) -> None:
    """Issue 23's bar: recall close above the floor of 0.25 on unseen rows, little precision given away."""
    recalls, gaps = np.array(rows).T
    assert recalls.min() >= 0.22, f"a split's recall {recalls.min():.3f} < 0.22"
    assert 0.25 <= recalls.mean() <= 0.32, f"mean recall {recalls.mean():.3f} not in [0.25, 0.32]"
    assert gaps.mean() <= 0.05, f"mean gap to the best precision {gaps.mean():.3f} > 0.05"


def test_the_operating_point_sits_just_above_the_floor_on_unseen_rows():
    assert_near_the_floor(_unseen_operating_points())


def test_a_fixed_margin_above_the_floor_fails_the_quality_bar(monkeypatch):
    """Break the rule on purpose (back to a fixed margin of 0.10) and watch the quality test fail."""
    from potability.pipeline import modeling

    def fixed_margin(tp, positives, level):
        return tp.mean(axis=0) / positives - 0.10  # "clears 0.25" now means recall >= 0.35

    monkeypatch.setattr(modeling, "recall_lower_bound", fixed_margin)
    with pytest.raises(AssertionError, match="mean recall"):
        test_the_operating_point_sits_just_above_the_floor_on_unseen_rows()
