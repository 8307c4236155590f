"""What regulators and clients see: model card, live answers, lab agreement, drift.

Pure functions over frames and the production meta; the server's page and its
JSON twins (``/v1/stats/...``) both call them, so the two never disagree.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from potability.schema import FEATURE_NAMES

_EPS = 1e-4  # keeps empty bins out of log(0) in the PSI
# The page's numbers when params.yaml (``page:``) does not set them (a server host without a checkout).
PAGE_DEFAULTS = {
    "drift_psi_threshold": 0.2,
    "live_days": 7,
    "lab_match_minutes": 60,
}


def reference_profile(frame: pd.DataFrame, bins: int) -> dict[str, Any]:
    """Per feature: quantile bin edges of the training data and the share in each bin (+ missing).

    Stored in meta.json at promotion, so the server can measure drift without the training data.
    """
    profile = {}
    for name in FEATURE_NAMES:
        values = frame[name].to_numpy(dtype=float)
        present = values[~np.isnan(values)]
        edges = (
            np.unique(np.quantile(present, np.linspace(0, 1, bins + 1))[1:-1])
            if len(present)
            else np.array([])
        )
        profile[name] = {
            "edges": edges.round(6).tolist(),
            "shares": _shares(values, edges).round(6).tolist(),
        }
    return profile


def _shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Shares of values per bin (len(edges)+1 bins), then the missing share last."""
    present = values[~np.isnan(values)]
    counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
    return np.append(counts, len(values) - len(present)) / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of two share vectors."""
    e, a = np.clip(expected, _EPS, None), np.clip(actual, _EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def drift(
    profile: dict[str, Any], live: pd.DataFrame, threshold: float, min_rows: int = 30
) -> dict[str, Any]:
    """PSI of live sensor inputs against the training profile, per feature, flagged past ``threshold``."""
    counts = {
        name: _shares(live[name].to_numpy(dtype=float), np.asarray(ref["edges"])) * len(live)
        for name, ref in profile.items()
        if name in live and ref
    }
    return drift_from_counts(profile, counts, len(live), threshold, min_rows)


def drift_from_counts(
    profile: dict[str, Any],
    counts: dict[str, np.ndarray],
    rows: int,
    threshold: float,
    min_rows: int = 30,
) -> dict[str, Any]:
    """PSI per feature from live counts per bin (the profile's bins, then missing last).

    The page's drift panel gets these counts from the hourly histogram rollup,
    so it never reads raw answers.
    """
    if rows < min_rows:
        return {
            "rows": rows,
            "threshold": threshold,
            "features": [],
            "note": f"drift needs at least {min_rows} live answers; {rows} so far",
        }
    features = []
    for name in FEATURE_NAMES:
        ref = profile.get(name)
        if not ref or name not in counts:
            continue
        actual = np.asarray(counts[name], dtype=float) / rows
        value = psi(np.asarray(ref["shares"]), actual)
        features.append(
            {
                "feature": name,
                "psi": round(value, 4),
                "flagged": value > threshold,
                "live_missing": round(float(actual[-1]), 4),
                "train_missing": ref["shares"][-1],
            }
        )
    return {
        "rows": rows,
        "threshold": threshold,
        "features": features,
        "flagged": [f["feature"] for f in features if f["flagged"]],
    }


def model_card(meta: dict[str, Any] | None, history: list[dict[str, Any]]) -> dict[str, Any]:
    if not meta:
        return {"available": False}
    metrics = meta.get("metrics", {})
    return {
        "available": True,
        "version": meta.get("version"),
        "kind": meta.get("kind"),
        "model_name": meta.get("model_name"),
        "trained_at": meta.get("trained_at"),
        "promoted_at": meta.get("promoted_at"),
        "n_train": meta.get("n_train"),
        "n_test": meta.get("n_test"),
        "threshold": meta.get("threshold"),
        "min_recall": meta.get("min_recall"),
        "precision": metrics.get("precision"),
        "recall": metrics.get("recall"),
        "precision_ci": metrics.get("precision_ci"),  # 95 % Wilson intervals on the test split
        "recall_ci": metrics.get("recall_ci"),
        # the precision a user can rely on (out-of-fold and test answers pooled) and the recall rule
        "precision_lower_bound": metrics.get("precision_lower_bound"),
        "precision_pooled": metrics.get("precision_pooled"),
        "precision_bound_level": metrics.get("precision_bound_level"),
        "recall_rule": metrics.get("recall_rule"),
        "operating_points": metrics.get("operating_points"),
        "f1": metrics.get("f1"),
        "roc_auc": metrics.get("roc_auc"),
        "confusion": metrics.get("confusion"),
        "history": [
            {
                "decided_at": h.get("decided_at"),
                "promoted": h.get("promote"),
                "challenger": h.get("challenger"),
                "reason": h.get("reason"),
                "version": h.get("version"),
                "candidates": h.get("candidates") or {},
            }
            for h in reversed(history)
        ],
    }


def live_summary(hourly: pd.DataFrame) -> dict[str, Any]:
    """Answers and potable share per sensor, from the hourly aggregate (vectorised: a week of
    a few hundred sensors is tens of thousands of hours)."""
    if hourly.empty:
        return {"answers": 0, "sensors": [], "hourly": []}
    answers = hourly["answers"].to_numpy(dtype=np.int64)
    shares = hourly["potable_share"].to_numpy(dtype=float)
    per_sensor = (
        hourly.assign(potable=answers * shares)
        .groupby("sensor_id")
        .agg(answers=("answers", "sum"), potable=("potable", "sum"), hours=("answers", "size"))
    )
    sensors = [
        {
            "sensor_id": sensor,
            "answers": int(n),
            "potable_share": round(float(p / n), 4),
            "hours_active": int(h),
        }
        for sensor, n, p, h in per_sensor.itertuples()
    ]
    hours = [h.isoformat() for h in hourly["hour"]]
    return {
        "answers": int(answers.sum()),
        "sensors": sensors,
        "hourly": [
            {"hour": h, "sensor_id": s, "answers": int(a), "potable_share": round(float(p), 4)}
            for h, s, a, p in zip(hours, hourly["sensor_id"], answers, shares, strict=True)
        ],
    }


def lab_agreement(matches: pd.DataFrame) -> dict[str, Any]:
    """Realised precision of live "potable" answers, judged by matching lab samples (one row each)."""
    said_potable = matches["potable"].astype(bool)
    truly = matches["potability"].astype(int) == 1
    return agreement_from_confusion(
        tp=int((said_potable & truly).sum()),
        fp=int((said_potable & ~truly).sum()),
        fn=int((~said_potable & truly).sum()),
        tn=int((~said_potable & ~truly).sum()),
    )


def agreement_from_confusion(tp: int, fp: int, fn: int, tn: int) -> dict[str, Any]:
    """Realised precision and recall from the matched samples' confusion counts.

    The page gets the counts from the ``water.lab_matches`` rollup in one
    aggregate, however many lab samples are matched.
    """
    matched = tp + fp + fn + tn
    if not matched:
        return {
            "matched": 0,
            "potable_answers": 0,
            "realised_precision": None,
            "realised_recall": None,
        }
    return {
        "matched": matched,
        "potable_answers": tp + fp,
        "realised_precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "realised_recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn},
    }
