"""The retrain flow for real: Prefect (test harness), dvc repro, Postgres watermark, advisory lock, roles."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess

import psycopg2.extensions
import pytest
import yaml

from potability import db, deployments, roles
from potability.config import Settings
from potability.mart import WaterMart
from tests.support.database import query
from tests.support.project import copy_project, project_env, seed_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory, pg_url, harness):
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE water.water_potability, water.water_inferences, water.api_tokens, water.flow_state"
        )
    root = copy_project(tmp_path_factory.mktemp("flow") / "repo")
    env = project_env(root, pg_url)
    saved = dict(os.environ)
    os.environ.update(
        {
            k: env[k]
            for k in ("PATH", "POTABILITY_ROOT", "DATABASE_URL", "POTABILITY_REGISTERED_MODEL")
        }
    )
    os.environ["POTABILITY_SERVER_URL"] = (
        "http://127.0.0.1:9"  # nothing listens: a warning, not a failure
    )
    os.environ["POTABILITY_ADMIN_TOKEN"] = "pot_unused"
    seed_rows(pg_url, 1200, seed=41)
    yield root
    os.environ.clear()
    os.environ.update(saved)


# who inserted rows: MLflow's runs and registry in its database, the flow's state and deployments in ours
AUDITED = {
    "mlflow": ("runs", "model_versions", "registered_model_aliases"),
    "water": ("flow_state", "deployments"),
}
AUDIT = """
CREATE TABLE public.audit_who (tbl text, who text);
CREATE FUNCTION public.audit_who() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN INSERT INTO public.audit_who VALUES (TG_TABLE_NAME, session_user); RETURN NULL; END $$;
"""


@pytest.fixture(scope="module")
def audit(pg_url):
    """Triggers that note the login role of every insert into the audited tables; yields table -> roles."""
    urls = {"mlflow": db.mlflow_tracking_uri().replace("+psycopg2", "", 1), "water": pg_url}
    schemas = {"mlflow": "public", "water": "water"}
    for place, url in urls.items():
        query(url, AUDIT)
        for table in AUDITED[place]:
            query(
                url,
                f"CREATE TRIGGER audit_who AFTER INSERT ON {schemas[place]}.{table} "  # noqa: S608
                "FOR EACH STATEMENT EXECUTE FUNCTION public.audit_who()",
            )

    def who() -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for url in urls.values():
            for table, role in query(url, "SELECT tbl, who FROM public.audit_who"):
                found.setdefault(table, set()).add(role)
        return found

    yield who
    for place, url in urls.items():
        for table in AUDITED[place]:
            query(url, f"DROP TRIGGER audit_who ON {schemas[place]}.{table}")  # noqa: S608
        query(url, "DROP FUNCTION public.audit_who() CASCADE; DROP TABLE public.audit_who")


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def champion():
    """The version the flow's registered model alias names now (None before the first deploy)."""
    import mlflow

    from potability import tracking

    mlflow.set_tracking_uri(db.mlflow_tracking_uri())
    return tracking.version_for_alias(os.environ["POTABILITY_REGISTERED_MODEL"], "champion")


