"""One manifest covers every file a server or its page reads: a changed or missing hash is refused.

``meta.json``'s threshold decides "potable" without touching the ONNX file, and
``history.json`` is shown to the public, so each is hashed in the model
directory's manifest, whose own hash the registry keeps as a tag. Deploy, a
server's load and reload, and a start from the local cache all check it; the
old model keeps serving when they refuse.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pandas as pd
import pytest

from potability import artifacts, deploy, tracking
from potability.config import Settings
from potability.pipeline.small_model import build_model_dir
from potability.serve import create_app, shutdown
from tests.support.project import REPO
from tests.support.server import SAMPLE, auth


def stored_files(name: str, version: str) -> Path:
    """Where the artifact store keeps a registered version's shipped files (a local file store)."""
    import mlflow

    location = mlflow.MlflowClient().get_model_version_download_uri(name, version)
    assert location.startswith("file://"), location
    return Path(location.removeprefix("file://")) / "artifacts"


def set_threshold(directory: Path, threshold: float) -> None:
    meta = json.loads((directory / artifacts.META_FILE).read_text())
    (directory / artifacts.META_FILE).write_text(json.dumps({**meta, "threshold": threshold}))


@pytest.fixture
def serving(deploy_dir, server_settings, mart, tmp_path):
    """A server following a registered model of its own, a second version deployed but not loaded."""
    name = f"integrity-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    app = create_app(server_settings(**first.app_config(tmp_path), model_poll_seconds=3600))
    second = deploy_dir(build_model_dir(tmp_path / "v2", version="test-rf-2", seed=32), name)
    tokens = {role: mart.create_token(f"{role}-{name}", role) for role in ("sensor", "admin")}
    yield app, first, second, tokens
    shutdown(app)


def _answer(client, tokens) -> dict:
    return client.post("/v1/predict", json=SAMPLE, headers=auth(tokens["sensor"])).get_json()


