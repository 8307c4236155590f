"""The model zoo, the search and the rule that picks a decision threshold: pure functions, no I/O.

Precision decides, but never at the price of a model that almost never says
"potable": every choice here is precision *subject to* a recall floor and a
minimum count of positive answers (DATA.md, "What this means for the model").

Nothing here sees the test split. Every kind is tuned on repeated stratified
folds of the training rows; the hyper-parameters, the candidate's own score and
its threshold all come from those out-of-fold probabilities, and the threshold
aims above the floor so that recall on unseen rows still clears it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, VotingClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score
from sklearn.model_selection import ParameterGrid, RepeatedStratifiedKFold
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder, StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from potability.intervals import precision_recall_intervals

VOTE = "vote"  # the soft vote of the best single kinds: a candidate like the others
MODEL_KINDS = ("rf", "et", "svm", "knn", "qda", "logreg", "nb", "dt")
MODEL_NAMES = {
    "rf": "random forest",
    "et": "extra trees",
    "svm": "RBF SVM",
    "knn": "k nearest neighbours",
    "qda": "regularised quadratic discriminant",
    "logreg": "logistic regression",
    "nb": "Gaussian naive Bayes",
    "dt": "decision tree",
    VOTE: "soft vote of the best candidates",
}
SCALED = {"svm", "logreg", "knn", "qda"}  # distance-, penalty- and covariance-based models


def build_pipeline(
    kind: str, seed: int, imputer: str = "median", calibration_folds: int = 3
) -> Pipeline:
    """Return the untuned pipeline for ``kind``: imputation, scaling where it matters, estimator.

    The SVM gets its probabilities from a sigmoid calibrated on inner folds
    (what ``SVC(probability=True)`` did, now deprecated in scikit-learn 1.9).
    """
    estimators = {
        "rf": lambda: RandomForestClassifier(random_state=seed, n_jobs=1),
        "et": lambda: ExtraTreesClassifier(random_state=seed, n_jobs=1),
        "svm": lambda: CalibratedClassifierCV(
            SVC(kernel="rbf", random_state=seed),
            method="sigmoid",
            ensemble=False,
            cv=calibration_folds,
        ),
        "knn": lambda: (
            KNeighborsClassifier()
        ),  # uniform weights: distance weights break ONNX parity
        "qda": lambda: QuadraticDiscriminantAnalysis(),
        "logreg": lambda: LogisticRegression(max_iter=2000, random_state=seed),
        "nb": lambda: GaussianNB(),
        "dt": lambda: DecisionTreeClassifier(random_state=seed),
    }
    if kind not in estimators:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(MODEL_KINDS)}")
    steps: list[tuple[str, Any]] = [("impute", SimpleImputer(strategy=imputer))]
    if kind in SCALED:
        steps.append(("scale", StandardScaler()))
    steps.append(("clf", estimators[kind]()))
    return Pipeline(steps)


def build_vote(members: list[tuple[str, Pipeline]], y: np.ndarray) -> Pipeline:
    """A soft vote of already fitted pipelines (mean probability), without refitting them."""
    vote = VotingClassifier(members, voting="soft", flatten_transform=False)
    vote.estimators_ = [model for _, model in members]
    vote.named_estimators_ = dict(members)
    vote.le_ = LabelEncoder().fit(y)
    vote.classes_ = vote.le_.classes_
    return Pipeline([("clf", vote)])


def candidate_kinds(train_params: dict[str, Any]) -> list[str]:
    """The candidates a train run produces: every kind in the zoo, plus the vote when it has members."""
    kinds = list(train_params["models"])
    return [*kinds, VOTE] if train_params.get("vote", {}).get("members", 0) >= 2 else kinds


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


def _curve(y_true: np.ndarray, proba: np.ndarray):
    """Every distinct threshold, highest first, with its tp, answer count, precision and recall."""
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
    return thresholds, predicted, precision, recall


def choose_threshold(
    y_true: np.ndarray, proba: np.ndarray, min_recall: float, min_positives: int
) -> ThresholdChoice:
    """Pick the threshold with the best precision among those with recall >= floor.

    Ties go to the lower threshold (more recall). When nothing meets the floor,
    the threshold with the best recall is returned, marked infeasible.
    """
    thresholds, predicted, precision, recall = _curve(y_true, proba)
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


def threshold_at_recall(
    y_true: np.ndarray, proba: np.ndarray, aim: float, min_positives: int
) -> ThresholdChoice:
    """The highest threshold whose recall reaches ``aim`` (with at least ``min_positives`` answers).

    Unlike :func:`choose_threshold` it does not chase a precision spike further
    down the curve: on a few hundred rows such spikes are noise, and the
    operating point that transfers is the one at the aimed recall.
    """
    thresholds, predicted, precision, recall = _curve(y_true, proba)
    ok = np.flatnonzero((recall >= aim) & (predicted >= min_positives))
    feasible = len(ok) > 0
    i = int(ok[0]) if feasible else int(np.argmax(recall))
    return ThresholdChoice(
        float(thresholds[i]), float(precision[i]), float(recall[i]), int(predicted[i]), feasible
    )


def precision_at_recall(y_true: np.ndarray, proba: np.ndarray, floor: float) -> float:
    """The best precision any threshold reaches with recall >= ``floor`` (0 if none)."""
    _, _, precision, recall = _curve(y_true, proba)
    ok = recall >= floor
    return float(precision[ok].max()) if ok.any() else 0.0


def operating_points(
    y_true: np.ndarray, proba: np.ndarray, floors: list[float]
) -> dict[str, float]:
    """Precision at recall >= each floor, keyed ``p_at_r0.25`` (for ``dvc metrics show``)."""
    return {f"p_at_r{f:.2f}": round(precision_at_recall(y_true, proba, f), 4) for f in floors}


# -- the search: repeated out-of-fold probabilities for every kind and grid point ----------
@dataclass(frozen=True)
class OofEstimate:
    """A candidate judged on repeated out-of-fold probabilities of the training rows."""

    threshold: float  # median over repeats of the threshold that reaches the aimed recall
    precision: float  # mean over repeats of the precision at that repeat's own threshold
    precision_sd: float  # spread over repeats: how much the estimate itself moves
    recall_at_threshold: float  # mean over repeats of the recall the median threshold gives
    min_recall_at_threshold: float  # the worst repeat: does the threshold transfer?
    feasible: bool  # every repeat reaches the aim with enough positive answers
    operating_points: dict[str, float] = field(default_factory=dict)

    def as_metrics(self) -> dict[str, float]:
        return {
            "oof_precision": round(self.precision, 4),
            "oof_precision_sd": round(self.precision_sd, 4),
            "oof_recall": round(self.recall_at_threshold, 4),
            "oof_min_recall": round(self.min_recall_at_threshold, 4),
            "oof_feasible": float(self.feasible),
            "threshold": self.threshold,
            **{f"oof_{k}": v for k, v in self.operating_points.items()},
        }


def oof_estimate(
    y: np.ndarray, oof: np.ndarray, aim: float, min_positives: int, floors: list[float]
) -> OofEstimate:
    """Judge out-of-fold probabilities ``oof`` (one row per repeat) at the aimed recall.

    Each repeat is a full out-of-fold pass over the training rows; the median of
    the per-repeat thresholds is steadier than any one of them, and applying it
    back to every repeat shows whether the recall it gives holds.
    """
    choices = [threshold_at_recall(y, row, aim, min_positives) for row in oof]
    threshold = float(np.median([c.threshold for c in choices]))
    recalls = [float(((row >= threshold) & (y == 1)).sum() / max(int(y.sum()), 1)) for row in oof]
    precisions = np.array([c.precision for c in choices])
    points = {k: float(np.mean([operating_points(y, row, floors)[k] for row in oof]))
              for k in operating_points(y, oof[0], floors)}  # fmt: skip
    return OofEstimate(
        threshold=threshold,
        precision=float(precisions.mean()),
        precision_sd=float(precisions.std()),
        recall_at_threshold=float(np.mean(recalls)),
        min_recall_at_threshold=float(np.min(recalls)),
        feasible=all(c.feasible for c in choices),
        operating_points={k: round(v, 4) for k, v in points.items()},
    )


@dataclass
class Candidate:
    kind: str
    model: Pipeline  # fitted on every training row
    best_params: dict[str, Any]
    estimate: OofEstimate
    oof: np.ndarray  # [repeats, rows] out-of-fold probabilities of the chosen grid point
    grid: list[dict[str, Any]]  # every grid point with its out-of-fold precision


@dataclass(frozen=True)
class SearchSettings:
    seed: int
    cv_folds: int
    cv_repeats: int
    aim: float  # the recall the threshold aims at: the floor plus a margin
    min_positives: int
    floors: list[float]  # operating points reported for each candidate
    vote_members: int
    imputer: str = "median"
    calibration_folds: int = 3
    n_jobs: int = -1


def _fit_predict(model: Pipeline, X, y, train_idx, val_idx) -> np.ndarray:
    return model.fit(X[train_idx], y[train_idx]).predict_proba(X[val_idx])[:, 1]


def _fit(model: Pipeline, X, y) -> Pipeline:
    return model.fit(X, y)


def search_zoo(
    X: np.ndarray, y: np.ndarray, grids: dict[str, dict[str, list]], s: SearchSettings
) -> dict[str, Candidate]:
    """Tune every kind on the same repeated stratified folds; add the soft vote of the best ones.

    One joblib pool runs every (kind, grid point, fold) fit, so two cores stay
    busy from the first fit to the last (a Dask cluster takes them when joblib's
    backend is Dask). Each kind keeps the grid point with the best out-of-fold
    precision at the aimed recall; infeasible points lose to feasible ones.
    """
    from joblib import Parallel, delayed

    folds = list(
        RepeatedStratifiedKFold(
            n_splits=s.cv_folds, n_repeats=s.cv_repeats, random_state=s.seed
        ).split(X, y)
    )
    points = []
    for kind, grid in grids.items():
        base = build_pipeline(kind, s.seed, s.imputer, s.calibration_folds)
        prefix = grid_prefix(kind)
        for point in ParameterGrid(grid):
            model = clone(base).set_params(**{f"{prefix}{k}": v for k, v in point.items()})
            points.append((kind, point, model))
    pool = Parallel(n_jobs=s.n_jobs)
    probas = pool(
        delayed(_fit_predict)(clone(model), X, y, tr, va)
        for _, _, model in points
        for tr, va in folds
    )
    best: dict[str, tuple] = {}
    graded: dict[str, list[dict[str, Any]]] = {kind: [] for kind in grids}
    for i, (kind, point, model) in enumerate(points):
        oof = np.zeros((s.cv_repeats, len(y)))
        for j, (_, va) in enumerate(folds):
            oof[j // s.cv_folds, va] = probas[i * len(folds) + j]
        estimate = oof_estimate(y, oof, s.aim, s.min_positives, s.floors)
        graded[kind].append({**point, "oof_precision": round(estimate.precision, 4)})
        key = (estimate.feasible, estimate.precision)
        if kind not in best or key > best[kind][0]:
            best[kind] = (key, point, model, estimate, oof)
    kinds = list(best)
    fitted = pool(delayed(_fit)(clone(best[k][2]), X, y) for k in kinds)
    zoo = {
        kind: Candidate(kind, model, best[kind][1], best[kind][3], best[kind][4], graded[kind])
        for kind, model in zip(kinds, fitted, strict=True)
    }
    if s.vote_members >= 2:
        ranked = sorted(zoo.values(), key=lambda c: (c.estimate.feasible, c.estimate.precision))
        members = ranked[::-1][: s.vote_members]
        oof = np.mean([c.oof for c in members], axis=0)  # same folds: a fair out-of-fold vote
        zoo[VOTE] = Candidate(
            VOTE,
            build_vote([(c.kind, c.model) for c in members], y),
            {"members": [c.kind for c in members]},
            oof_estimate(y, oof, s.aim, s.min_positives, s.floors),
            oof,
            [],
        )
    return zoo


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
        **precision_recall_intervals(int(tp), int(fp), int(fn)),
    }
