"""The generator must look like the real data (DATA.md), and its signal must be weak and in the spread."""

import pytest
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from potability.features import feature_matrix, labels
from potability.pipeline.modeling import build_pipeline, choose_threshold
from potability.synth import REAL_STATS, generate


@pytest.fixture(scope="module")
def rows():
    return generate(20_000, seed=3)


def test_same_seed_same_rows():
    a, b = generate(500, seed=1), generate(500, seed=1)
    assert a.equals(b)
    assert not a.equals(generate(500, seed=2))
    assert a["sample_id"].is_unique


def test_label_share_and_missing_rates(rows):
    assert rows["Potability"].mean() == pytest.approx(0.39, abs=0.015)
    for name, stats in REAL_STATS.items():
        assert rows[name].isna().mean() == pytest.approx(stats.missing, abs=0.012), name


@pytest.mark.parametrize("name", ["ph", "Sulfate", "Hardness", "Chloramines", "Solids"])
def test_per_class_spread_matches_the_real_data(rows, name):
    stats = REAL_STATS[name]
    neg, pos = rows[rows.Potability == 0][name], rows[rows.Potability == 1][name]
    assert neg.std() == pytest.approx(stats.std_not_potable, rel=0.06)
    assert pos.std() == pytest.approx(stats.std_potable, rel=0.06)
    # the signal is not in the means
    assert abs(neg.mean() - pos.mean()) < 0.1 * stats.std_not_potable


def test_solids_is_right_skewed_and_values_in_real_ranges(rows):
    assert rows["Solids"].skew() == pytest.approx(0.62, abs=0.15)
    for name, stats in REAL_STATS.items():
        assert rows[name].min() >= stats.low and rows[name].max() <= stats.high


def _cv_precision_at_recall(kind, X, y):
    proba = cross_val_predict(
        build_pipeline(kind, seed=0),
        X,
        y,
        method="predict_proba",
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
    )[:, 1]
    return choose_threshold(y, proba, min_recall=0.2, min_positives=10)


def test_forest_beats_baseline_and_linear_model_gains_little():
    frame = generate(3000, seed=11)
    X, y = feature_matrix(frame), labels(frame)
    baseline = y.mean()  # calling everything potable
    forest = _cv_precision_at_recall("rf", X, y)
    linear = _cv_precision_at_recall("logreg", X, y)
    assert forest.feasible and forest.precision > baseline + 0.08
    assert linear.precision < baseline + 0.08
    assert forest.precision > linear.precision + 0.05
