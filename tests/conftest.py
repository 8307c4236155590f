"""Shared fixtures: one real PostgreSQL per test session (pgserver in a temp dir), clean tables per test."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from potability import db, migrator
from potability.inference_store import InferenceStore
from potability.mart import WaterMart

REPO = Path(__file__).resolve().parents[1]
SERVED_MODEL = "served-test"  # the registered model the server tests follow
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory) -> str:
    """A real PostgreSQL for this session; DATABASE_URL points every library call at it."""
    if os.environ.get("POTABILITY_TEST_DATABASE_URL"):
        url = os.environ["POTABILITY_TEST_DATABASE_URL"]
        pgdata = None
    else:
        pgdata = tmp_path_factory.mktemp("pg") / "data"
        url = db.embedded_server_url(pgdata)
    os.environ["DATABASE_URL"] = url
    # MLflow's artifacts in a temp dir, never the repository's mlartifacts/
    os.environ["POTABILITY_MLFLOW_ARTIFACTS"] = str(tmp_path_factory.mktemp("mlartifacts"))
    os.environ["POTABILITY_REGISTERED_MODEL"] = SERVED_MODEL
    migrator.migrate(url=url)
    yield url
    if pgdata is not None:
        db.stop_embedded_server(pgdata)


@pytest.fixture
def clean_db(pg_url) -> str:
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE water.water_potability, water.water_inferences, water.api_tokens, water.flow_state, "
            "water.deployments, water.inference_hourly, water.feature_histogram_hourly, water.lab_matches"
        )
    return pg_url


@pytest.fixture
def mart(clean_db) -> WaterMart:
    m = WaterMart(url=clean_db)
    yield m
    m.close()


@pytest.fixture
def store(clean_db) -> InferenceStore:
    """The inference log's storage, on its own connection (as the server's log writer has it)."""
    s = InferenceStore(url=clean_db)
    yield s
    s.close()


def tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in out.stdout.splitlines() if line]


def copy_project(dest: Path, fast_params: bool = True) -> Path:
    """Copy the project's files (as git sees them) into ``dest``, as a fresh git + DVC repo."""
    for rel in tracked_files():
        src = REPO / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)
    if fast_params:
        import yaml

        params = yaml.safe_load((dest / "params.yaml").read_text())
        params["train"]["cv_folds"] = 3
        params["train"]["models"]["rf"] = {
            "n_estimators": [60],
            "max_depth": [None],
            "min_samples_leaf": [4],
            "max_features": ["sqrt"],
        }
        params["train"]["models"]["svm"] = {"C": [1.0], "gamma": ["scale"]}
        (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=test@example.org", "-c", "user.name=test"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "test copy"], cwd=dest, check=True)
    return dest


def project_env(root: Path, pg_url: str) -> dict[str, str]:
    """The environment a user would have in ``root``: venv on PATH, our database.

    Each project copy has a registered model of its own, so one test module's
    deployments never become another's champion. ``MLFLOW_TRACKING_URI`` is not
    inherited: ``mlflow.set_tracking_uri()`` in this process exports it, and a
    copy with its own Postgres must track into that Postgres, as a user's would.
    """
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {
        **inherited,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": pg_url,
        "POTABILITY_ROOT": str(root),
        "POTABILITY_REGISTERED_MODEL": f"project-{hashlib.sha256(str(root).encode()).hexdigest()[:10]}",
        "PYTHONWARNINGS": "ignore",
    }


def run(
    cmd: list[str], cwd: Path, env: dict[str, str], check: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


HEADER_HINT = "ph,Hardness,Solids,Chloramines,Sulfate,Conductivity,Organic_carbon,Trihalomethanes,Turbidity,Potability\n"


@pytest.fixture
def cli_env(clean_db) -> dict[str, str]:
    return project_env(REPO, clean_db)


def build_model_dir(
    directory: Path, version: str = "test-rf-1", rows: int = 1200, seed: int = 31
) -> Path:
    """A real promoted model directory (small forest, ONNX) built by the library, without DVC."""
    from potability import artifacts
    from potability.features import feature_matrix, labels
    from potability.modeling import (
        build_pipeline,
        choose_threshold,
        classification_metrics,
        operating_points,
        precision_promise,
    )
    from potability.promotion import recall_rule
    from potability.quality import reference_profile
    from potability.schema import FEATURE_NAMES
    from potability.synth import generate

    frame = generate(rows, seed=seed)
    X, y = feature_matrix(frame), labels(frame)
    model = build_pipeline("rf", seed=0)
    model.set_params(clf__n_estimators=40, clf__min_samples_leaf=4)
    model.fit(X, y)
    choice = choose_threshold(y, model.predict_proba(X)[:, 1], 0.2, 10)
    blob = artifacts.to_onnx(model)
    meta = {"version": version, "kind": "rf", "model_name": "random forest", "threshold": choice.threshold,
            "features": list(FEATURE_NAMES), "sha256": artifacts.sha256_bytes(blob), "n_train": len(frame),
            "metrics": {**classification_metrics(y, model.predict_proba(X)[:, 1], choice.threshold),
                        "operating_points": operating_points(y, model.predict_proba(X)[:, 1], [0.2, 0.3]),
                        **precision_promise(choice.precision * choice.positives, choice.positives, 0, 0, 0.95),
                        "recall_rule": recall_rule(0.2, 10, 0.95)},
            "trained_at": "2026-11-23T00:00:00+00:00", "promoted_at": "2026-11-23T00:00:00+00:00",
            "decided_against": None, "input_example": X[:3].tolist(),
            "reference": reference_profile(frame, 10)}  # fmt: skip
    history = [{"promote": True, "challenger": "rf", "reason": "test", "version": version}]
    artifacts.write_model_dir(directory, blob, meta, {"history.json": history})
    return directory


@dataclass(frozen=True)
class Champion:
    """A model deployed to the session's registry, and how a server finds it."""

    name: str
    version: str
    model_version: str
    tracking_uri: str
    directory: Path

    def app_config(self, tmp: Path) -> dict[str, str]:
        return {"REGISTERED_MODEL": self.name, "MLFLOW_TRACKING_URI": self.tracking_uri,
                "MODEL_CACHE_DIR": str(tmp / "model-cache")}  # fmt: skip

    def server_env(self, tmp: Path) -> dict[str, str]:
        return {"POTABILITY_REGISTERED_MODEL": self.name, "MLFLOW_TRACKING_URI": self.tracking_uri,
                "POTABILITY_MODEL_CACHE": str(tmp / "model-cache")}  # fmt: skip


def deploy_dir(directory: Path, name: str, force: bool = True) -> Champion:
    """`potability deploy` of ``directory`` under the registered model ``name``, in this process."""
    from potability import deploy
    from potability.config import Settings

    previous = os.environ.get("POTABILITY_REGISTERED_MODEL")
    os.environ["POTABILITY_REGISTERED_MODEL"] = name
    try:
        settings = Settings(root=REPO)
        result = deploy.deploy_promoted(directory, "pytest", "test fixture", settings, force=force)
        uri = db.mlflow_tracking_uri(settings)
    finally:
        os.environ["POTABILITY_REGISTERED_MODEL"] = previous or SERVED_MODEL
    return Champion(name, result.registry_version, result.model_version, uri, directory)


@pytest.fixture(scope="session")
def champion(pg_url, tmp_path_factory) -> Champion:
    """The session's served model: deployed once to the registry, never moved by a test."""
    directory = build_model_dir(tmp_path_factory.mktemp("models") / "promoted")
    return deploy_dir(directory, SERVED_MODEL)


@pytest.fixture
def app_without_model(mart, tmp_path):
    """The server app started before anything was deployed."""
    from serve import create_app, shutdown

    app = create_app(
        {
            "DATABASE_URL": mart.url,
            "REGISTERED_MODEL": "never-deployed",
            "MODEL_CACHE_DIR": str(tmp_path / "cache"),
            "SPOOL_DIR": str(tmp_path / "s"),
        }
    )
    yield app
    shutdown(app)
