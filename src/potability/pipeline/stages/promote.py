"""Stage promote: decide whether the challenger (chosen out of fold) should replace the champion.

The champion is the version the MLflow alias ``champion`` named when the
champion stage ran (``models/champion/``, a tracked input, so ``dvc.lock``
records which one), re-measured on the *current* test split so both are judged
on the same samples. The stage writes the workspace's decision to
``models/promoted/`` and never ships anything: ``potability deploy`` does. On
"promoted" the directory holds the challenger (its ONNX export must match
scikit-learn within ``promote.parity_tolerance``); on "kept" it holds the
champion as it is, so deploying it changes nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from potability import artifacts
from potability.config import ParamsError, check_train_params, load_params
from potability.features import (
    feature_matrix,
    file_sha256,
    labels,
    read_samples,
    write_csv_atomic,
)
from potability.intervals import PairedComparison, paired_bootstrap
from potability.pipeline.curves import calibration_table, roc_table
from potability.pipeline.modeling import MODEL_KINDS, classification_metrics
from potability.pipeline.promotion import confirmed_challenger, decide
from potability.pipeline.stages.train import read_train_info
from potability.quality import reference_profile

log = logging.getLogger(__name__)
INPUT_EXAMPLE_ROWS = 3  # complete training rows stored as the registered model's input example


@dataclass(frozen=True)
class Paths:
    """Where promote reads and writes (mirrors the stage's cmd in dvc.yaml)."""

    train: Path
    test: Path
    candidates: Path
    metrics: Path
    out: Path


@dataclass(frozen=True)
class Champion:
    version: str  # the registry's version number
    model: artifacts.ServedModel
    files: Path  # its model directory, downloaded and checked


def promote(paths: Paths, params: dict[str, Any], champion: Champion | None) -> dict[str, Any]:
    """Decide challenger vs ``champion`` and write ``paths.out``; return the decision record."""
    frame = read_samples(paths.test)
    X, y = feature_matrix(frame), labels(frame)
    candidates = json.loads(paths.metrics.read_text(encoding="utf-8"))
    floor, min_pos = params["train"]["min_recall"], params["train"]["min_positives"]
    champion_metrics, comparison = None, None
    if champion is not None:
        champion_proba = champion.model.model.predict_proba(X)
        measured = classification_metrics(y, champion_proba, champion.model.threshold)
        champion_metrics = {
            **measured,
            "version": champion.model.version,
            "registry_version": champion.version,
            "kind": champion.model.meta.get("kind"),
        }
        level = params["train"]["confidence_level"]
        challenger, _ = confirmed_challenger(candidates, floor, min_pos, level)
        if challenger is not None:
            comparison = _compare(
                paths.candidates / challenger,
                X,
                y,
                champion_proba,
                champion.model.threshold,
                params["promote"],
            )
    decision = decide(
        candidates,
        champion_metrics,
        floor,
        min_pos,
        comparison,
        params["promote"]["confidence"],
        level=params["train"]["confidence_level"],
    )
    record: dict[str, Any] = {
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **decision.as_dict(),
        "challenger_metrics": candidates.get(decision.challenger) if decision.challenger else None,
        "champion_before": champion_metrics,
        "comparison": asdict(comparison) if comparison else None,
        "min_recall": floor,
        "version": champion.model.version if champion else None,
    }
    history = artifacts.read_history(paths.out)
    if decision.promote:
        blob, meta, gap = _package(decision.challenger, candidates, paths, X, params, champion)
        tolerance = params["promote"]["parity_tolerance"]
        record["parity_gap"] = gap
        if gap > tolerance:
            record.update(
                promote=False,
                reason=f"refused {decision.challenger}: ONNX probabilities differ from "
                f"scikit-learn's by {gap:.2e} > {tolerance:.0e}; the champion stays",
            )
        else:
            record["version"] = meta["version"]
            meta["decision_reason"] = record["reason"]
            artifacts.write_model_dir(
                paths.out, blob, meta, {artifacts.HISTORY_FILE: [*history, _summary(record)]}
            )
    if not record["promote"]:
        _keep(paths.out, champion, [*history, _summary(record)])
    log.info("promotion decision: %s", record["reason"])
    return record


def _compare(
    directory: Path,
    X: np.ndarray,
    y: np.ndarray,
    champion_proba: np.ndarray,
    champion_threshold: float,
    params: dict[str, Any],
) -> PairedComparison:
    """Paired bootstrap of the challenger's precision minus the champion's, on the same test rows."""
    info = read_train_info(directory)
    challenger = artifacts.load_candidate(directory).predict_proba(X)[:, 1] >= info["threshold"]
    return paired_bootstrap(
        y,
        challenger,
        champion_proba >= champion_threshold,
        draws=params["bootstrap_draws"],
        seed=params["seed"],
    )


def _keep(out: Path, champion: Champion | None, history: list[dict[str, Any]]) -> None:
    """The champion stays: ``out`` holds its files (deploying them is a no-op), plus the history."""
    if champion is None:
        for name in (artifacts.MODEL_FILE, artifacts.META_FILE, artifacts.MANIFEST_FILE):
            (out / name).unlink(missing_ok=True)
        artifacts.write_json_atomic(out / artifacts.HISTORY_FILE, history)
        return
    added_on_load = ("registered_version", "manifest_sha256")  # not part of its meta.json
    meta = {k: v for k, v in champion.model.meta.items() if k not in added_on_load}
    blob = (champion.files / artifacts.MODEL_FILE).read_bytes()
    artifacts.write_model_dir(out, blob, meta, {artifacts.HISTORY_FILE: history})


def _package(
    kind: str,
    candidates: dict[str, Any],
    paths: Paths,
    X: np.ndarray,
    params: dict[str, Any],
    champion: Champion | None,
):
    """The challenger as a model directory's contents: (onnx bytes, meta, parity gap)."""
    info = read_train_info(paths.candidates / kind)
    train = read_samples(paths.train)
    complete = train.dropna().head(INPUT_EXAMPLE_ROWS)
    meta = {
        "kind": kind,
        "model_name": info["model_name"],
        "threshold": info["threshold"],
        "metrics": candidates[kind],
        "cv_metrics": info["metrics"],
        "best_params": info["best_params"],
        "data_hash": info["data_hash"],
        "test_data_hash": file_sha256(paths.test),
        "n_train": info["n_train"],
        "n_test": int(len(X)),
        "trained_at": info["trained_at"],
        "promoted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": info["git_commit"],
        "mlflow_run_id": info["mlflow_run_id"],
        "min_recall": params["train"]["min_recall"],
        # the registry version this challenger beat: deploy refuses if the champion moved since
        "decided_against": champion.version if champion else None,
        "input_example": feature_matrix(complete).tolist(),
        # the training inputs' distribution, so the server can measure drift without the data
        "reference": reference_profile(train, params["page"]["drift_bins"]),
    }
    blob, meta, gap = artifacts.package_candidate(paths.candidates / kind, X, meta)
    return blob, {**meta, "parity_gap": gap}, gap


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    """What the history keeps of a decision (the quality page shows it)."""
    keys = (
        "decided_at",
        "promote",
        "challenger",
        "reason",
        "candidates",
        "version",
        "challenger_metrics",
        "champion_before",
        "comparison",
    )
    return {k: record.get(k) for k in keys}


def write_curves(promoted: Path, test: Path, plots: Path, params: dict[str, Any]) -> None:
    """ROC and reliability tables of the model in ``promoted`` on the test split, for `dvc plots`.

    The ONNX file is what `potability deploy` ships, so the curves are of what
    sensors would be answered with. With no model there (nothing eligible, no
    champion) the tables are empty: the plots exist and say so.
    """
    frame = read_samples(test)
    y = labels(frame)
    try:
        proba = artifacts.load_model_dir(promoted).model.predict_proba(feature_matrix(frame))
    except artifacts.ArtifactError as exc:
        log.info("no model to draw ROC and calibration curves of: %s", exc)
        y, proba = y[:0], np.empty(0)
    write_csv_atomic(roc_table(y, proba, params["curve_points"]), plots / "roc.csv")
    write_csv_atomic(
        calibration_table(y, proba, params["calibration_bins"]), plots / "calibration.csv"
    )


def recorded_champion(directory: Path) -> Champion | None:
    """The champion the champion stage wrote to ``directory`` (checked again), or None when there was none."""
    named = json.loads((directory / artifacts.CHAMPION_FILE).read_text(encoding="utf-8"))
    version = named.get("registry_version")
    if version is None:
        log.info("no champion yet: the best eligible challenger becomes the first champion")
        return None
    served = artifacts.load_model_dir(directory)
    model = artifacts.ServedModel(served.model, {**served.meta, "registered_version": version})
    return Champion(str(version), model, directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--champion", type=Path, required=True, help="the champion stage's output")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--decision", type=Path, required=True)
    parser.add_argument("--plots", type=Path, required=True, help="ROC and calibration tables")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    paths = Paths(args.train, args.test, args.candidates, args.metrics, args.out)
    params = load_params(args.params)
    try:  # a bad floor or level: nothing is promoted
        check_train_params(params["train"], MODEL_KINDS)
    except ParamsError as exc:
        raise SystemExit(str(exc)) from None
    champion = recorded_champion(args.champion)
    record = promote(paths, params, champion)
    write_curves(paths.out, paths.test, args.plots, params["promote"])
    artifacts.write_json_atomic(
        args.decision,
        {
            "promoted": record["promote"],
            "challenger": record["challenger"],
            "reason": record["reason"],
            "version": record.get("version"),
            "champion_registry_version": champion.version if champion else None,
            "challenger_precision": (record["challenger_metrics"] or {}).get("precision"),
            "challenger_precision_ci": (record["challenger_metrics"] or {}).get("precision_ci"),
            "challenger_recall": (record["challenger_metrics"] or {}).get("recall"),
            "challenger_recall_ci": (record["challenger_metrics"] or {}).get("recall_ci"),
            "precision_difference": (record["comparison"] or {}).get("difference"),
            "precision_difference_ci": [
                (record["comparison"] or {}).get(k) for k in ("low", "high")
            ],
            "champion_precision_before": (record["champion_before"] or {}).get("precision"),
        },
    )
    print(f"promotion: {record['reason']}")


if __name__ == "__main__":
    main()
