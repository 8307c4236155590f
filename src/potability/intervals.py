"""Uncertainty of the numbers the pipeline decides on: pure functions, no I/O.

A test split of a few hundred rows gives a precision measured on a few dozen
"potable" answers; a difference of 0.05 between two models is often noise.
Every precision and recall is reported with a 95 % Wilson interval, and a
challenger replaces the champion only when a paired bootstrap on the same test
rows says its precision is higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

Z95 = 1.959963984540054  # two-sided 95 % normal quantile


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion; (0, 1) when there are no trials."""
    if trials <= 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def one_sided_z(level: float) -> float:
    """The normal quantile of a one-sided bound at confidence ``level`` (1.645 at 0.95)."""
    return NormalDist().inv_cdf(level)


def wilson_lower(successes: float, trials: float, level: float) -> float:
    """One-sided Wilson lower bound at confidence ``level``: the truth is above it in ``level`` of cases."""
    return wilson(successes, trials, one_sided_z(level))[0]


def wilson_upper(successes: float, trials: float, level: float) -> float:
    """One-sided Wilson upper bound at confidence ``level``: the truth is under it in ``level`` of cases."""
    return wilson(successes, trials, one_sided_z(level))[1]


def precision_recall_intervals(tp: int, fp: int, fn: int) -> dict[str, list[float]]:
    """95 % Wilson intervals of precision (tp of tp+fp) and recall (tp of tp+fn)."""
    return {
        "precision_ci": [round(v, 4) for v in wilson(tp, tp + fp)],
        "recall_ci": [round(v, 4) for v in wilson(tp, tp + fn)],
    }


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # challenger precision - champion precision on the same rows
    low: float  # 95 % bootstrap interval of the difference
    high: float
    p_better: float  # share of bootstrap draws where the challenger's precision is higher

    def describe(self) -> str:
        return f"precision difference {self.difference:+.3f} (95 % CI {self.low:+.3f} to {self.high:+.3f})"


def _precision(y: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Precision per bootstrap row of ``y``/``predicted`` (shape [draws, n]); 0 without positives."""
    positives = predicted.sum(axis=1)
    tp = (predicted & (y == 1)).sum(axis=1)
    return np.divide(tp, positives, out=np.zeros(len(y), dtype=float), where=positives > 0)


def paired_bootstrap(
    y: np.ndarray,
    challenger: np.ndarray,
    champion: np.ndarray,
    *,
    draws: int,
    seed: int,
) -> PairedComparison:
    """Bootstrap the precision difference of two sets of 0/1 answers on the same rows.

    Rows are resampled together, so what both models get right or wrong in
    common cancels out: the interval is that of the *difference*, far narrower
    than two separate intervals.
    """
    y = np.asarray(y).astype(int)
    a = np.asarray(challenger).astype(bool)
    b = np.asarray(champion).astype(bool)
    rng = np.random.default_rng(seed)
    diffs = np.empty(draws)
    chunk = 500  # bounded memory: draws x n booleans per chunk
    for start in range(0, draws, chunk):
        idx = rng.integers(0, len(y), size=(min(chunk, draws - start), len(y)))
        yy = y[idx]
        diffs[start : start + len(idx)] = _precision(yy, a[idx]) - _precision(yy, b[idx])
    observed = float(_precision(y[None, :], a[None, :])[0] - _precision(y[None, :], b[None, :])[0])
    low, high = np.quantile(diffs, [0.025, 0.975])
    return PairedComparison(observed, float(low), float(high), float(np.mean(diffs > 0)))
