"""MLflow: where runs go (Postgres), how a candidate is logged, how the champion is named.

Only entry points call this module; the pure train and evaluation functions
know nothing about MLflow.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from potability import artifacts, db
from potability.config import Settings
from potability.schema import FEATURE_NAMES

log = logging.getLogger(__name__)
EXPERIMENT = "water-potability"


def configure(settings: Settings) -> None:
    """Point MLflow at the tracking store and our experiment.

    An embedded store (a database URI) puts artifacts where
    ``POTABILITY_MLFLOW_ARTIFACTS`` says. A tracking server (``http(s)://``)
    chooses the location itself (``mlflow-artifacts:/`` with
    ``--serve-artifacts``), so hosts that cannot see this machine's disk read
    every version through it.
    """
    import mlflow

    mlflow.set_tracking_uri(db.mlflow_tracking_uri(settings))
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        location = None
        if not settings.tracking_server:
            location = settings.mlflow_artifact_uri
            if location.startswith("file://"):
                Path(settings.mlflow_artifacts).mkdir(parents=True, exist_ok=True)
        mlflow.create_experiment(EXPERIMENT, artifact_location=location)
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

    frame = pd.DataFrame(example, columns=list(FEATURE_NAMES))
    with mlflow.start_run(run_name=f"train-{kind}") as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags)
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            serialization_format="skops",
            skops_trusted_types=sorted(artifacts.CANDIDATE_TYPES),  # never what the file asks for
            pip_requirements=[
                f"scikit-learn=={sklearn.__version__}",
                f"skops=={skops.__version__}",
            ],
            signature=mlflow.models.infer_signature(frame, model.predict_proba(example)[:, 1]),
        )
    return run.info.run_id, info.model_uri


def log_test_results(run_id: str, metrics: dict[str, float], figure: Any) -> None:
    """Add a candidate's test-split metrics (prefixed ``test_``) and its PR/confusion figure to its run.

    Nested values are flattened: the confusion matrix one metric per cell,
    operating points one per recall, a 95 % interval as ``_low``/``_high``.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    flat: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            flat.update({f"test_{key}_{cell}": float(v) for cell, v in value.items()})
        elif isinstance(value, list | tuple):  # an interval
            flat[f"test_{key}_low"], flat[f"test_{key}_high"] = map(float, value)
        elif value is not None:
            flat[f"test_{key}"] = float(value)
    now = int(time.time() * 1000)
    client = mlflow.MlflowClient()
    client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in flat.items()])
    client.log_figure(run_id, figure, "test/pr_and_confusion.png")


