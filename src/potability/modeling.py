"""The model zoo and the rule that picks a decision threshold: pure functions, no I/O.

Precision decides, but never at the price of a model that almost never says
"potable": every choice here is precision *subject to* a recall floor and a
minimum count of positive answers (DATA.md, "What this means for the model").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_predict
from sklearn.naive_bayes import GaussianNB
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

MODEL_KINDS = ("rf", "dt", "svm", "logreg", "nb")
MODEL_NAMES = {
    "rf": "random forest",
    "dt": "decision tree",
    "svm": "RBF SVM",
    "logreg": "logistic regression",
    "nb": "Gaussian naive Bayes",
}


def build_pipeline(
    kind: str, seed: int, imputer: str = "median", calibration_folds: int = 3
) -> Pipeline:
    """Return the untuned pipeline for ``kind``: imputation, scaling where it matters, estimator.

    The SVM gets its probabilities from a sigmoid calibrated on inner folds
    (what ``SVC(probability=True)`` did, now deprecated in scikit-learn 1.9).
    """
    estimators = {
        "rf": lambda: RandomForestClassifier(random_state=seed, n_jobs=1),
        "dt": lambda: DecisionTreeClassifier(random_state=seed),
        "svm": lambda: CalibratedClassifierCV(
            SVC(kernel="rbf", random_state=seed),
            method="sigmoid",
            ensemble=False,
            cv=calibration_folds,
        ),
        "logreg": lambda: LogisticRegression(max_iter=2000, random_state=seed),
        "nb": lambda: GaussianNB(),
    }
    if kind not in estimators:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=imputer))]
    if kind in {"svm", "logreg"}:  # distance- and penalty-based models need comparable scales
        steps.append(("scale", StandardScaler()))
    steps.append(("clf", estimators[kind]()))
    return Pipeline(steps)


def grid_prefix(kind: str) -> str:
    """Where a kind's hyper-parameters live inside its pipeline."""
    return "clf__estimator__" if kind == "svm" else "clf__"


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    precision: float
    recall: float
    positives: int
    feasible: bool  # False: no threshold meets the floor; the model must not be promoted


def choose_threshold(
    y_true: np.ndarray, proba: np.ndarray, min_recall: float, min_positives: int
) -> ThresholdChoice:
    """Pick the threshold with the best precision among those with recall >= floor.

    Ties go to the lower threshold (more recall). When nothing meets the floor,
    the threshold with the best recall is returned, marked infeasible.
    """
    y_true = np.asarray(y_true).astype(int)
    proba = np.asarray(proba, dtype=float)
    total_pos = int(y_true.sum())
    order = np.argsort(-proba, kind="mergesort")
    sorted_p, sorted_y = proba[order], y_true[order]
    tp = np.cumsum(sorted_y)
    predicted = np.arange(1, len(sorted_y) + 1)
    last_of_value = np.r_[sorted_p[1:] != sorted_p[:-1], True]  # a threshold takes all equal scores
    tp, predicted, thresholds = tp[last_of_value], predicted[last_of_value], sorted_p[last_of_value]
    precision = tp / predicted
    recall = tp / total_pos if total_pos else np.zeros_like(tp, dtype=float)
    ok = (recall >= min_recall) & (predicted >= min_positives)
    if not ok.any():
        i = int(np.argmax(recall))
        return ThresholdChoice(
            float(thresholds[i]), float(precision[i]), float(recall[i]), int(predicted[i]), False
        )
    best = np.max(precision[ok])
    candidates = np.flatnonzero(ok & (precision >= best - 1e-12))
    i = int(candidates[-1])  # lowest threshold among the best
    return ThresholdChoice(
        float(thresholds[i]), float(precision[i]), float(recall[i]), int(predicted[i]), True
    )


def precision_at_recall_scorer(min_recall: float, min_positives: int):
    """A GridSearchCV scorer: the best precision reachable on a fold at the recall floor."""

    def score(estimator, X, y) -> float:
        choice = choose_threshold(y, estimator.predict_proba(X)[:, 1], min_recall, min_positives)
        return choice.precision if choice.feasible else 0.0

    return score


@dataclass
class TrainResult:
    model: Pipeline
    best_params: dict[str, Any]
    cv_precision_at_recall: float
    cv_roc_auc: float
    threshold: ThresholdChoice  # chosen on out-of-fold probabilities of the tuned model


def tune(
    kind: str,
    X: np.ndarray,
    y: np.ndarray,
    grid: dict[str, list],
    *,
    seed: int,
    cv_folds: int,
    min_recall: float,
    min_positives: int,
    n_jobs: int = -1,
    imputer: str = "median",
    calibration_folds: int = 3,
    recall_margin: float = 0.0,
) -> TrainResult:
    """Grid-search one model kind and choose its threshold on out-of-fold probabilities.

    The test split never enters here: the threshold is a training-fold decision,
    reported later on held-out data. It aims at ``min_recall + recall_margin`` so
    that recall on unseen samples still clears the floor, rather than landing
    under it half the time.
    """
    folds = StratifiedKFold(n_splits=cv_folds, shuffle=True, random_state=seed)
    prefix = grid_prefix(kind)
    search = GridSearchCV(
        build_pipeline(kind, seed, imputer, calibration_folds),
        {f"{prefix}{k}": v for k, v in grid.items()},
        scoring={
            "precision_at_recall": precision_at_recall_scorer(min_recall, min_positives),
            "roc_auc": "roc_auc",
        },
        refit="precision_at_recall",
        cv=folds,
        n_jobs=n_jobs,
        error_score="raise",
    )
    search.fit(X, y)
    oof = cross_val_predict(
        search.best_estimator_, X, y, cv=folds, method="predict_proba", n_jobs=n_jobs
    )[:, 1]
    best = search.best_index_
    return TrainResult(
        model=search.best_estimator_,
        best_params={k.removeprefix(prefix): v for k, v in search.best_params_.items()},
        cv_precision_at_recall=float(search.cv_results_["mean_test_precision_at_recall"][best]),
        cv_roc_auc=float(search.cv_results_["mean_test_roc_auc"][best]),
        threshold=choose_threshold(y, oof, min(1.0, min_recall + recall_margin), min_positives),
    )


def classification_metrics(
    y_true: np.ndarray, proba: np.ndarray, threshold: float
) -> dict[str, Any]:
    """Test metrics at a fixed threshold: what regulators and the promotion rule read."""
    y_true = np.asarray(y_true).astype(int)
    predicted = (np.asarray(proba) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y_true, predicted, labels=[0, 1]).ravel()
    has_both = len(np.unique(y_true)) == 2
    return {
        "precision": float(precision_score(y_true, predicted, zero_division=0)),
        "recall": float(recall_score(y_true, predicted, zero_division=0)),
        "f1": float(f1_score(y_true, predicted, zero_division=0)),
        "roc_auc": float(roc_auc_score(y_true, proba)) if has_both else float("nan"),
        "positives": int(predicted.sum()),
        "support": int(len(y_true)),
        "threshold": float(threshold),
        "confusion": {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)},
    }
