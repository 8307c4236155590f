"""ROC and calibration tables of one model on one split: the data behind two `dvc plots`.

Pure functions of labels and probabilities, so the promote stage only writes
what they return. A reliability diagram answers the question a threshold
cannot: when the model says 0.7, are 70 % of such samples potable?
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

ROC_COLUMNS = ["fpr", "tpr", "chance", "threshold"]
CALIBRATION_COLUMNS = ["predicted", "observed", "perfect", "samples"]


def roc_table(y: np.ndarray, proba: np.ndarray, points: int) -> pd.DataFrame:
    """The ROC curve, thinned to at most ``points`` rows (first and last kept), with the chance line.

    Empty (header only) when the split lacks one class: no curve exists then.
    """
    if len(np.unique(y)) < 2:
        return pd.DataFrame(columns=ROC_COLUMNS)
    fpr, tpr, thresholds = roc_curve(y, proba)
    keep = np.unique(np.linspace(0, len(fpr) - 1, points).round().astype(int))
    # sklearn's first threshold is +inf (nothing predicted potable): 1.0 says the same in a CSV
    return pd.DataFrame(
        {
            "fpr": fpr[keep].round(4),
            "tpr": tpr[keep].round(4),
            "chance": fpr[keep].round(4),
            "threshold": np.minimum(thresholds[keep], 1.0).round(4),
        }
    )


def calibration_table(y: np.ndarray, proba: np.ndarray, bins: int) -> pd.DataFrame:
    """Reliability diagram: per equal-width probability bin, mean predicted vs observed share.

    Bins no sample fell into are left out (their share is undefined, not 0).
    """
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = which == b
        if members.any():
            predicted = float(proba[members].mean())
            rows.append(
                {
                    "predicted": round(predicted, 4),
                    "observed": round(float(np.mean(y[members])), 4),
                    "perfect": round(predicted, 4),
                    "samples": int(members.sum()),
                }
            )
    return pd.DataFrame(rows, columns=CALIBRATION_COLUMNS)
