"""The promotion rule, as pure functions: who may replace the champion, and why.

1. The challenger is chosen on training folds only (``oof`` in each
   candidate's metrics): the soft vote of the best kinds, unless a single kind
   is shown better out of fold (its out-of-fold precision's lower bound is
   above the vote's); then the rest by out-of-fold precision at the aimed
   recall. The test split is not consulted to rank.
2. The test split confirms it once, with a test rather than a coin flip: it is
   refused when the test split shows, at the confidence level of params, that
   its true recall is under the floor (the one-sided upper Wilson bound of test
   recall is under ``min_recall``), or when it gives fewer than
   ``min_positives`` positive answers. A refused candidate's place goes to the
   next one in out-of-fold order that the test confirms (the test vetoes, it
   never ranks); nothing is promoted when it refuses them all. A degenerate
   model that says "potable" three times with precision 1.0 never qualifies.
3. Against a champion that still meets the floor, the challenger must be
   *shown* better on the same test rows: a paired bootstrap of the precision
   difference, better in at least ``confidence`` of the draws. A champion that
   breaks the floor is replaced by any qualifying challenger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from potability.intervals import PairedComparison, wilson_lower, wilson_upper
from potability.pipeline.modeling import VOTE


@dataclass
class Decision:
    promote: bool
    challenger: str | None
    reason: str
    candidates: dict[str, str] = field(default_factory=dict)  # kind -> why it was or wasn't chosen

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pct(share: float) -> str:
    """0.95 as ``95%``, 0.975 as ``97.5%``: no rounding a regulator would have to undo."""
    return f"{share * 100:g}%"


def recall_rule(min_recall: float, min_positives: int, level: float) -> str:
    """The confirmation rule in one sentence a regulator can read (page, metrics, docs)."""
    return (
        f"A model is refused when its test shows, with {_pct(level)} confidence, that it finds "
        f"fewer than {_pct(min_recall)} of potable samples (the upper {_pct(level)} bound of its "
        f"test recall is under {_pct(min_recall)}) or when it calls fewer than {min_positives} "
        f"test samples potable; otherwise the test confirms it."
    )


def recall_upper_bound(metrics: dict[str, Any], level: float) -> float:
    """One-sided upper Wilson bound at ``level`` of the recall in ``metrics`` (its confusion counts)."""
    confusion = metrics["confusion"]
    return wilson_upper(confusion["tp"], confusion["tp"] + confusion["fn"], level)


def qualifies(
    metrics: dict[str, Any], min_recall: float, min_positives: int, level: float
) -> str | None:
    """None if the test does not show recall under the floor at ``level``, else the reason."""
    upper = recall_upper_bound(metrics, level)
    if upper < min_recall:
        return (
            f"recall {metrics['recall']:.3f}{_ci(metrics, 'recall')} is shown under the floor "
            f"{min_recall:.2f}: its upper {_pct(level)} bound {upper:.3f} < {min_recall:.2f}"
        )
    if metrics["positives"] < min_positives:
        return f"only {metrics['positives']} positive answers (< {min_positives})"
    return None


def _ci(metrics: dict[str, Any], key: str) -> str:
    """`` (95 % CI a-b)`` when the metrics carry the interval of ``key``."""
    ci = metrics.get(f"{key}_ci")
    return f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""


def challenger_order(
    candidates: dict[str, dict[str, Any]], level: float
) -> tuple[list[str], dict[str, str]]:
    """The eligible candidates in the order they are offered to the test split, chosen out of fold.

    The soft vote comes first: its members' out-of-fold precisions lie within
    their own noise (about +-0.03 on a few hundred answers), so taking the best
    of them is partly luck (the winner's curse), while the vote averages their
    errors and needs no pick. A single kind goes before it only when it is
    *shown* better out of fold: the one-sided lower bound at ``level`` of its
    out-of-fold precision (Wilson, on its answers per repeat) is above the
    vote's out-of-fold precision. The rest follow by out-of-fold precision.
    Candidates whose threshold is infeasible are not eligible.
    """
    notes: dict[str, str] = {}
    ranked: list[tuple[float, str]] = []
    for kind, metrics in sorted(candidates.items()):
        oof = metrics.get("oof") or {}
        if not oof.get("oof_feasible"):
            notes[kind] = "not eligible: no threshold reaches the aimed recall on training folds"
        else:
            ranked.append((oof["oof_precision"], kind))
    ranked.sort(key=lambda r: (-r[0], r[1]))
    order = [kind for _, kind in ranked]
    if VOTE in order and order[0] != VOTE:
        vote_p = candidates[VOTE]["oof"]["oof_precision"]
        best = candidates[order[0]]["oof"]
        bound = wilson_lower(best.get("oof_tp", 0.0), best.get("oof_answers", 0.0), level)
        if bound <= vote_p:
            order.remove(VOTE)
            order.insert(0, VOTE)
            notes[order[1]] = (
                f"not first: out-of-fold precision {best['oof_precision']:.3f} is not shown above "
                f"the vote's {vote_p:.3f} (its lower {_pct(level)} bound {bound:.3f})"
            )
    return order, notes


def choose_challenger(
    candidates: dict[str, dict[str, Any]], level: float
) -> tuple[str | None, dict[str, str]]:
    """The first candidate of :func:`challenger_order` (None when none is eligible)."""
    order, notes = challenger_order(candidates, level)
    return (order[0] if order else None), notes


def confirmed_challenger(
    candidates: dict[str, dict[str, Any]], min_recall: float, min_positives: int, level: float
) -> tuple[str | None, dict[str, str]]:
    """The first candidate in out-of-fold order that the test split does not refuse.

    The test split only vetoes: it never ranks. When it refuses the first
    candidate (its recall shown under the floor), the next one in out-of-fold
    order is offered to the same rule, so an unlucky test split does not leave
    a first deployment with nothing while a candidate it confirms exists.
    None when the test refuses every eligible candidate.
    """
    order, notes = challenger_order(candidates, level)
    for rank, kind in enumerate(order):
        why_not = qualifies(candidates[kind], min_recall, min_positives, level)
        if why_not is None:
            chosen_p = candidates[kind]["oof"]["oof_precision"]
            for later in order[rank + 1 :]:
                notes.setdefault(
                    later,
                    f"not chosen: out-of-fold precision {candidates[later]['oof']['oof_precision']:.3f}"
                    f"; {kind} ({chosen_p:.3f}) comes first out of fold and the test confirms it",
                )
            return kind, notes
        notes[kind] = f"not eligible: on the test split {why_not}"
    return None, notes


def decide(
    candidates: dict[str, dict[str, Any]],
    champion: dict[str, Any] | None,
    min_recall: float,
    min_positives: int,
    comparison: PairedComparison | None = None,
    confidence: float = 0.95,
    *,
    level: float,
) -> Decision:
    """Choose the challenger among ``candidates`` and judge it against ``champion``.

    ``candidates`` holds each kind's test metrics with its out-of-fold ones
    under ``oof``; ``champion`` the production model's metrics re-measured on
    the same test split (None when nothing is in production yet);
    ``comparison`` the paired bootstrap of challenger vs champion on those rows;
    ``level`` the confidence level of the recall test (train.confidence_level).
    """
    first, _ = choose_challenger(candidates, level)
    if first is None:
        return Decision(
            False,
            None,
            "no candidate reaches the recall floor on training folds; the champion stays",
            challenger_order(candidates, level)[1],
        )
    best, notes = confirmed_challenger(candidates, min_recall, min_positives, level)
    if best is None:
        why_not = qualifies(candidates[first], min_recall, min_positives, level)
        return Decision(
            False,
            first,
            f"kept the champion: challenger {first} fails the recall floor on the test split "
            f"({why_not}), and so does every other eligible candidate",
            notes,
        )
    metrics = candidates[best]
    at = (
        f"test precision {metrics['precision']:.3f}{_ci(metrics, 'precision')} "
        f"at recall {metrics['recall']:.3f}{_ci(metrics, 'recall')}"
    )
    if best != first:
        at += f" ({first}, first out of fold, is refused by the test: {notes[first].split(': ', 1)[1]})"
    champion_fails = qualifies(champion, min_recall, min_positives, level) if champion else None
    if champion is None:
        reason = f"promoted {best}: first champion, {at}"
    elif champion_fails:
        reason = f"promoted {best}: the champion no longer meets the floor ({champion_fails}); {at}"
    elif comparison is None:
        raise ValueError("a champion that meets the floor needs a paired comparison to be judged")
    elif comparison.p_better >= confidence:
        reason = (
            f"promoted {best}: better than the champion on the same test rows, "
            f"{comparison.describe()}, higher in {comparison.p_better:.0%} of bootstrap draws; {at}"
        )
    else:
        notes[best] = (
            f"best challenger, but not shown better than the champion: {comparison.describe()}"
        )
        return Decision(
            False,
            best,
            f"kept the champion: challenger {best} is not shown better on the same test rows "
            f"({comparison.describe()}, higher in {comparison.p_better:.0%} of draws "
            f"< {confidence:.0%}); {at}",
            notes,
        )
    notes[best] = "promoted"
    return Decision(True, best, reason, notes)
