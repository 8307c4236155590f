import numpy as np
import pytest

from potability.modeling import (
    MODEL_KINDS,
    build_pipeline,
    choose_threshold,
    classification_metrics,
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
