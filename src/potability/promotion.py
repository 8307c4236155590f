"""The promotion rule, as pure functions: who may replace the champion, and why.

A candidate qualifies only with test recall >= the floor and enough positive
answers; the challenger is the qualifying candidate with the best test
precision; it replaces the champion only if it is at least as good on the same
test split. A degenerate model that says "potable" three times with precision
1.0 never qualifies.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Decision:
    promote: bool
    challenger: str | None
    reason: str
    candidates: dict[str, str] = field(default_factory=dict)  # kind -> why it was or wasn't chosen

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def qualifies(metrics: dict[str, Any], min_recall: float, min_positives: int) -> str | None:
    """None if the metrics meet the floor, else the reason they do not."""
    if metrics["recall"] < min_recall:
        return f"recall {metrics['recall']:.3f} is under the floor {min_recall:.2f}"
    if metrics["positives"] < min_positives:
        return f"only {metrics['positives']} positive answers (< {min_positives})"
    return None


def decide(
    candidates: dict[str, dict[str, Any]],
    champion: dict[str, Any] | None,
    min_recall: float,
    min_positives: int,
) -> Decision:
    """Choose the challenger among ``candidates`` (test metrics by kind) and judge it against ``champion``.

    ``champion`` holds the current production model's metrics re-measured on
    the same test split (None when nothing is in production yet).
    """
    notes: dict[str, str] = {}
    qualified: list[tuple[float, float, str]] = []
    for kind, metrics in sorted(candidates.items()):
        why_not = qualifies(metrics, min_recall, min_positives)
        if why_not:
            notes[kind] = f"not eligible: {why_not}"
        else:
            qualified.append((metrics["precision"], metrics["recall"], kind))
    if not qualified:
        return Decision(
            False, None, "no candidate meets the recall floor; the champion stays", notes
        )
    qualified.sort(reverse=True)
    precision, recall, best = qualified[0]
    for p, _, kind in qualified[1:]:
        notes[kind] = f"eligible, but precision {p:.3f} < {best}'s {precision:.3f}"
    if champion is not None and qualifies(champion, min_recall, min_positives) is None:
        if precision < champion["precision"]:
            notes[best] = (
                f"best challenger, but precision {precision:.3f} < champion's {champion['precision']:.3f}"
            )
            return Decision(
                False, best,
                f"kept the champion: challenger {best} has test precision {precision:.3f} "
                f"< champion {champion['precision']:.3f} on the same test split",
                notes,
            )  # fmt: skip
        reason = (
            f"promoted {best}: test precision {precision:.3f} >= champion {champion['precision']:.3f} "
            f"at recall {recall:.3f}"
        )
    elif champion is not None:
        reason = f"promoted {best}: the champion no longer meets the floor ({qualifies(champion, min_recall, min_positives)})"
    else:
        reason = f"promoted {best}: first champion, test precision {precision:.3f} at recall {recall:.3f}"
    notes[best] = "promoted"
    return Decision(True, best, reason, notes)