# -- the registry: what `potability deploy` ships and what servers follow --------------
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
MANIFEST_TAG = "manifest_sha256"  # the registry's copy of the manifest's hash: the root of trust
SHIPPED_FILES = (*artifacts.SERVED_FILES, artifacts.MANIFEST_FILE)


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of the registered model: its number and the tags deploy gave it."""

    name: str
    version: str
    tags: dict[str, str]
    run_id: str | None = None  # the MLflow run the version was logged in

    @property
    def model_version(self) -> str:
        """Our own label (timestamp-kind-sha), as in meta.json and every inference row."""
        return self.tags.get("model_version", "")


def register_model_dir(
    model_dir: Path, name: str, run_id: str | None, tags: dict[str, str], example: Any
) -> RegisteredVersion:
    """Log ``model_dir`` (ONNX, meta.json, history.json) as a pyfunc and register it as a new version.

    The pyfunc is logged as code (``pyfunc_model.py``), so nothing is pickled;
    it is logged into the candidate's training run when that run exists.
    """
    import mlflow
    import onnxruntime
    import pandas as pd
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("double", n, required=False) for n in FEATURE_NAMES]),
        outputs=Schema([ColSpec("double", "probability"), ColSpec("boolean", "potable")]),
    )
    client = mlflow.MlflowClient()
    if run_id is not None:
        try:
            client.get_run(run_id)
        except mlflow.exceptions.MlflowException:
            log.warning(
                "training run %s is not in this tracking store; deploying in a new run", run_id
            )
            run_id = None
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "deploy") as run:
        info = mlflow.pyfunc.log_model(
            name="deployable",
            python_model=str(PYFUNC_CODE),
            artifacts={
                "model": str(model_dir / "model.onnx"),
                "meta": str(model_dir / "meta.json"),
                "history": str(model_dir / "history.json"),
                "manifest": str(model_dir / artifacts.MANIFEST_FILE),
            },
            signature=signature,
            input_example=pd.DataFrame(example, columns=list(FEATURE_NAMES)),
            pip_requirements=[
                f"mlflow=={mlflow.__version__}",
                f"onnxruntime=={onnxruntime.__version__}",
                f"numpy=={np.__version__}",
                f"pandas=={pd.__version__}",
            ],
        )
    version = mlflow.register_model(info.model_uri, name, tags=tags)
    log.info("registered %s version %s from run %s", name, version.version, run.info.run_id)
    return RegisteredVersion(name, str(version.version), dict(tags), run.info.run_id)


def set_alias(name: str, alias: str, version: str) -> None:
    import mlflow

    mlflow.MlflowClient().set_registered_model_alias(name, alias, version)


def version_for_alias(name: str, alias: str, client: Any = None) -> RegisteredVersion | None:
    """The version ``alias`` names, or None if the model or the alias does not exist yet."""
    import mlflow

    client = client or mlflow.MlflowClient()
    try:
        found = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise
    return RegisteredVersion(name, str(found.version), dict(found.tags), found.run_id)


def get_version(name: str, version: str, client: Any = None) -> RegisteredVersion:
    """One registered version; raise ``LookupError`` naming what exists when it does not."""
    import mlflow

    client = client or mlflow.MlflowClient()
    try:
        found = client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException as exc:
        known = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise LookupError(
            f"{name} has no version {version!r}; registered versions: {known or 'none'}"
        ) from exc
    return RegisteredVersion(name, str(found.version), dict(found.tags), found.run_id)


def download_version(name: str, version: str, dest: Path, client: Any = None) -> Path:
    """Fetch the shipped files of one version into ``dest`` (a fresh directory); return ``dest``."""
    import os
    import tempfile

    import mlflow

    # a server log, not a terminal
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = client or mlflow.MlflowClient()
    source = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory(prefix="download-", dir=dest.parent) as tmp:
        # the client's server resolves an `mlflow-artifacts:/` source, whatever this process's default
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=tmp, tracking_uri=client.tracking_uri
            )
        )
        dest.mkdir(parents=True, exist_ok=True)
        for filename in SHIPPED_FILES:
            shipped = local / "artifacts" / filename
            if shipped.exists():
                (dest / filename).write_bytes(shipped.read_bytes())
    return dest


def check_manifest_tag(found: RegisteredVersion, served: artifacts.ServedModel) -> None:
    """Refuse a loaded version whose manifest is not the one registered (or none was registered)."""
    expected = found.tags.get(MANIFEST_TAG)
    actual = served.meta["manifest_sha256"]
    if not expected:
        raise artifacts.UnsealedVersion(
            f"{found.name} version {found.version} has no {MANIFEST_TAG} tag: registered "
            "without a manifest, so its files cannot be checked; deploy the model again"
        )
    if expected != actual:
        raise artifacts.ArtifactError(
            f"{found.name} version {found.version}: manifest sha256 {actual[:12]}… differs from "
            f"the registered {expected[:12]}… (its files changed in the artifact store)"
        )


def fetch_version(
    found: RegisteredVersion, dest: Path, client: Any = None
) -> artifacts.ServedModel:
    """Download one registered version into ``dest`` and check it fully (manifest, features, a probe).

    The version's ``manifest_sha256`` tag, set at deploy in the registry, must
    match the downloaded manifest, so a file changed in the artifact store after
    registration (the manifest rewritten to match included) is refused, and so
    is a version without the tag.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    try:
        download_version(found.name, found.version, staging, client)
        served = artifacts.load_model_dir(staging)
        check_manifest_tag(found, served)
        shutil.rmtree(dest, ignore_errors=True)
        try:
            staging.rename(dest)
        except OSError:  # another worker cached the same version a moment ago: theirs is as good
            if not (dest / artifacts.META_FILE).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return artifacts.ServedModel(served.model, {**served.meta, "registered_version": found.version})
