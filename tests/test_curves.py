"""ROC and reliability tables: the numbers `dvc plots` draws for the promoted model."""

import numpy as np
import pandas as pd

from potability.pipeline.curves import calibration_table, roc_table
from potability.pipeline.small_model import build_model_dir
from potability.pipeline.stages.promote import write_curves
from potability.synth import generate


def test_roc_of_a_perfect_and_a_useless_model():
    y = np.array([0, 0, 0, 1, 1, 1])
    perfect = roc_table(y, np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9]), points=50)
    assert (perfect["fpr"].iloc[0], perfect["tpr"].iloc[0]) == (0.0, 0.0)
    assert ((perfect["fpr"] == 0.0) & (perfect["tpr"] == 1.0)).any()  # the top-left corner
    assert (perfect["fpr"].iloc[-1], perfect["tpr"].iloc[-1]) == (1.0, 1.0)
    assert perfect["threshold"].between(0, 1).all()
    useless = roc_table(y, np.full(6, 0.5), points=50)
    assert (useless["tpr"] == useless["fpr"]).all()


def test_roc_is_thinned_but_keeps_its_ends_and_is_empty_for_one_class():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 5000)
    table = roc_table(y, rng.random(5000), points=21)
    assert len(table) <= 21 and table["fpr"].is_monotonic_increasing
    assert table["tpr"].iloc[[0, -1]].tolist() == [0.0, 1.0]
    assert roc_table(np.zeros(4), np.full(4, 0.3), points=10).empty


def test_calibration_of_a_calibrated_model_lies_on_the_diagonal():
    rng = np.random.default_rng(1)
    proba = rng.random(200_000)
    y = (rng.random(200_000) < proba).astype(int)  # potable with exactly the stated probability
    table = calibration_table(y, proba, bins=10)
    assert len(table) == 10 and table["samples"].sum() == 200_000
    assert np.allclose(table["observed"], table["predicted"], atol=0.01)
    assert (table["perfect"] == table["predicted"]).all()


def test_calibration_shows_overconfidence_and_skips_empty_bins():
    proba = np.array([0.95, 0.95, 0.95, 0.95, 0.05, 0.05, 1.0])
    y = np.array([1, 0, 0, 0, 0, 0, 1])  # says about 96 %, is right 2 times in 5
    table = calibration_table(y, proba, bins=10)
    assert table["predicted"].tolist() == [0.05, 0.96]  # 1.0 falls in the last bin, not past it
    assert table["observed"].tolist() == [0.0, round(2 / 5, 4)]
    assert table["samples"].tolist() == [2, 5]


def test_promote_draws_the_promoted_onnx_model_or_says_there_is_none(tmp_path):
    test_csv = tmp_path / "test.csv"
    generate(400, seed=5).to_csv(test_csv, index=False)
    params = {"curve_points": 101, "calibration_bins": 10}
    write_curves(build_model_dir(tmp_path / "promoted"), test_csv, tmp_path / "plots", params)
    roc = pd.read_csv(tmp_path / "plots/roc.csv")
    calibration = pd.read_csv(tmp_path / "plots/calibration.csv")
    assert 2 < len(roc) <= 101 and calibration["samples"].sum() == 400
    (tmp_path / "empty").mkdir()  # nothing eligible and no champion: the plots exist, empty
    write_curves(tmp_path / "empty", test_csv, tmp_path / "none", params)
    assert (tmp_path / "none/roc.csv").read_text().strip() == "fpr,tpr,chance,threshold"
    assert pd.read_csv(tmp_path / "none/calibration.csv").empty
