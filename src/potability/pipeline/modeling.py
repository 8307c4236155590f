"""The model zoo, the search and the rule that picks a decision threshold: pure functions, no I/O.

Precision decides, but never at the price of a model that almost never says
"potable": every choice here is precision *subject to* a recall floor and a
minimum count of positive answers (DATA.md, "What this means for the model").

Nothing here sees the test split. Every kind is tuned on repeated stratified
folds of the training rows; the hyper-parameters, the candidate's own score and
its threshold all come from those out-of-fold probabilities, and the threshold
aims at the least recall whose lower confidence bound still clears the floor.
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

from potability.intervals import precision_recall_intervals, wilson_lower

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
        # uniform weights: distance weights break ONNX parity
        "knn": lambda: KNeighborsClassifier(),
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
def recall_lower_bound(tp: np.ndarray, positives: int, level: float) -> np.ndarray:
    """One-sided lower confidence bound of recall at each threshold, from every repeat's counts.

    ``tp`` is [repeats, thresholds]: each repeat's true positives at each
    threshold, out of ``positives`` potable training rows. The recall new water
    would see is judged from two sources of doubt: the training rows are one
    sample of potable water (binomial, over ``positives`` rows: the repeats
    reuse the same rows, so they add no rows), and the folds move the models
    (the spread of recall between repeats). Their variances add; the bound is
    Wilson's at the effective sample size that total variance implies.
    """
    recall = tp.mean(axis=0) / positives
    between = tp.var(axis=0, ddof=1) / positives**2 if len(tp) > 1 else np.zeros_like(recall)
    binomial = recall * (1 - recall) / positives
    total = binomial + between
    n_eff = np.where(total > 0, positives * binomial / np.where(total > 0, total, 1), positives)
    n_eff = np.maximum(n_eff, 1.0)
    return np.array([wilson_lower(r * n, n, level) for r, n in zip(recall, n_eff, strict=True)])


@dataclass(frozen=True)
class OofEstimate:
    """A candidate judged on repeated out-of-fold probabilities of the training rows."""

    threshold: float  # the highest threshold whose recall lower bound clears the floor
    precision: float  # out-of-fold precision at that threshold, every repeat's answers pooled
    precision_sd: float  # spread over repeats: how much the estimate itself moves
    recall_at_threshold: float  # the aimed recall: out of fold at that threshold, repeats pooled
    min_recall_at_threshold: float  # the worst repeat: does the threshold transfer?
    feasible: bool  # the lower bound clears the floor with enough positive answers in every repeat
    operating_points: dict[str, float] = field(default_factory=dict)
    recall_lower_bound: float = 0.0  # one-sided, at the confidence level of params
    recalls: tuple[float, ...] = ()  # the recall each repeat achieves at the threshold
    tp: float = 0.0  # right "potable" answers at the threshold, mean per repeat
    answers: float = 0.0  # "potable" answers at the threshold, mean per repeat

    def as_metrics(self) -> dict[str, float]:
        return {
            "oof_precision": round(self.precision, 4),
            "oof_precision_sd": round(self.precision_sd, 4),
            "oof_recall": round(self.recall_at_threshold, 4),
            "oof_recall_lower_bound": round(self.recall_lower_bound, 4),
            "oof_min_recall": round(self.min_recall_at_threshold, 4),
            **{f"oof_recall_repeat{i + 1}": round(r, 4) for i, r in enumerate(self.recalls)},
            "oof_tp": round(self.tp, 2),
            "oof_answers": round(self.answers, 2),
            "oof_feasible": float(self.feasible),
            "threshold": self.threshold,
            **{f"oof_{k}": v for k, v in self.operating_points.items()},
        }


def oof_estimate(
    y: np.ndarray,
    oof: np.ndarray,
    min_recall: float,
    level: float,
    min_positives: int,
    floors: list[float],
) -> OofEstimate:
    """Aim the threshold at the floor, judged on out-of-fold probabilities ``oof`` (one row per repeat).

    Recall as a function of the threshold is measured on every repeat at once;
    the threshold is the highest one (the least recall, so the most precision)
    whose one-sided lower confidence bound of recall, at ``level``, still
    clears ``min_recall``. No fixed margin: the aim sits as close to the floor
    as the evidence allows, closer with more training rows.
    """
    y = np.asarray(y).astype(int)
    oof = np.atleast_2d(np.asarray(oof, dtype=float))
    positives = max(int(y.sum()), 1)
    thresholds = np.unique(oof)[::-1]  # highest first
    tp = np.empty((len(oof), len(thresholds)))
    answers = np.empty_like(tp)
    for k, row in enumerate(oof):
        pos, every = np.sort(row[y == 1]), np.sort(row)
        tp[k] = len(pos) - np.searchsorted(pos, thresholds, side="left")
        answers[k] = len(every) - np.searchsorted(every, thresholds, side="left")
    lower = recall_lower_bound(tp, positives, level)
    ok = np.flatnonzero((lower >= min_recall) & (answers.min(axis=0) >= min_positives))
    feasible = len(ok) > 0
    i = int(ok[0]) if feasible else len(thresholds) - 1  # infeasible: the most recall there is
    recalls = tp[:, i] / positives
    precisions = tp[:, i] / np.maximum(answers[:, i], 1)
    points = {
        k: float(np.mean([operating_points(y, row, floors)[k] for row in oof]))
        for k in operating_points(y, oof[0], floors)
    }
    return OofEstimate(
        threshold=float(thresholds[i]),
        precision=float(tp[:, i].sum() / max(answers[:, i].sum(), 1)),
        precision_sd=float(precisions.std()),
        recall_at_threshold=float(recalls.mean()),
        min_recall_at_threshold=float(recalls.min()),
        feasible=feasible,
        operating_points={k: round(v, 4) for k, v in points.items()},
        recall_lower_bound=float(lower[i]),
        recalls=tuple(float(r) for r in recalls),
        tp=float(tp[:, i].mean()),
        answers=float(answers[:, i].mean()),
    )


def precision_promise(
    oof_tp: float, oof_answers: float, test_tp: int, test_answers: int, level: float
) -> dict[str, Any]:
    """The precision a user can rely on at the served threshold: a one-sided lower bound.

    The out-of-fold answers (mean per repeat: each training row counted once)
    and the test answers are disjoint rows judged at the same threshold, so
    their counts add; the bound is Wilson's one-sided lower bound at ``level``
    of those pooled answers, beside the pooled point estimate.
    """
    tp, answers = oof_tp + test_tp, oof_answers + test_answers
    return {
        "precision_lower_bound": round(wilson_lower(tp, answers, level), 4),
        "precision_pooled": round(tp / answers, 4) if answers else 0.0,
        "precision_pooled_answers": round(answers, 1),
        "precision_bound_level": level,
    }


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
    min_recall: float  # the floor the threshold's recall lower bound must clear
    level: float  # the confidence level of that bound (params: train.confidence_level)
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
    precision at its aimed threshold; infeasible points lose to feasible ones.
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
        estimate = oof_estimate(y, oof, s.min_recall, s.level, s.min_positives, s.floors)
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
            oof_estimate(y, oof, s.min_recall, s.level, s.min_positives, s.floors),
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
