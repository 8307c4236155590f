"""The promotion rule: chosen on training folds, confirmed once on test, judged by a paired bootstrap."""

import numpy as np
import pytest

from potability.intervals import PairedComparison, paired_bootstrap
from potability.pipeline.promotion import (
    challenger_order,
    choose_challenger,
    confirmed_challenger,
    decide,
    recall_rule,
)


def m(precision, recall, positives=50, oof=0.6, feasible=True, potable=180, oof_answers=270):
    tp = round(recall * potable)
    return {
        "precision": precision,
        "recall": recall,
        "positives": positives,
        "confusion": {"tp": tp, "fn": potable - tp},
        "precision_ci": [precision - 0.1, min(1.0, precision + 0.1)],
        "oof": {
            "oof_precision": oof,
            "oof_feasible": float(feasible),
            "oof_tp": oof * oof_answers,
            "oof_answers": oof_answers,
        },
    }


def better(p=0.99):
    return PairedComparison(0.08, 0.01, 0.15, p)


def test_the_challenger_is_chosen_out_of_fold_not_on_the_test_split():
    # qda has the best test precision, but rf the best out-of-fold precision: rf is the challenger
    candidates = {"qda": m(0.90, 0.30, oof=0.60), "rf": m(0.62, 0.30, oof=0.68)}
    assert choose_challenger(candidates, 0.95)[0] == "rf"
    decision = decide(candidates, None, 0.25, 10, level=0.95)
    assert decision.promote and decision.challenger == "rf"
    assert "out-of-fold precision 0.600; rf (0.680) comes first" in decision.candidates["qda"]
    assert "first champion" in decision.reason and "95 % CI 0.520-0.720" in decision.reason


def test_a_challenger_refused_on_test_gives_way_to_the_next_one_out_of_fold():
    # the degenerate svm wins out of fold but says "potable" twice on test: the test vetoes it,
    # and the next candidate out of fold (rf), which the test confirms, takes its place
    candidates = {
        "svm": m(1.0, 0.01, 2, oof=0.7),
        "rf": m(0.62, 0.30, oof=0.65),
        "qda": m(0.95, 0.30, oof=0.60),
    }
    decision = decide(candidates, None, 0.25, 10, level=0.95)
    assert decision.promote and decision.challenger == "rf", decision.reason
    assert "first champion" in decision.reason and "svm, first out of fold, is refused" in (
        decision.reason
    )
    assert "not eligible: on the test split" in decision.candidates["svm"]
    assert "rf (0.650) comes first out of fold" in decision.candidates["qda"]
    # against a champion the one the test confirms is the one compared
    assert confirmed_challenger(candidates, 0.25, 10, 0.95)[0] == "rf"
    kept = decide(candidates, m(0.6, 0.3), 0.25, 10, better(0.5), level=0.95)
    assert not kept.promote and kept.challenger == "rf"


def test_nothing_is_promoted_when_the_test_refuses_every_candidate():
    candidates = {"svm": m(1.0, 0.01, 2, oof=0.7), "rf": m(0.62, 0.15, oof=0.65)}
    decision = decide(candidates, None, 0.25, 10, level=0.95)
    assert not decision.promote and decision.challenger == "svm"
    assert "and so does every other eligible candidate" in decision.reason
    assert all("not eligible: on the test split" in why for why in decision.candidates.values())


@pytest.mark.parametrize(
    ("single_oof", "answers", "first"),
    [
        (0.66, 270, "vote"),  # 0.02 above the vote on 270 answers: inside its noise
        (0.72, 270, "svm"),  # lower 95 % bound 0.675 > 0.64: shown better out of fold
        (0.66, 20_000, "svm"),  # the same 0.02 on 20,000 answers is shown
    ],
)
def test_the_vote_goes_first_unless_a_single_kind_is_shown_better_out_of_fold(
    single_oof, answers, first
):
    candidates = {
        "vote": m(0.6, 0.3, oof=0.64),
        "svm": m(0.6, 0.3, oof=single_oof, oof_answers=answers),
        "rf": m(0.6, 0.3, oof=0.63),
    }
    order, notes = challenger_order(candidates, 0.95)
    assert order[0] == first and order[1:] == [k for k in ("vote", "svm", "rf") if k != first]
    if first == "vote":
        assert "not shown above the vote's 0.640" in notes["svm"]


def test_no_feasible_threshold_keeps_the_champion():
    decision = decide({"svm": m(1.0, 0.3, feasible=False)}, m(0.6, 0.3), 0.25, 10, level=0.95)
    assert not decision.promote and decision.challenger is None
    assert "recall floor on training folds" in decision.reason


@pytest.mark.parametrize(("p_better", "promoted"), [(0.99, True), (0.95, True), (0.80, False)])
def test_the_champion_is_replaced_only_when_shown_better(p_better, promoted):
    decision = decide(
        {"rf": m(0.70, 0.3)}, m(0.65, 0.3), 0.25, 10, better(p_better), 0.95, level=0.95
    )
    assert decision.promote is promoted
    assert "precision difference +0.080 (95 % CI +0.010 to +0.150)" in decision.reason
    if not promoted:
        assert "kept the champion" in decision.reason and "80% of draws < 95%" in decision.reason


@pytest.mark.parametrize(
    ("recall", "potable", "confirmed"),
    [
        (0.22, 180, True),  # under the floor, but 180 potable rows cannot show it: upper bound 0.27
        (0.19, 180, False),  # upper 95 % bound 0.239 < 0.25: shown under the floor
        (0.22, 2000, False),  # the same recall on 2,000 potable rows is shown under the floor
        (0.30, 180, True),
    ],
)
def test_the_test_split_refuses_only_a_recall_shown_under_the_floor(recall, potable, confirmed):
    decision = decide({"rf": m(0.70, recall, potable=potable)}, None, 0.25, 10, level=0.95)
    assert decision.promote is confirmed, decision.reason
    if not confirmed:
        assert "shown under the floor" in decision.reason and "upper 95% bound" in decision.reason


def test_the_recall_rule_reads_as_one_sentence():
    rule = recall_rule(0.25, 10, 0.95)
    assert rule.count(". ") == 0 and rule.endswith(".")
    assert "95% confidence" in rule and "25%" in rule and "fewer than 10" in rule
    assert "97.5% confidence" in recall_rule(0.25, 10, 0.975)


def test_a_champion_under_the_floor_is_replaced_without_a_comparison():
    decision = decide({"rf": m(0.55, 0.3)}, m(0.9, 0.1), 0.25, 10, level=0.95)
    assert decision.promote and "no longer meets the floor" in decision.reason


def test_a_champion_meeting_the_floor_needs_a_comparison():
    with pytest.raises(ValueError, match="paired comparison"):
        decide({"rf": m(0.7, 0.3)}, m(0.65, 0.3), 0.25, 10, level=0.95)


def test_paired_bootstrap_sees_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    champion = rng.random(400) < 0.3
    good = champion.copy()
    # drops most false alarms
    good[(y == 0) & champion] = rng.random(((y == 0) & champion).sum()) < 0.3
    shown = paired_bootstrap(y, good, champion, draws=1000, seed=1)
    assert shown.difference > 0.1 and shown.low > 0 and shown.p_better > 0.99
    same = paired_bootstrap(y, champion, champion, draws=1000, seed=1)
    assert same.difference == 0 and same.p_better == 0
    again = paired_bootstrap(y, good, champion, draws=1000, seed=1)
    assert again == shown  # seeded: two workspaces reach the same decision
