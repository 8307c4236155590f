"""Stage promote: the best eligible challenger replaces the champion only if at least as good.

The champion is re-measured on the *current* test split, so both are judged on
the same samples. Before anything is written, the challenger's ONNX export must
match scikit-learn's probabilities within ``promote.parity_tolerance``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from potability import artifacts, tracking
from potability.config import Settings, get_settings, load_params
from potability.features import feature_matrix, file_sha256, labels, read_samples
from potability.modeling import classification_metrics
from potability.promotion import decide
from potability.quality import reference_profile
from potability.schema import FEATURE_NAMES
from potability.stages.train import read_train_info

log = logging.getLogger(__name__)
HISTORY_FILE = "history.json"


def champion_metrics(model_dir: Path, X, y) -> dict[str, Any] | None:
    """The production model's metrics on this test split, or None if there is none (or it is broken)."""
    try:
        production = artifacts.load_production(model_dir)
    except artifacts.ArtifactError as exc:
        log.info("no usable champion: %s", exc)
        return None
    metrics = classification_metrics(y, production.model.predict_proba(X), production.threshold)
    return {**metrics, "version": production.version, "kind": production.meta.get("kind")}


def read_history(model_dir: Path) -> list[dict[str, Any]]:
    path = model_dir / HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else []


@dataclass(frozen=True)
class Paths:
    """Where promote reads and writes (mirrors the stage's cmd in dvc.yaml)."""

    train: Path
    test: Path
    candidates: Path
    metrics: Path
    model_dir: Path


def promote(paths: Paths, params: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Decide, and on promotion write ``model_dir`` and move the MLflow alias; return the decision record."""
    frame = read_samples(paths.test)
    X, y = feature_matrix(frame), labels(frame)
    candidates = json.loads(paths.metrics.read_text(encoding="utf-8"))
    floor, min_pos = params["train"]["min_recall"], params["train"]["min_positives"]
    champion = champion_metrics(paths.model_dir, X, y)
    decision = decide(candidates, champion, floor, min_pos)
    record: dict[str, Any] = {
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **decision.as_dict(),
        "challenger_metrics": candidates.get(decision.challenger) if decision.challenger else None,
        "champion_before": champion,
        "candidates_metrics": candidates,
        "min_recall": floor,
        "version": champion["version"] if champion else None,
    }
    history = read_history(paths.model_dir)
    if decision.promote:
        blob, meta, gap = _build(
            decision.challenger, candidates, paths, X, params, record["decided_at"]
        )
        tolerance = params["promote"]["parity_tolerance"]
        record["parity_gap"] = gap
        if gap > tolerance:
            record.update(promote=False, reason=f"refused {decision.challenger}: ONNX probabilities differ from "
                          f"scikit-learn's by {gap:.2e} > {tolerance:.0e}; the champion stays")  # fmt: skip
        else:
            tracking.configure(settings)
            meta["registered_version"] = tracking.register_champion(
                meta["mlflow_model_uri"], params["promote"]["registered_model"], params["promote"]["alias"],
                tags={"version": meta["version"], "sha256": meta["sha256"],
                      "test_precision": f"{meta['metrics']['precision']:.4f}"},
            )  # fmt: skip
            record["version"] = meta["version"]
            artifacts.write_production(
                paths.model_dir, blob, meta, {HISTORY_FILE: [*history, _summary(record)]}
            )
    if not record[
        "promote"
    ]:  # the champion stays (or parity refused): only the decision is added to its history
        paths.model_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json_atomic(paths.model_dir / HISTORY_FILE, [*history, _summary(record)])
    log.info("promotion decision: %s", record["reason"])
    return record


def _build(
    kind: str, candidates: dict[str, Any], paths: Paths, X, params: dict[str, Any], now: str
):
    """Export the challenger to ONNX and assemble its meta.json; return (onnx bytes, meta, parity gap)."""
    info = read_train_info(paths.candidates / kind)
    model = artifacts.load_candidate(paths.candidates / kind)
    blob = artifacts.to_onnx(model)
    gap = artifacts.parity_gap(model, blob, X)
    sha = artifacts.sha256_bytes(blob)
    meta = {
        "version": f"{datetime.now(UTC):%Y%m%d%H%M%S}-{kind}-{sha[:8]}",
        "kind": kind,
        "model_name": info["model_name"],
        "threshold": info["threshold"],
        "features": list(FEATURE_NAMES),
        "metrics": candidates[kind],
        "cv_metrics": info["metrics"],
        "best_params": info["best_params"],
        "data_hash": info["data_hash"],
        "test_data_hash": file_sha256(paths.test),
        "sha256": sha,
        "n_train": info["n_train"],
        "n_test": int(len(X)),
        "trained_at": info["trained_at"],
        "promoted_at": now,
        "git_commit": info["git_commit"],
        "mlflow_run_id": info["mlflow_run_id"],
        "mlflow_model_uri": info["mlflow_model_uri"],
        "registered_model": params["promote"]["registered_model"],
        "min_recall": params["train"]["min_recall"],
        "parity_gap": gap,
        # the training inputs' distribution, so the server can measure drift without the data
        "reference": reference_profile(read_samples(paths.train), params["page"]["drift_bins"]),
    }
    return blob, meta, gap


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
    )
    return {k: record.get(k) for k in keys}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--decision", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    paths = Paths(
        train=args.train,
        test=args.test,
        candidates=args.candidates,
        metrics=args.metrics,
        model_dir=args.out,
    )
    record = promote(paths, load_params(args.params), get_settings())
    artifacts.write_json_atomic(args.decision, {
        "promoted": record["promote"], "challenger": record["challenger"], "reason": record["reason"],
        "version": record.get("version"),
        "challenger_precision": (record["challenger_metrics"] or {}).get("precision"),
        "champion_precision_before": (record["champion_before"] or {}).get("precision"),
    })  # fmt: skip
    print(f"promotion: {record['reason']}")


if __name__ == "__main__":
    main()
