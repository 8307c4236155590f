"""Synthetic lab rows with the real data set's shape (DATA.md), for a machine with no download.

The signal is where the real data has it: in the spread, not the means. Both
classes share each feature's mean; potable samples have a narrower ph and wider
Chloramines, Sulfate and Hardness. A linear model finds almost nothing, trees a
little, as on the real file.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from potability.schema import FEATURE_NAMES, LABEL


@dataclass(frozen=True)
class FeatureStats:
    mean: float
    std_not_potable: float
    std_potable: float
    missing: float  # share of rows where the lab recorded nothing
    low: float  # observed min / max in the real file: values are clipped there
    high: float
    skew: float


# From DATA.md (measured on the real water_potability.csv).
REAL_STATS: dict[str, FeatureStats] = {
    "ph": FeatureStats(7.082, 1.683, 1.447, 0.150, 0.0, 14.0, 0.03),
    "Hardness": FeatureStats(196.37, 31.06, 35.56, 0.0, 47.4, 323.1, -0.04),
    "Solids": FeatureStats(22006.0, 8543.0, 9077.0, 0.0, 321.0, 61227.0, 0.62),
    "Chloramines": FeatureStats(7.122, 1.501, 1.704, 0.0, 0.35, 13.13, -0.01),
    "Sulfate": FeatureStats(333.77, 36.75, 47.71, 0.238, 129.0, 481.0, -0.04),
    "Conductivity": FeatureStats(426.18, 80.05, 82.03, 0.0, 181.5, 753.3, 0.27),
    "Organic_carbon": FeatureStats(14.285, 3.335, 3.265, 0.0, 2.2, 28.3, 0.03),
    "Trihalomethanes": FeatureStats(66.40, 16.08, 16.33, 0.049, 0.74, 124.0, -0.08),
    "Turbidity": FeatureStats(3.967, 0.780, 0.781, 0.0, 1.45, 6.74, -0.01),
}
POTABLE_SHARE = 0.390
_SKEWED = 0.1  # above this |skew| a shifted gamma replaces the normal


def _draw(rng: np.random.Generator, mean: float, std: np.ndarray, skew: float) -> np.ndarray:
    """Draw with the given mean, per-row std and skew (shifted gamma when skewed)."""
    if abs(skew) <= _SKEWED:
        return mean + rng.standard_normal(std.shape) * std
    shape = (2.0 / skew) ** 2
    gamma = rng.gamma(shape, 1.0, std.shape)  # mean shape, std sqrt(shape)
    return mean + np.sign(skew) * (gamma - shape) / np.sqrt(shape) * std


def generate(rows: int, seed: int) -> pd.DataFrame:
    """Return ``rows`` synthetic lab rows (same seed, same rows) with stable ``sample_id``s."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    rng = np.random.default_rng(seed)
    label = (rng.random(rows) < POTABLE_SHARE).astype(np.int64)
    frame = pd.DataFrame({"sample_id": [f"syn-{seed}-{i:06d}" for i in range(rows)]})
    for name in FEATURE_NAMES:
        stats = REAL_STATS[name]
        std = np.where(label == 1, stats.std_potable, stats.std_not_potable)
        values = np.clip(_draw(rng, stats.mean, std, stats.skew), stats.low, stats.high)
        values[rng.random(rows) < stats.missing] = np.nan
        frame[name] = values
    frame[LABEL] = label
    return frame
