"""The registry as a server: `mlflow server --serve-artifacts` places artifacts, hosts fetch over HTTP."""

from __future__ import annotations

import pytest
import requests

from potability.config import Settings
from potability.mart import WaterMart
from potability.pipeline.small_model import build_model_dir
from tests.support.mlflow_server import MlflowServer
from tests.support.project import REPO, project_env, run
from tests.support.server import SAMPLE, Server, auth

pytestmark = pytest.mark.slow


def test_an_artifact_uri_setting_is_kept_and_a_directory_is_anchored(tmp_path):
    """POTABILITY_MLFLOW_ARTIFACTS: a URI as given, a relative directory under the workspace."""
    assert Settings(root=tmp_path, mlflow_artifacts="s3://bucket/ml").mlflow_artifact_uri == (
        "s3://bucket/ml"
    )
    local = Settings(root=tmp_path, mlflow_artifacts="store")
    assert local.mlflow_artifact_uri == (tmp_path / "store").as_uri()
    assert Settings(root=tmp_path, mlflow_tracking_uri="http://mlflow:5000").tracking_server
    assert not local.tracking_server


def test_deploy_through_a_tracking_server_and_a_host_that_fetches_over_http(clean_db, tmp_path):
    """Deploy registers under the server's artifact store; a host needs only its URL and DATABASE_URL.

    Then, with the tracking server down, a restarted host serves its cached champion and
    `/readyz` says where the model came from.
    """
    registry = MlflowServer(tmp_path, clean_db, tmp_path / "registry-artifacts")
    host = None
    try:
        pipeline = tmp_path / "pipeline"
        env = {
            **project_env(pipeline, clean_db),
            "MLFLOW_TRACKING_URI": registry.url,
            # the embedded default: never used when the tracking server places artifacts
            "POTABILITY_MLFLOW_ARTIFACTS": str(pipeline / "mlartifacts"),
        }
        model = build_model_dir(tmp_path / "promoted")
        # a model built outside any git work tree: no lineage to record, so --force
        deploy = ["potability", "deploy", "--force", "--from", str(model)]
        version = run(deploy, REPO, env).stdout.split()[-1]

        import mlflow

        client = mlflow.MlflowClient(tracking_uri=registry.url)
        name = env["POTABILITY_REGISTERED_MODEL"]
        location = client.get_experiment_by_name("water-potability").artifact_location
        source = client.get_model_version_download_uri(name, version)
        assert location.startswith("mlflow-artifacts:"), location
        assert source.startswith("mlflow-artifacts:"), source
        assert not (pipeline / "mlartifacts").exists()  # nothing on the pipeline's disk
        assert list(registry.artifacts.rglob("model.onnx"))  # all of it on the registry's

        token = WaterMart(url=clean_db).create_token("fleet-sensor", "sensor")
        served = {
            "MLFLOW_TRACKING_URI": registry.url,
            "POTABILITY_REGISTERED_MODEL": name,
            "POTABILITY_MLFLOW_ARTIFACTS": str(tmp_path / "nowhere"),
            "POTABILITY_MODEL_CACHE": str(tmp_path / "host" / "cache"),
        }
        (tmp_path / "host").mkdir()
        host = Server(tmp_path / "host", clean_db, None, workers=1, **served)
        ready = requests.get(host.base + "/readyz", timeout=10).json()
        assert ready["model_version"] == "test-rf-1" and ready["model_source"] == "registry"
        answer = requests.post(host.base + "/v1/predict", json=SAMPLE, headers=auth(token))
        assert answer.status_code == 200 and answer.json()["model_version"] == "test-rf-1"
        assert not (tmp_path / "nowhere").exists()

        host.stop()
        registry.stop()  # the registry is down when the host starts again
        host = Server(tmp_path / "host", clean_db, None, workers=1, **served)
        ready = requests.get(host.base + "/readyz", timeout=10)
        status = ready.json()
        assert ready.status_code == 200, status
        assert status["model_version"] == "test-rf-1" and status["model_source"] == "cache"
        # why, in a category: the detail (the registry's address) stays in the server log
        assert status["last_model_error"].startswith("model reload refused (registry")
        answer = requests.post(host.base + "/v1/predict", json=SAMPLE, headers=auth(token))
        assert answer.status_code == 200 and answer.json()["model_version"] == "test-rf-1"
    finally:
        if host is not None:
            host.stop()
        registry.stop()
