"""Stage train: the whole zoo in one process (one interpreter start-up), one MLflow run per candidate."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from potability import artifacts, tracking
from potability.config import ParamsError, Settings, check_train_params, get_settings, load_params
from potability.features import feature_matrix, file_sha256, labels, read_samples
from potability.pipeline.modeling import MODEL_KINDS, MODEL_NAMES, SearchSettings, search_zoo

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


def search_settings(params: dict[str, Any]) -> SearchSettings:
    """The search's knobs from params.yaml's ``train`` section."""
    return SearchSettings(
        seed=params["seed"],
        cv_folds=params["cv_folds"],
        cv_repeats=params["cv_repeats"],
        min_recall=params["min_recall"],
        level=params["confidence_level"],
        min_positives=params["min_positives"],
        floors=list(params["operating_recalls"]),
        vote_members=params["vote"]["members"],
        imputer=params["imputer"],
        calibration_folds=params["calibration_folds"],
        n_jobs=params["n_jobs"],
    )


def train(train_csv: Path, out: Path, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Tune the whole zoo on the train split in one process, save each candidate, log MLflow runs.

    Returns train.json of every candidate, by kind.

    Raises:
        ParamsError: a parameter is out of range (before any fit), or no grid
            point of any kind reaches the recall floor out of fold.
    """
    check_train_params(params, MODEL_KINDS)
    frame = read_samples(train_csv)
    X, y = feature_matrix(frame), labels(frame)
    search = search_settings(params)
    with grid_backend(settings):
        zoo = search_zoo(X, y, params["models"], search)
    if not any(c.estimate.feasible for c in zoo.values()):
        raise ParamsError(
            f"train.models: no grid point of any kind reaches train.min_recall={search.min_recall} "
            f"(lower bound at train.confidence_level={search.level}) with train.min_positives="
            f"{search.min_positives} out of fold; nothing can be promoted"
        )
    data_hash = file_sha256(train_csv)
    commit = tracking.git_commit(settings.root)
    tracking.configure(settings)
    infos = {}
    for kind, candidate in zoo.items():
        estimate = candidate.estimate
        metrics = estimate.as_metrics()
        grid = params["models"].get(kind, {})
        run_id, model_uri = tracking.log_candidate(
            kind=kind,
            model=candidate.model,
            params={
                **{f"grid.{k}": str(v) for k, v in grid.items()},
                **{f"best.{k}": str(v) for k, v in candidate.best_params.items()},
                "cv_folds": search.cv_folds,
                "cv_repeats": search.cv_repeats,
                "min_recall": params["min_recall"],
                "confidence_level": search.level,
                "aimed_recall": round(estimate.recall_at_threshold, 4),
                "min_positives": search.min_positives,
                "seed": search.seed,
                "n_train": len(frame),
            },
            metrics=metrics,
            tags={
                "kind": kind,
                "data_hash": data_hash,
                "git_commit": commit or "unknown",
                "threshold_feasible": str(estimate.feasible),
            },
            example=X[:5],
        )
        artifacts.save_candidate(candidate.model, out / kind)
        info = {
            "kind": kind,
            "model_name": MODEL_NAMES[kind],
            "best_params": candidate.best_params,
            "grid_results": candidate.grid,
            "metrics": metrics,
            "threshold": estimate.threshold,
            "threshold_feasible": estimate.feasible,
            "aimed_recall": estimate.recall_at_threshold,
            "data_hash": data_hash,
            "git_commit": commit,
            "n_train": len(frame),
            "trained_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "mlflow_run_id": run_id,
            "mlflow_model_uri": model_uri,
        }
        artifacts.write_json_atomic(out / kind / TRAIN_INFO, info)
        infos[kind] = info
        log.info(
            "%s: oof precision %.3f (sd %.3f) at recall %.3f, threshold %.3f, run %s",
            kind,
            estimate.precision,
            estimate.precision_sd,
            estimate.recall_at_threshold,
            estimate.threshold,
            run_id,
        )
    return infos


def read_train_info(directory: Path) -> dict[str, Any]:
    return json.loads((directory / TRAIN_INFO).read_text(encoding="utf-8"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        train(args.train, args.out, load_params(args.params)["train"], get_settings())
    except ParamsError as exc:
        raise SystemExit(str(exc)) from None


if __name__ == "__main__":
    main()