def test_first_run_trains_promotes_and_reports(flow_project, pg_url, audit):
    from potability.retrain.flow import retrain

    assert champion() is None
    result = retrain()
    # the pipeline role trained (MLflow runs) and kept the watermark; only the deploy step was the owner
    pipeline = roles.role_name("pipeline", roles.database_name(pg_url))
    owner = psycopg2.extensions.parse_dsn(pg_url)["user"]
    assert audit() == {
        "runs": {pipeline},
        "flow_state": {pipeline},
        "model_versions": {owner},
        "registered_model_aliases": {owner},
        "deployments": {owner},
    }
    assert result["status"] == "retrained" and result["decision"]["promoted"] is True
    workspace = flow_project / ".retrain"  # its own clone: the operator's checkout is not touched
    assert result["workspace"] == str(workspace) and not (flow_project / "models").exists()
    meta = json.loads((workspace / "models/promoted/meta.json").read_text())
    shipped = champion()  # the flow deployed what the pipeline promoted
    assert (
        result["deployed"]["version"] == shipped.version
        and shipped.model_version == meta["version"]
    )
    assert f"deployed version {shipped.version}" in result["summary"]
    assert [d.deployed_by for d in deployments.history(shipped.name)] == ["retrain-potability"]
    assert any("server reload failed" in w for w in result["warnings"])
    mart = WaterMart(url=pg_url)
    assert mart.watermark("retrain") == mart.samples_added_since(None)[1]
    assert result["lock_hash"] == sha(workspace / "dvc.lock")
    # recorded: the lock that made the shipped model is the retrain commit's, in the source repository
    assert shipped.tags["lock_commit"] == result["commit"]
    committed = subprocess.run(
        ["git", "show", "retrain:dvc.lock"], cwd=flow_project, capture_output=True, check=True
    ).stdout
    assert committed == (workspace / "dvc.lock").read_bytes()


def test_markdown_artifact_is_published(flow_project):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-report"]))
        )
    report = artifacts[0].data
    assert "Decision:" in report and "| rf |" in report
    assert f"version {champion().version}" in report.split("**Deployed:**")[1].splitlines()[0]


def test_no_new_rows_means_no_repro(flow_project):
    from potability.retrain.flow import retrain

    lock = sha(flow_project / ".retrain/dvc.lock")
    result = retrain()
    assert result["status"] == "nothing new" and result["repro_ran"] is False
    assert "nothing new" in result["summary"]
    assert sha(flow_project / ".retrain/dvc.lock") == lock


@pytest.fixture
def scheduled(flow_project, pg_url, monkeypatch):
    """A deployed run's credentials, as `potability flow deploy` stores them, in the harness's Secret block.

    Its runs load the block the way a worker's do; the worker's own environment
    stays as the test leaves it (the owner's DATABASE_URL, unless deleted).
    """
    from prefect.blocks.system import Secret

    from potability.retrain import connections
    from potability.retrain.deployment import RUN_SECRETS_BLOCK

    values = connections.run_secrets(connections.split(Settings(root=flow_project)))
    assert values["POTABILITY_DEPLOY_DATABASE_URL"] == pg_url != values["DATABASE_URL"]
    Secret(value=json.dumps(values)).save(RUN_SECRETS_BLOCK, overwrite=True)
    monkeypatch.setenv("POTABILITY_RUN_SECRETS_BLOCK", RUN_SECRETS_BLOCK)
    monkeypatch.setenv("DATABASE_URL", pg_url)
    for name in set(values) - {"DATABASE_URL"}:  # unset, and unset again after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)  # MLFLOW_TRACKING_URI: an earlier mlflow.set_tracking_uri()'s
    return monkeypatch


def test_a_scheduled_run_given_the_owners_database_url_by_its_worker_refuses(
    scheduled, pg_url, audit
):
    """The worker's environment wins over the Secret block: its owner's DATABASE_URL is refused, by name."""
    from potability.retrain.connections import RunRefused
    from potability.retrain.flow import retrain

    owner = psycopg2.extensions.parse_dsn(pg_url)["user"]
    before = audit()
    with pytest.raises(
        RunRefused, match=f"DATABASE_URL connects as '{owner}', not as the pipeline"
    ):
        retrain()
    assert audit() == before  # nothing written, as the owner or anyone


def test_flow_deploy_refuses_a_run_with_the_owners_rights_unless_allowed(
    flow_project, pg_url, tmp_path, monkeypatch
):
    """Roles made from another host's roles file: the one-URL fallback is refused unless opted into."""
    from potability.retrain import connections
    from potability.retrain.deployment import ALLOW_WIDER, check_inputs

    monkeypatch.setenv("POTABILITY_DB_ROLES_FILE", str(tmp_path / "not-here.json"))
    settings = Settings(root=flow_project)
    widened = [p for p in check_inputs(settings, work_pool=False) if "holds no password" in p]
    assert widened and ALLOW_WIDER in widened[0]
    allowed = check_inputs(settings, work_pool=False, allow_wider=True)
    assert not [p for p in allowed if "holds no password" in p]
    # then the block holds the one URL alone: each run takes the fallback again, and warns of it
    assert connections.run_secrets(connections.split(settings)) == {
        "DATABASE_URL": pg_url,
        "MLFLOW_TRACKING_URI": db.mlflow_tracking_uri(settings),
    }


