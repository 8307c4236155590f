import pytest

from potability.intervals import precision_recall_intervals, wilson


def test_wilson_matches_the_textbook_values():
    low, high = wilson(45, 60)  # precision 0.75 on 60 "potable" answers
    assert low == pytest.approx(0.6276, abs=1e-4) and high == pytest.approx(0.8422, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert wilson(10, 10)[1] == pytest.approx(1.0) and wilson(0, 10)[0] == pytest.approx(0.0)


def test_intervals_hold_the_point_estimates():
    cis = precision_recall_intervals(tp=40, fp=20, fn=120)
    assert cis["precision_ci"][0] < 40 / 60 < cis["precision_ci"][1]
    assert cis["recall_ci"][0] < 40 / 160 < cis["recall_ci"][1]
