"""Shared fixtures: one real PostgreSQL per test session (pgserver in a temp dir), clean tables per test."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from potability import db, migrator
from potability.inference_store import InferenceStore
from potability.mart import WaterMart
from potability.pipeline.small_model import build_model_dir
from tests.support.project import REPO, SERVED_MODEL, project_env


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
    # the database roles' passwords in a temp dir, never the repository's .db-roles.json
    os.environ["POTABILITY_DB_ROLES_FILE"] = str(tmp_path_factory.mktemp("roles") / "roles.json")
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


@pytest.fixture
def cli_env(clean_db) -> dict[str, str]:
    return project_env(REPO, clean_db)


@dataclass(frozen=True)
class Champion:
    """A model deployed to the session's registry, and how a server finds it."""

    name: str
    version: str
    model_version: str
    tracking_uri: str
    directory: Path

    def app_config(self, tmp: Path) -> dict[str, Any]:
        """The ``Settings`` fields of a server that follows this model, with its cache under ``tmp``."""
        return {
            "registered_model": self.name,
            "mlflow_tracking_uri": self.tracking_uri,
            "model_cache_dir": tmp / "model-cache",
        }

    def server_env(self, tmp: Path) -> dict[str, str]:
        return {
            "POTABILITY_REGISTERED_MODEL": self.name,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "POTABILITY_MODEL_CACHE": str(tmp / "model-cache"),
        }


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
def server_settings(tmp_path, mart):
    """Build the ``Settings`` of an in-process server: our database, its own directories.

    ``server_settings(**fields)``; ``tmp=`` puts its spool, run directory and model
    cache elsewhere than the test's ``tmp_path`` (two hosts in one test).
    """
    from potability.config import Settings

    def build(tmp: Path | None = None, **fields: Any) -> Settings:
        home = tmp or tmp_path
        defaults = {
            "database_url": mart.url,
            "spool_dir": home / "spool",
            "run_dir": home / "run",
            "model_cache_dir": home / "model-cache",
        }
        return Settings(root=REPO, **{**defaults, **fields})

    return build


@pytest.fixture
def app_without_model(server_settings):
    """The server app started before anything was deployed."""
    from potability.serve import create_app, shutdown

    app = create_app(server_settings(registered_model="never-deployed"))
    yield app
    shutdown(app)


# ---- issue 24: helpers that need conftest's Champion, as fixtures (test modules never import conftest) ----


@pytest.fixture(name="deploy_dir")
def deploy_dir_fixture(pg_url):
    """``deploy_dir`` for a test: `potability deploy` of a model directory under a registered model it names."""
    return deploy_dir


@pytest.fixture(scope="module")
def harness():
    """A temporary Prefect API for flows run in this process (per module: it takes seconds to start)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield
