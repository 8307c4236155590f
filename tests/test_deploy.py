"""`potability deploy`: what it ships, what it refuses, and what it records (real MLflow + Postgres)."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from potability import deploy, deployments, tracking
from potability.config import Settings
from potability.pipeline.small_model import build_model_dir
from tests.support.project import REPO, SERVED_MODEL


@pytest.fixture
def name(clean_db):
    """A registered model of this test alone; in-process settings point at it."""
    registered = f"deploy-{uuid.uuid4().hex[:8]}"
    os.environ["POTABILITY_REGISTERED_MODEL"] = registered
    yield registered
    os.environ["POTABILITY_REGISTERED_MODEL"] = SERVED_MODEL


def test_a_directory_without_a_model_is_refused(name, tmp_path):
    (tmp_path / "promoted").mkdir()
    (tmp_path / "promoted" / "history.json").write_text("[]")
    with pytest.raises(deploy.DeployError, match="nothing to deploy.*model"):
        deploy.deploy_promoted(tmp_path / "promoted", "ann", None, Settings(root=REPO))
    assert deployments.history(name) == []


def test_a_decision_made_against_another_champion_is_refused(deploy_dir, name, tmp_path):
    deploy_dir(build_model_dir(tmp_path / "v1"), name)
    stale = build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32)  # judged against "none"
    with pytest.raises(deploy.DeployError, match="judged against champion version none.*--force"):
        deploy.deploy_promoted(stale, "ann", None, Settings(root=REPO))
    assert tracking.version_for_alias(name, "champion").model_version == "test-rf-1"
    forced = deploy.deploy_promoted(stale, "ann", "lab review", Settings(root=REPO), force=True)
    assert forced.changed and forced.previous_version == "1" and forced.registry_version == "2"


def test_deploying_the_champion_again_changes_nothing(deploy_dir, name, tmp_path):
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    again = deploy.deploy_promoted(first.directory, "ann", None, Settings(root=REPO))
    assert not again.changed and "already the champion" in again.message
    assert len(deployments.history(name)) == 1


def test_a_rollback_is_recorded_with_who_why_and_what_it_replaced(deploy_dir, name, tmp_path):
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), name)
    back = deploy.rollback(first.version, "ann", "too many potable calls", Settings(root=REPO))
    assert back.changed and back.registry_version == first.version
    latest = deployments.history(name)[0]
    assert (latest.action, latest.deployed_by, latest.reason) == (
        "rollback",
        "ann",
        "too many potable calls",
    )
    assert (latest.previous_version, latest.previous_model_version) == ("2", "test-rf-2")
    with pytest.raises(deploy.DeployError, match=r"no version '7'; registered versions: \[1, 2\]"):
        deploy.rollback("7", "ann", None, Settings(root=REPO))


def test_the_registered_version_carries_what_a_user_needs(deploy_dir, name, tmp_path):
    import mlflow

    shipped = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    meta = json.loads((shipped.directory / "meta.json").read_text())
    version = tracking.get_version(name, shipped.version)
    assert version.tags["sha256"] == meta["sha256"] and version.tags["model_version"] == "test-rf-1"
    info = mlflow.models.get_model_info(f"models:/{name}/{shipped.version}")
    assert [c["name"] for c in info.signature.inputs.to_dict()] == meta["features"]
    assert [c["name"] for c in info.signature.outputs.to_dict()] == ["probability", "potable"]
    files = tracking.download_version(name, shipped.version, tmp_path / "fetched")
    assert sorted(p.name for p in files.iterdir()) == [
        "history.json",
        "manifest.json",
        "meta.json",
        "model.onnx",
    ]
    assert (files / "model.onnx").read_bytes() == (shipped.directory / "model.onnx").read_bytes()
