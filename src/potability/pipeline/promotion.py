"""The promotion rule, as pure functions: who may replace the champion, and why.

1. The challenger is chosen on training folds only: the candidate with the best
   out-of-fold precision at the aimed recall (``oof`` in each candidate's
   metrics). The test split is not consulted to choose.
2. The test split confirms it once, with a test rather than a coin flip: it is
   refused when the test split shows, at the confidence level of params, that
   its true recall is under the floor (the one-sided upper Wilson bound of test
   recall is under ``min_recall``), or when it gives fewer than
   ``min_positives`` positive answers; then nothing is promoted (no second
   pick on the test rows). A degenerate model that says "potable" three times
   with precision 1.0 never qualifies.
3. Against a champion that still meets the floor, the challenger must be
   *shown* better on the same test rows: a paired bootstrap of the precision
   difference, better in at least ``confidence`` of the draws. A champion that
   breaks the floor is replaced by any qualifying challenger.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from potability.intervals import PairedComparison, wilson_upper


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


def choose_challenger(candidates: dict[str, dict[str, Any]]) -> tuple[str | None, dict[str, str]]:
    """The candidate with the best out-of-fold precision among those whose threshold was feasible."""
    notes: dict[str, str] = {}
    ranked: list[tuple[float, str]] = []
    for kind, metrics in sorted(candidates.items()):
        oof = metrics.get("oof") or {}
        if not oof.get("oof_feasible"):
            notes[kind] = "not eligible: no threshold reaches the aimed recall on training folds"
        else:
            ranked.append((oof["oof_precision"], kind))
    if not ranked:
        return None, notes
    ranked.sort(key=lambda r: (-r[0], r[1]))
    best_p, best = ranked[0]
    for p, kind in ranked[1:]:
        notes[kind] = f"not chosen: out-of-fold precision {p:.3f} < {best}'s {best_p:.3f}"
    return best, notes


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
    best, notes = choose_challenger(candidates)
    if best is None:
        return Decision(
            False,
            None,
            "no candidate reaches the recall floor on training folds; the champion stays",
            notes,
        )
    metrics = candidates[best]
    at = (
        f"test precision {metrics['precision']:.3f}{_ci(metrics, 'precision')} "
        f"at recall {metrics['recall']:.3f}{_ci(metrics, 'recall')}"
    )
    why_not = qualifies(metrics, min_recall, min_positives, level)
    if why_not:
        notes[best] = f"not eligible: chosen on training folds, but on the test split {why_not}"
        return Decision(
            False,
            best,
            f"kept the champion: challenger {best} fails the recall floor on the test split ({why_not})",
            notes,
        )
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