def test_a_second_run_skips_while_one_holds_the_lock(flow_project, pg_url):
    from potability.retrain.flow import RETRAIN_LOCK_KEY, retrain

    seed_rows(pg_url, 50, seed=42)
    with db.advisory_lock(RETRAIN_LOCK_KEY, url=pg_url) as held:
        assert held
        result = retrain()
    assert result["status"] == "skipped"
    # the rows are still new for the next run: nothing was consumed
    mart = WaterMart(url=pg_url)
    assert mart.samples_added_since(mart.watermark("retrain"))[0] == 50


def test_broken_stage_fails_the_flow_and_keeps_champion_and_watermark(flow_project, pg_url):
    from potability.retrain.flow import retrain

    mart = WaterMart(url=pg_url)
    watermark = mart.watermark("retrain")
    served = champion()
    params_path = flow_project / "params.yaml"
    good = params_path.read_text()
    params = yaml.safe_load(good)
    params["train"]["cv_folds"] = 1  # GridSearchCV refuses a single fold: train fails
    params_path.write_text(yaml.safe_dump(params))
    researcher = ["git", "-c", "user.email=r@example.org", "-c", "user.name=researcher"]
    # the retrain runs committed code only: commit the mistake, as a researcher would
    subprocess.run([*researcher, "commit", "-qam", "one fold"], cwd=flow_project, check=True)
    try:
        with pytest.raises(RuntimeError, match="dvc repro.*failed") as err:
            retrain()
        assert "last lines" in str(err.value)
    finally:
        params_path.write_text(good)
        subprocess.run([*researcher, "commit", "-qam", "five folds"], cwd=flow_project, check=True)
    assert champion() == served
    assert mart.watermark("retrain") == watermark


def test_new_rows_retrain_and_advance_the_watermark(flow_project, pg_url, scheduled, audit):
    """As a scheduled run: its worker has no DATABASE_URL of its own, the Secret block has both."""
    from potability.retrain.flow import retrain

    mart = WaterMart(url=pg_url)
    lock = sha(flow_project / ".retrain/dvc.lock")
    before = champion()
    scheduled.delenv("DATABASE_URL")
    scheduled.delenv("MLFLOW_TRACKING_URI", raising=False)  # champion() exported it
    try:
        result = retrain()  # the 50 rows of the skipped run are still pending
    finally:  # the owner's again for this test's own reads, not the block's
        scheduled.setenv("DATABASE_URL", pg_url)
        scheduled.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert result["status"] == "retrained"
    pipeline = roles.role_name("pipeline", roles.database_name(pg_url))
    assert audit()["runs"] == audit()["flow_state"] == {pipeline}
    decision = result["decision"]
    # the decision history continues from the last retrain's, pulled from the DVC remote
    history = json.loads((flow_project / ".retrain/models/promoted/history.json").read_text())
    assert len(history) == 2 and history[-1]["reason"] == decision["reason"]
    recorded = history[-1]["promote"]  # what the pipeline decided, read from its own record
    assert decision["promoted"] is recorded
    shipped = deployments.history(before.name)
    # deployed exactly when the record says promoted, and then the alias moved; else nothing moved
    if recorded:
        assert result["deployed"]["version"] == champion().version != before.version
        assert len(shipped) == 2 and shipped[0].registry_version == champion().version
    else:
        assert result["deployed"] is None and champion() == before
        assert len(shipped) == 1 and "nothing deployed" in result["summary"]
    assert sha(flow_project / ".retrain/dvc.lock") != lock
    assert mart.samples_added_since(mart.watermark("retrain"))[0] == 0
