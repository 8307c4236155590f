"""Stage promote: the best eligible challenger replaces the champion only if at least as good.

The champion is re-measured on the *current* test split, so both are judged on
the same samples. Before anything is written, the challenger's ONNX export must
match scikit-learn's probabilities within ``promote.parity_tolerance``.
"""

from __future__ import annotations

import argparse
import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from potability import artifacts, tracking
from potability.config import Settings, get_settings, load_params
from potability.features import feature_matrix, labels, read_samples
from potability.modeling import classification_metrics
from potability.promotion import Decision, decide
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


def promote(
    test_csv: Path,
    candidates_dir: Path,
    metrics_path: Path,
    model_dir: Path,
    params: dict[str, Any],
    settings: Settings,
) -> dict[str, Any]:
    """Decide, and on promotion write ``model_dir`` and move the MLflow alias; return the decision record."""
    frame = read_samples(test_csv)
    X, y = feature_matrix(frame), labels(frame)
    candidates = json.loads(metrics_path.read_text(encoding="utf-8"))
    floor, min_pos = params["train"]["min_recall"], params["train"]["min_positives"]
    champion = champion_metrics(model_dir, X, y)
    decision = decide(candidates, champion, floor, min_pos)
    now = datetime.now(UTC).isoformat(timespec="seconds")
    record: dict[str, Any] = {
        "decided_at": now,
        **decision.as_dict(),
        "challenger_metrics": candidates.get(decision.challenger) if decision.challenger else None,
        "champion_before": champion,
        "candidates_metrics": candidates,
        "min_recall": floor,
    }
    history = read_history(model_dir)
    if decision.promote:
        record.update(
            _publish(
                decision,
                candidates,
                test_csv,
                candidates_dir,
                model_dir,
                X,
                params,
                settings,
                now,
                history,
                record,
            )
        )
    else:
        record["version"] = champion["version"] if champion else None
        model_dir.mkdir(parents=True, exist_ok=True)
        artifacts.write_json_atomic(model_dir / HISTORY_FILE, [*history, _summary(record)])
    log.info("promotion decision: %s", record["reason"])
    return record


def _publish(
    decision: Decision,
    candidates,
    test_csv,
    candidates_dir,
    model_dir,
    X,
    params,
    settings,
    now,
    history,
    record,
):
    kind = decision.challenger
    info = read_train_info(candidates_dir / kind)
    model = artifacts.load_candidate(candidates_dir / kind)
    blob = artifacts.to_onnx(model)
    gap = artifacts.parity_gap(model, blob, X)
    tolerance = params["promote"]["parity_tolerance"]
    if gap > tolerance:
        reason = f"refused {kind}: ONNX probabilities differ from scikit-learn's by {gap:.2e} > {tolerance:.0e}"
        model_dir.mkdir(parents=True, exist_ok=True)
        outcome = {"promote": False, "reason": reason, "parity_gap": gap}
        artifacts.write_json_atomic(
            model_dir / HISTORY_FILE, [*history, _summary({**record, **outcome})]
        )
        return outcome
    sha = artifacts.sha256_bytes(blob)
    version = f"{datetime.now(UTC):%Y%m%d%H%M%S}-{kind}-{sha[:8]}"
    tracking.configure(settings)
    registry_version = tracking.register_champion(
        info["mlflow_model_uri"], params["promote"]["registered_model"], params["promote"]["alias"],
        tags={"version": version, "sha256": sha, "test_precision": f"{candidates[kind]['precision']:.4f}"},
    )  # fmt: skip
    meta = {
        "version": version,
        "kind": kind,
        "model_name": info["model_name"],
        "threshold": info["threshold"],
        "features": list(FEATURE_NAMES),
        "metrics": candidates[kind],
        "cv_metrics": info["metrics"],
        "best_params": info["best_params"],
        "data_hash": info["data_hash"],
        "test_data_hash": artifacts.sha256_bytes(test_csv.read_bytes()),
        "sha256": sha,
        "n_train": info["n_train"],
        "n_test": int(len(X)),
        "trained_at": info["trained_at"],
        "promoted_at": now,
        "git_commit": info["git_commit"],
        "mlflow_run_id": info["mlflow_run_id"],
        "registered_model": params["promote"]["registered_model"],
        "registered_version": registry_version,
        "min_recall": params["train"]["min_recall"],
        "parity_gap": gap,
    }
    outcome = {"version": version, "parity_gap": gap, "registered_version": registry_version}
    artifacts.write_production(
        model_dir, blob, meta, {HISTORY_FILE: [*history, _summary({**record, **outcome})]}
    )
    return outcome


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
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--candidates", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--decision", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    record = promote(
        args.test, args.candidates, args.metrics, args.out, load_params(args.params), get_settings()
    )
    artifacts.write_json_atomic(args.decision, {
        "promoted": record["promote"], "challenger": record["challenger"], "reason": record["reason"],
        "version": record.get("version"),
        "challenger_precision": (record["challenger_metrics"] or {}).get("precision"),
        "champion_precision_before": (record["champion_before"] or {}).get("precision"),
    })  # fmt: skip
    print(f"promotion: {record['reason']}")


if __name__ == "__main__":
    main()
