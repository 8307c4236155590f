"""A small real model, promoted as the pipeline would promote one, built in seconds without DVC.

Forty trees on synthetic rows, judged on its own training data: not a model to
serve anyone, but a real ONNX model directory (``meta.json``, reference
profile, history) for the tests and benches that deploy and serve one.
"""

from __future__ import annotations

from pathlib import Path

from potability import artifacts
from potability.features import feature_matrix, labels
from potability.pipeline.modeling import (
    build_pipeline,
    choose_threshold,
    classification_metrics,
    operating_points,
    precision_promise,
)
from potability.pipeline.promotion import recall_rule
from potability.quality import reference_profile
from potability.schema import FEATURE_NAMES
from potability.synth import generate


def build_model_dir(
    directory: Path, version: str = "test-rf-1", rows: int = 1200, seed: int = 31
) -> Path:
    """A real promoted model directory (small forest, ONNX) built by the library, without DVC."""
    frame = generate(rows, seed=seed)
    X, y = feature_matrix(frame), labels(frame)
    model = build_pipeline("rf", seed=0)
    model.set_params(clf__n_estimators=40, clf__min_samples_leaf=4)
    model.fit(X, y)
    choice = choose_threshold(y, model.predict_proba(X)[:, 1], 0.2, 10)
    blob = artifacts.to_onnx(model)
    probabilities = model.predict_proba(X)[:, 1]
    metrics = {
        **classification_metrics(y, probabilities, choice.threshold),
        "operating_points": operating_points(y, probabilities, [0.2, 0.3]),
        **precision_promise(choice.precision * choice.positives, choice.positives, 0, 0, 0.95),
        "recall_rule": recall_rule(0.2, 10, 0.95),
    }
    meta = {
        "version": version,
        "kind": "rf",
        "model_name": "random forest",
        "threshold": choice.threshold,
        "features": list(FEATURE_NAMES),
        "sha256": artifacts.sha256_bytes(blob),
        "n_train": len(frame),
        "metrics": metrics,
        "trained_at": "2026-11-23T00:00:00+00:00",
        "promoted_at": "2026-11-23T00:00:00+00:00",
        "decided_against": None,
        "input_example": X[:3].tolist(),
        "reference": reference_profile(frame, 10),
    }
    history = [{"promote": True, "challenger": "rf", "reason": "test", "version": version}]
    artifacts.write_model_dir(directory, blob, meta, {"history.json": history})
    return directory
