import numpy as np
import pandas as pd

from potability.quality import drift, lab_agreement, psi, reference_profile
from potability.synth import generate


def test_psi_is_zero_for_the_same_distribution_and_grows_with_a_shift():
    train = generate(4000, seed=1)
    profile = reference_profile(train, bins=10)
    same = drift(profile, generate(4000, seed=2), threshold=0.2)
    assert same["flagged"] == [] and max(f["psi"] for f in same["features"]) < 0.05
    shifted = generate(4000, seed=3)
    shifted["ph"] = shifted["ph"] + 2.0  # a miscalibrated pH probe
    report = drift(profile, shifted, threshold=0.2)
    assert report["flagged"] == ["ph"]


def test_missing_share_counts_as_its_own_bin():
    train = generate(3000, seed=1)
    live = generate(3000, seed=2)
    live["Sulfate"] = np.nan  # the sulfate analyser went offline
    report = drift(reference_profile(train, 10), live, 0.2)
    assert "Sulfate" in report["flagged"]


def test_too_few_live_rows_is_said_not_computed():
    report = drift(reference_profile(generate(500, seed=1), 10), generate(5, seed=2), 0.2)
    assert report["features"] == [] and "at least" in report["note"]


def test_psi_formula():
    assert psi(np.array([0.5, 0.5]), np.array([0.5, 0.5])) == 0.0
    assert psi(np.array([0.9, 0.1]), np.array([0.1, 0.9])) > 1.0


def test_lab_agreement_realised_precision():
    matches = pd.DataFrame({"potability": [1, 0, 1, 0], "potable": [True, True, False, False]})
    result = lab_agreement(matches)
    assert result["realised_precision"] == 0.5 and result["realised_recall"] == 0.5
    assert result["confusion"] == {"tp": 1, "fp": 1, "fn": 1, "tn": 1}
    assert lab_agreement(matches.iloc[0:0])["realised_precision"] is None
