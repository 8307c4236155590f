"""Stage train (one per model kind): grid search, out-of-fold threshold, MLflow run."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from potability import artifacts, tracking
from potability.config import Settings, get_settings, load_params
from potability.features import feature_matrix, file_sha256, labels, read_samples
from potability.modeling import MODEL_NAMES, tune

log = logging.getLogger(__name__)
TRAIN_INFO = "train.json"


@contextlib.contextmanager
def grid_backend(settings: Settings):
    """Fan grid search out to a Dask cluster when DASK_SCHEDULER_ADDRESS is set, else local cores."""
    if not settings.dask_scheduler_address:
        yield None
        return
    import joblib
    from distributed import Client

    with Client(settings.dask_scheduler_address) as client, joblib.parallel_backend("dask"):
        log.info("grid search on the Dask cluster at %s", settings.dask_scheduler_address)
        yield client


def train(
    kind: str, train_csv: Path, out: Path, params: dict[str, Any], settings: Settings
) -> dict[str, Any]:
    """Tune ``kind`` on the train split, save the candidate, log an MLflow run; return train.json."""
    frame = read_samples(train_csv)
    X, y = feature_matrix(frame), labels(frame)
    grid = params["models"][kind]
    with grid_backend(settings):
        result = tune(
            kind, X, y, grid,
            seed=params["seed"], cv_folds=params["cv_folds"], min_recall=params["min_recall"],
            min_positives=params["min_positives"], n_jobs=params["n_jobs"], imputer=params["imputer"],
            calibration_folds=params["calibration_folds"], recall_margin=params["threshold_recall_margin"],
        )  # fmt: skip
    data_hash = file_sha256(train_csv)
    commit = tracking.git_commit(settings.root)
    choice = result.threshold
    metrics = {
        "cv_precision_at_recall": result.cv_precision_at_recall,
        "cv_roc_auc": result.cv_roc_auc,
        "oof_precision": choice.precision,
        "oof_recall": choice.recall,
        "oof_positives": float(choice.positives),
        "threshold": choice.threshold,
    }
    tracking.configure(settings)
    run_id, model_uri = tracking.log_candidate(
        kind=kind,
        model=result.model,
        params={**{f"grid.{k}": str(v) for k, v in grid.items()}, **{f"best.{k}": v for k, v in result.best_params.items()},
                "cv_folds": params["cv_folds"], "min_recall": params["min_recall"],
                "min_positives": params["min_positives"], "seed": params["seed"], "n_train": len(frame)},
        metrics=metrics,
        tags={"kind": kind, "data_hash": data_hash, "git_commit": commit or "unknown",
              "threshold_feasible": str(choice.feasible)},
        example=X[:5],
    )  # fmt: skip
    artifacts.save_candidate(result.model, out)
    info = {
        "kind": kind,
        "model_name": MODEL_NAMES[kind],
        "best_params": result.best_params,
        "metrics": metrics,
        "threshold": choice.threshold,
        "threshold_feasible": choice.feasible,
        "data_hash": data_hash,
        "git_commit": commit,
        "n_train": len(frame),
        "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mlflow_run_id": run_id,
        "mlflow_model_uri": model_uri,
    }
    artifacts.write_json_atomic(out / TRAIN_INFO, info)
    log.info("%s: cv precision@recall %.3f, threshold %.3f (oof precision %.3f recall %.3f), run %s",
             kind, result.cv_precision_at_recall, choice.threshold, choice.precision, choice.recall, run_id)  # fmt: skip
    return info


def read_train_info(directory: Path) -> dict[str, Any]:
    return json.loads((directory / TRAIN_INFO).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    train(args.model, args.train, args.out, load_params(args.params)["train"], get_settings())


if __name__ == "__main__":
    main()