def test_a_threshold_changed_in_the_artifact_store_is_refused_and_the_old_model_serves(serving):
    app, first, second, tokens = serving
    client = app.test_client()
    before = _answer(client, tokens)
    set_threshold(stored_files(second.name, second.version), 0.0)  # every sample "potable"
    r = client.post("/admin/reload", headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "meta.json" in r.get_json()["error"]["message"]
    after = _answer(client, tokens)
    assert after == {**before, "inference_id": after["inference_id"]}
    assert after["model_version"] == "test-rf-1" and after["threshold"] == before["threshold"]


def test_a_manifest_rewritten_to_match_is_refused_by_the_registry_tag(serving):
    app, first, second, tokens = serving
    stored = stored_files(second.name, second.version)
    set_threshold(stored, 0.0)
    manifest = json.loads((stored / artifacts.MANIFEST_FILE).read_text())
    manifest["files"]["meta.json"] = artifacts.sha256_bytes((stored / "meta.json").read_bytes())
    (stored / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest))
    r = app.test_client().post("/admin/reload", headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "manifest" in r.get_json()["error"]["message"]
    assert _answer(app.test_client(), tokens)["model_version"] == "test-rf-1"


def test_a_version_registered_without_the_manifest_tag_is_refused(serving, tmp_path):
    app, first, second, tokens = serving
    directory = build_model_dir(tmp_path / "untagged", version="test-rf-untagged")
    meta = json.loads((directory / "meta.json").read_text())
    registered = tracking.register_model_dir(
        directory, first.name, None, {"model_version": "test-rf-untagged"}, meta["input_example"]
    )
    tracking.set_alias(first.name, "champion", registered.version)
    r = app.test_client().post("/admin/reload", headers=auth(tokens["admin"]))
    assert r.status_code == 422 and "manifest" in r.get_json()["error"]["message"]
    assert _answer(app.test_client(), tokens)["model_version"] == "test-rf-1"


def test_a_start_from_the_cache_refuses_a_changed_cached_file(
    deploy_dir, server_settings, tmp_path
):
    first = deploy_dir(build_model_dir(tmp_path / "v1"), f"cache-{uuid.uuid4().hex[:8]}")
    config = {**first.app_config(tmp_path), "model_poll_seconds": 3600}
    shutdown(create_app(server_settings(**config)))  # a server ran once: v1 is in its cache
    set_threshold(tmp_path / "model-cache" / f"v{first.version}", 0.0)
    dead = "postgresql+psycopg2://nobody@127.0.0.1:9/mlflow?connect_timeout=2"
    restarted = create_app(server_settings(**{**config, "mlflow_tracking_uri": dead}))
    try:
        assert restarted.extensions["potability.model"].current is None
        assert restarted.test_client().get("/readyz").status_code == 503
    finally:
        shutdown(restarted)


@pytest.mark.parametrize("changed", ["meta.json", "history.json", "manifest.json"])
def test_deploy_refuses_a_promoted_directory_whose_files_changed(tmp_path, changed):
    directory = build_model_dir(tmp_path / "promoted")
    if changed == "manifest.json":
        (directory / changed).unlink()
    elif changed == "meta.json":
        set_threshold(directory, 0.0)
    else:
        (directory / changed).write_text('[{"promote": true, "reason": "rewritten"}]')
    with pytest.raises(deploy.DeployError, match=changed):
        deploy.deploy_promoted(directory, "pytest", None, Settings(root=REPO), force=True)


def test_the_pipeline_judges_as_if_there_were_no_champion_when_it_has_no_manifest_tag(
    deploy_dir, tmp_path, monkeypatch
):
    """A champion registered before manifests is refused by servers; the next promotion replaces it."""
    from potability.pipeline.stages.champion import fetch_champion
    from potability.pipeline.stages.promote import recorded_champion

    name = f"unsealed-{uuid.uuid4().hex[:8]}"
    first = deploy_dir(build_model_dir(tmp_path / "v1"), name)
    meta = json.loads((first.directory / "meta.json").read_text())
    untagged = tracking.register_model_dir(
        first.directory, name, None, {"model_version": "test-rf-old"}, meta["input_example"]
    )
    tracking.set_alias(name, "champion", untagged.version)
    monkeypatch.setenv("POTABILITY_REGISTERED_MODEL", name)
    out = tmp_path / "champion"  # the champion stage's output, promote's input
    assert fetch_champion(Settings(root=REPO), out) is None
    assert recorded_champion(out) is None
    tracking.set_alias(name, "champion", first.version)
    assert fetch_champion(Settings(root=REPO), out) == first.version
    assert recorded_champion(out).version == first.version


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        ("threshold", "meta.json"),
        ("no_manifest", "manifest.json"),
        ("garbled_manifest", "manifest.json"),
        ("history", "history.json"),
    ],
)
def test_mlflows_own_loader_refuses_a_changed_file_naming_it(deploy_dir, tmp_path, tamper, named):
    """``mlflow.pyfunc.load_model`` (what ``mlflow models serve`` runs) checks the manifest too."""
    import mlflow

    registered = deploy_dir(build_model_dir(tmp_path / "v1"), f"pyfunc-{uuid.uuid4().hex[:8]}")
    uri = f"models:/{registered.name}/{registered.version}"
    assert not mlflow.pyfunc.load_model(uri).predict(pd.DataFrame([SAMPLE])).empty
    stored = stored_files(registered.name, registered.version)
    if tamper == "threshold":
        set_threshold(stored, 0.0)  # every sample "potable"
    elif tamper == "no_manifest":
        (stored / artifacts.MANIFEST_FILE).unlink()
    elif tamper == "garbled_manifest":
        (stored / artifacts.MANIFEST_FILE).write_text("{not json")
    else:
        (stored / artifacts.HISTORY_FILE).write_text('[{"promote": true, "reason": "rewritten"}]')
    with pytest.raises(Exception, match=named) as refused:
        mlflow.pyfunc.load_model(uri)
    assert type(refused.value).__name__ == "RefusedArtifact"
