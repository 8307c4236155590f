"""Stage evaluate: every candidate on the held-out test split, at its own threshold.

Writes ``metrics/evaluate.json`` for ``dvc metrics`` and, per candidate, a PR
curve and a confusion table for ``dvc plots``; the same metrics (``test_*``)
and a PR/confusion figure go into the candidate's MLflow run, so the MLflow UI
compares candidates on the rows DVC does.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_curve

from potability import artifacts, tracking
from potability.config import ParamsError, check_train_params, get_settings, load_params
from potability.features import feature_matrix, labels, read_samples, write_csv_atomic
from potability.pipeline.modeling import (
    MODEL_KINDS,
    candidate_kinds,
    classification_metrics,
    operating_points,
    precision_promise,
)
from potability.pipeline.promotion import recall_rule
from potability.pipeline.stages.train import read_train_info

log = logging.getLogger(__name__)


def evaluate(
    model: Any,
    threshold: float,
    X: np.ndarray,
    y: np.ndarray,
    curve_points: int,
    floors: list[float] | None = None,
):
    """Return (metrics, pr_curve frame, confusion frame) of one candidate on the test split.

    The metrics hold the candidate's answers at its own (training-fold)
    threshold with 95 % intervals, and, for comparison only, the precision the
    curve reaches at each recall in ``floors`` (nothing is chosen on those).
    """
    proba = model.predict_proba(X)[:, 1]
    metrics = classification_metrics(y, proba, threshold)
    metrics["operating_points"] = operating_points(y, proba, floors or [])
    precision, recall, _ = precision_recall_curve(y, proba)
    keep = np.unique(np.linspace(0, len(precision) - 1, curve_points).round().astype(int))
    curve = pd.DataFrame({"recall": recall[keep].round(4), "precision": precision[keep].round(4)})
    predicted = (proba >= threshold).astype(int)
    confusion = pd.DataFrame({"actual": y, "predicted": predicted})
    return metrics, curve, confusion


def figure(kind: str, curve: pd.DataFrame, confusion: pd.DataFrame, metrics: dict[str, Any]):
    """One matplotlib figure: the PR curve with the operating point, and the confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    pr, cm = fig.subplots(1, 2)
    pr.plot(curve["recall"], curve["precision"])
    pr.scatter(
        [metrics["recall"]], [metrics["precision"]], color="red", zorder=3, label="threshold"
    )
    pr.set(
        xlabel="recall",
        ylabel="precision",
        title=f"{kind}: precision-recall (test)",
        ylim=(0, 1.02),
    )
    pr.legend()
    matrix = pd.crosstab(confusion["actual"], confusion["predicted"]).reindex(
        index=[0, 1], columns=[0, 1], fill_value=0
    )
    cm.imshow(matrix.to_numpy(), cmap="Blues")
    for (i, j), count in np.ndenumerate(matrix.to_numpy()):
        cm.text(j, i, str(count), ha="center", va="center")
    cm.set(
        xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual", title="confusion (test)"
    )
    fig.tight_layout()
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    try:
        check_train_params(params["train"], MODEL_KINDS)
    except ParamsError as exc:
        raise SystemExit(str(exc)) from None
    train = params["train"]
    rule = recall_rule(train["min_recall"], train["min_positives"], train["confidence_level"])
    frame = read_samples(args.test)
    X, y = feature_matrix(frame), labels(frame)
    report: dict[str, Any] = {}
    tracking.configure(get_settings())
    for kind in candidate_kinds(params["train"]):
        directory = args.candidates / kind
        info = read_train_info(directory)
        metrics, curve, confusion = evaluate(
            artifacts.load_candidate(directory),
            info["threshold"],
            X,
            y,
            params["evaluate"]["pr_curve_points"],
            params["train"]["operating_recalls"],
        )
        # what a user can rely on: out-of-fold and test answers pooled at the served threshold
        metrics.update(
            precision_promise(
                info["metrics"]["oof_tp"],
                info["metrics"]["oof_answers"],
                metrics["confusion"]["tp"],
                metrics["positives"],
                train["confidence_level"],
            )
        )
        # the training-fold judgement travels with the test one: promote chooses on "oof"
        report[kind] = {
            **metrics,
            "recall_rule": rule,
            "oof": {k: v for k, v in info["metrics"].items() if k != "threshold"},
        }
        tracking.log_test_results(
            info["mlflow_run_id"], metrics, figure(kind, curve, confusion, metrics)
        )
        write_csv_atomic(curve, args.plots / "pr" / f"{kind}.csv")
        write_csv_atomic(confusion, args.plots / "confusion" / f"{kind}.csv")
        log.info(
            "%s on test: precision %.3f recall %.3f positives %d",
            kind,
            metrics["precision"],
            metrics["recall"],
            metrics["positives"],
        )
    artifacts.write_json_atomic(args.metrics, report)


if __name__ == "__main__":
    main()
