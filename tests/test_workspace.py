"""The retrain's working copy refuses what would eat an operator's work or commit on their branch."""

from __future__ import annotations

import subprocess

import pytest

from potability.config import Settings
from potability.retrain import workspace

GIT = ["git", "-c", "user.email=r@example.org", "-c", "user.name=researcher"]


@pytest.fixture
def checkout(tmp_path):
    """An operator's checkout: one commit on branch main."""
    root = tmp_path / "checkout"
    root.mkdir()
    subprocess.run([*GIT, "init", "--quiet", "--initial-branch", "main"], cwd=root, check=True)
    (root / "params.yaml").write_text("train: {}\n")
    subprocess.run([*GIT, "add", "-A"], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "--quiet", "-m", "start"], cwd=root, check=True)
    return root


def test_in_place_mode_refuses_a_checkout_with_uncommitted_work(checkout):
    (checkout / "params.yaml").write_text("train: {seed: 1}\n")  # a researcher's edit
    settings = Settings(root=checkout, retrain_workspace=".")
    with pytest.raises(workspace.WorkspaceError, match="has changes.*params.yaml"):
        workspace.prepare(settings)
    assert (checkout / "params.yaml").read_text() == "train: {seed: 1}\n"  # untouched


def test_the_retrain_branch_cannot_be_the_source_branch(checkout):
    settings = Settings(root=checkout, source_branch="main", retrain_branch="main")
    with pytest.raises(workspace.WorkspaceError, match="both 'main'"):
        workspace.prepare(settings)
    # the default source is the cloned repository's HEAD branch: the same refusal
    with pytest.raises(workspace.WorkspaceError, match="both 'main'"):
        workspace.prepare(Settings(root=checkout, retrain_branch="main"))


def test_a_workspace_directory_holding_other_files_is_refused_not_emptied(checkout, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "keep.csv").write_text("precious\n")
    with pytest.raises(workspace.WorkspaceError, match="not empty and not a clone"):
        workspace.prepare(Settings(root=checkout, retrain_workspace=data))
    assert (data / "keep.csv").read_text() == "precious\n"


def test_stages_never_get_the_owners_urls_or_libpqs_credentials(checkout, monkeypatch):
    """libpq reads a user and password from its own variables: a stage must connect as its URL says."""
    from potability.retrain.connections import DEPLOY_ENV

    carried = ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGUSER", *DEPLOY_ENV)
    for name in carried:
        monkeypatch.setenv(name, "postgresql://owner:s3cret@db/water")
    settings = Settings(
        root=checkout,
        database_url="postgresql://pipeline:p@db/water",
        mlflow_tracking_uri="postgresql+psycopg2://pipeline:p@db/mlflow",
    )
    env = workspace.stage_env(settings, checkout / ".retrain")
    assert not [name for name in carried if name in env]
    assert env["DATABASE_URL"] == "postgresql://pipeline:p@db/water"
