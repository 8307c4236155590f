"""MLflow: where runs go (Postgres), how a candidate is logged, how the champion is named.

Only entry points call this module; the pure train and evaluation functions
know nothing about MLflow.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from potability import db
from potability.config import Settings
from potability.schema import FEATURE_NAMES

log = logging.getLogger(__name__)
EXPERIMENT = "water-potability"


def configure(settings: Settings) -> None:
    """Point MLflow at the Postgres tracking store and our experiment."""
    import mlflow

    mlflow.set_tracking_uri(db.mlflow_tracking_uri(settings))
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        settings.mlflow_artifacts.mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(EXPERIMENT, artifact_location=settings.mlflow_artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def log_candidate(
    *,
    kind: str,
    model: Any,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    example: np.ndarray,
) -> tuple[str, str]:
    """Log one tuned candidate as an MLflow run with its model; return (run_id, model_uri)."""
    import mlflow
    import pandas as pd
    import sklearn
    import skops
    import skops.io as sio

    frame = pd.DataFrame(example, columns=list(FEATURE_NAMES))
    with mlflow.start_run(run_name=f"train-{kind}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="skops",
            skops_trusted_types=sio.get_untrusted_types(data=sio.dumps(model)),
            pip_requirements=[
                f"scikit-learn=={sklearn.__version__}",
                f"skops=={skops.__version__}",
            ],
            signature=mlflow.models.infer_signature(frame, model.predict_proba(example)[:, 1]),
        )
    return run.info.run_id, info.model_uri


def register_champion(model_uri: str, name: str, alias: str, tags: dict[str, str]) -> str:
    """Register ``model_uri`` under ``name`` and move ``alias`` to it; return the version."""
    import mlflow

    version = mlflow.register_model(model_uri, name, tags=tags)
    mlflow.MlflowClient().set_registered_model_alias(name, alias, version.version)
    return str(version.version)
