from potability.promotion import decide


def m(precision, recall, positives=50):
    return {"precision": precision, "recall": recall, "positives": positives}


def test_degenerate_high_precision_low_recall_is_never_promoted():
    decision = decide({"svm": m(1.0, 0.004, 1), "rf": m(0.62, 0.25)}, None, 0.2, 10)
    assert decision.promote and decision.challenger == "rf"
    assert "not eligible" in decision.candidates["svm"]


def test_nothing_eligible_keeps_the_champion():
    decision = decide({"svm": m(1.0, 0.01, 2), "logreg": m(0.9, 0.05, 5)}, m(0.6, 0.3), 0.2, 10)
    assert not decision.promote and "recall floor" in decision.reason


def test_worse_challenger_is_refused_equal_one_is_promoted():
    worse = decide({"rf": m(0.60, 0.3)}, m(0.65, 0.25), 0.2, 10)
    assert not worse.promote and "kept the champion" in worse.reason
    equal = decide({"rf": m(0.65, 0.3)}, m(0.65, 0.25), 0.2, 10)
    assert equal.promote


def test_a_champion_under_the_floor_is_replaced():
    decision = decide({"rf": m(0.55, 0.3)}, m(0.9, 0.1), 0.2, 10)
    assert decision.promote and "no longer meets the floor" in decision.reason
