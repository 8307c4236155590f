"""Schedules that fire: a real Prefect server, `potability flow deploy`, a process worker, no manual trigger.

docs/operations.md, "Retraining on a schedule", is these steps. A dependency that
breaks Prefect's scheduler (SQLAlchemy 2.1 did) leaves no auto-scheduled run,
and these tests fail on the wait.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2.extensions
import pytest
import requests

from potability import db, roles
from potability.config import Settings
from potability.mart import WaterMart
from tests.support.project import VENV_BIN, copy_project, project_env, run, seed_rows
from tests.support.server import free_port

pytestmark = pytest.mark.slow

FLOW = "retrain-potability"
DEPLOYMENT = "daily-retrain"
RUN_TIMEOUT = 600  # a first retrain (dvc repro on 1,200 rows, 5 models) on a shared 2-core machine
START_GRACE = 90  # seconds after its due time by which a scheduled run must have started
MIN_LEAD_SECONDS = 40  # the schedule is the next whole minute at least this far away


class Process:
    """A long-running command of the test (Prefect server, worker, inference server), logged to a file."""

    def __init__(
        self, name: str, command: list[str], cwd: Path, env: dict[str, str], log_dir: Path
    ):
        self.name, self.log = name, log_dir / f"{name}.log"
        self.proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=open(self.log, "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_http(self, url: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass  # not listening yet
            time.sleep(0.5)
        raise AssertionError(f"{self.name} not up at {url}:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def next_minute(lead: float = MIN_LEAD_SECONDS) -> dt.datetime:
    """The first whole UTC minute at least ``lead`` seconds from now."""
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=lead)
    return soon.replace(second=0, microsecond=0) + dt.timedelta(minutes=1)


def daily_cron(at: dt.datetime) -> str:
    return f"{at.minute} {at.hour} * * *"


def without_prefect(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if not k.startswith("PREFECT_")}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, pg_url):
    """A Prefect server, an inference server, an admin token and a work pool, as an operator sets them up."""
    with db.transaction(url=pg_url) as conn, conn.cursor() as cur:
        cur.execute(
            "TRUNCATE water.water_potability, water.water_inferences, water.api_tokens, "
            "water.flow_state, water.deployments"
        )
    tmp = tmp_path_factory.mktemp("schedule")
    root = copy_project(tmp / "repo")
    # the utility's shared parts: a git remote and a DVC remote folder
    remote = tmp / "remote.git"
    run(["git", "init", "--quiet", "--bare", str(remote)], tmp, os.environ.copy())
    branch = run(
        ["git", "rev-parse", "--abbrev-ref", "HEAD"], root, os.environ.copy()
    ).stdout.strip()
    run(["git", "remote", "add", "origin", str(remote)], root, os.environ.copy())
    run(["git", "push", "--quiet", "origin", branch], root, os.environ.copy())
    run(["git", "symbolic-ref", "HEAD", f"refs/heads/{branch}"], remote, os.environ.copy())
    api_port, web_port = free_port(), free_port()
    prefect_env = {
        "PREFECT_HOME": str(tmp / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{api_port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env = {
        **without_prefect(project_env(root, pg_url)),
        **prefect_env,
        "POTABILITY_DVC_REMOTE": str(tmp / "dvc-remote"),
    }
    processes = []
    try:
        prefect = Process(
            "prefect-server",
            [
                str(VENV_BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(api_port),
                "--no-ui",
            ],
            tmp,
            env,
            tmp,
        )
        processes.append(prefect)
        web = Process(
            "inference-server",
            [
                sys.executable,
                "-m",
                "potability.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(web_port),
                "--workers",
                "1",
            ],
            root,
            {**env, "POTABILITY_SPOOL_DIR": str(tmp / "spool")},
            tmp,
        )
        processes.append(web)
        prefect.wait_http(f"{prefect_env['PREFECT_API_URL']}/health")
        web.wait_http(f"http://127.0.0.1:{web_port}/healthz")
        created = potability(
            "token", "create", "--role", "admin", "--name", "retrain-flow", env=env
        )
        token = created.stdout.split()[-1]
        run(
            [str(VENV_BIN / "prefect"), "work-pool", "create", "potability", "--type", "process"],
            tmp,
            env,
        )
        seed_rows(pg_url, 1200, seed=41)
        env = {
            **env,
            "POTABILITY_SERVER_URL": f"http://127.0.0.1:{web_port}",
            "POTABILITY_ADMIN_TOKEN": token,
        }
        yield {
            "root": root,
            "env": env,
            "tmp": tmp,
            "processes": processes,
            "web": web,
            "remote": remote,
        }
    finally:
        for process in reversed(processes):
            process.stop()


def potability(*args: str, env: dict[str, str], check: bool = True, cwd: Path | None = None):
    cwd = cwd or Path(env["POTABILITY_ROOT"])
    return run([sys.executable, "-m", "potability.cli", *args], cwd=cwd, env=env, check=check)


def prefect_client(env: dict[str, str]):
    """A client of the test's Prefect server (not the ephemeral one this process would start)."""
    from prefect.client.orchestration import SyncPrefectClient

    return SyncPrefectClient(env["PREFECT_API_URL"])


def wait_for_scheduled_run(
    env: dict[str, str], expected: dt.datetime, watch: list, deployment: str = DEPLOYMENT
) -> object:
    """Wait until the auto-scheduled run due at ``expected`` is final; return it.

    A run that has not started ``START_GRACE`` seconds after it was due fails
    at once: the scheduler made none, or no worker took it.
    """
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + (expected - dt.datetime.now(dt.UTC)).total_seconds() + RUN_TIMEOUT
    start_by = expected + dt.timedelta(seconds=START_GRACE)
    with prefect_client(env) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment]))
            )
            due = [r for r in runs if r.expected_start_time == expected]
            if due and due[0].state.is_final():
                return due[0]
            if dt.datetime.now(dt.UTC) > start_by and not (due and due[0].start_time):
                break
            for process in watch:
                assert process.proc.poll() is None, f"{process.name} exited:\n{process.tail()}"
            time.sleep(2)
    logs = "\n".join(p.tail() for p in watch)
    raise AssertionError(
        f"no auto-scheduled run due at {expected:%H:%M} started within {START_GRACE} s or finished; runs: "
        f"{[(r.expected_start_time, r.state_name, r.auto_scheduled) for r in runs]}\n{logs}"
    )


def report_latency(label: str, flow_run, deploy_seconds: float | None = None) -> dict[str, float]:
    figures = {
        "scheduled_to_started_s": (
            flow_run.start_time - flow_run.expected_start_time
        ).total_seconds(),
        "scheduled_to_completed_s": (
            flow_run.end_time - flow_run.expected_start_time
        ).total_seconds(),
        "run_s": flow_run.total_run_time.total_seconds(),
    }
    if deploy_seconds is not None:
        figures["deploy_s"] = deploy_seconds
    print(f"\n{label}: {json.dumps({k: round(v, 1) for k, v in figures.items()})}")
    return figures


def test_a_bare_prefect_deploy_is_refused_at_deploy_time(stack):
    result = run(
        [
            str(VENV_BIN / "prefect"),
            "deploy",
            "--no-prompt",
            "--all",
            "--prefect-file",
            "src/potability/retrain/prefect.yaml",
        ],
        stack["root"],
        stack["env"],
        check=False,
    )
    assert result.returncode != 0
    assert "potability flow deploy" in result.stdout + result.stderr
    with prefect_client(stack["env"]) as client:
        assert client.read_deployments() == []


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"POTABILITY_SERVER_URL": ""}, "POTABILITY_SERVER_URL is not set"),
        ({"POTABILITY_ADMIN_TOKEN": "pot_not-a-token"}, "refused by http://127.0.0.1"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is not set"),
    ],
)
def test_flow_deploy_refuses_what_would_fail_at_run_time(stack, override, named):
    result = potability("flow", "deploy", env={**stack["env"], **override}, check=False)
    assert result.returncode == 2 and named in result.stderr, result.stderr
    with prefect_client(stack["env"]) as client:
        assert client.read_deployments() == []


def test_flow_deploy_keeps_every_credential_in_secret_blocks(stack, pg_url):
    """Read back through the Prefect API: the plain Variable and job variables hold no password."""
    from potability.retrain.deployment import ENV_VARIABLE, RUN_SECRETS_BLOCK

    # the embedded Postgres trusts its socket, so a password in the URL is checked by nothing
    # but this test: it must reach the Secret block and nowhere else
    secret_url = pg_url.replace("postgres:@", "postgres:db-s3cret@", 1)
    env = {**stack["env"], "DATABASE_URL": secret_url, "MLFLOW_TRACKING_PASSWORD": "mlflow-s3cret"}
    potability("flow", "deploy", env=env)
    secrets = ("db-s3cret", "mlflow-s3cret", env["POTABILITY_ADMIN_TOKEN"])
    with prefect_client(env) as client:
        variable = client.read_variable_by_name(ENV_VARIABLE).value
        job_env = client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}").job_variables["env"]
        block = client.read_block_document_by_name(
            RUN_SECRETS_BLOCK, block_type_slug="secret", include_secrets=True
        )
        hidden = client.read_block_document_by_name(
            RUN_SECRETS_BLOCK, block_type_slug="secret", include_secrets=False
        )
        client.delete_deployment(client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}").id)
    for plain in (json.dumps(variable), json.dumps(job_env)):
        assert not [s for s in secrets if s in plain], plain
        assert "DATABASE_URL" not in plain and "MLFLOW_TRACKING_PASSWORD" not in plain
    stored = json.loads(block.data["value"])
    # runs connect as the pipeline role; the owner's URLs are the deploy step's alone
    settings = Settings(root=stack["root"])
    pipeline = roles.role_url(secret_url, "pipeline", settings)
    assert stored["DATABASE_URL"] == pipeline != secret_url
    assert stored["POTABILITY_DEPLOY_DATABASE_URL"] == secret_url
    user = roles.role_name("pipeline", roles.database_name(secret_url))
    assert stored["MLFLOW_TRACKING_URI"].startswith(f"postgresql+psycopg2://{user}:")
    owner = psycopg2.extensions.parse_dsn(secret_url)["user"]
    assert stored["POTABILITY_DEPLOY_MLFLOW_TRACKING_URI"].startswith(
        f"postgresql+psycopg2://{owner}:"
    )
    assert stored["MLFLOW_TRACKING_PASSWORD"] == "mlflow-s3cret"
    assert "s3cret" not in json.dumps(
        hidden.data, default=str
    )  # obfuscated without include_secrets


def test_the_worker_runs_the_deployment_on_its_own_schedule(stack, pg_url):
    env, root = stack["env"], stack["root"]
    due = next_minute()
    started = time.monotonic()
    out = potability(
        "flow", "deploy", env={**env, "POTABILITY_RETRAIN_CRON": daily_cron(due)}
    ).stdout
    deploy_seconds = time.monotonic() - started
    assert f"schedule '{daily_cron(due)}'" in out
    with prefect_client(env) as client:
        deployment = client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
        assert deployment.global_concurrency_limit.limit == 1
        run_env = deployment.job_variables["env"]
        assert "POTABILITY_ROOT" not in run_env
        # each run clones the git remote and works in that clone
        assert run_env["POTABILITY_GIT_URL"] == str(stack["remote"])
        assert run_env["POTABILITY_RETRAIN_WORKSPACE"] == "."
        assert "git_clone" in json.dumps(deployment.pull_steps)
        # in Secret blocks instead; the run below reaches the database through them
        assert "POTABILITY_ADMIN_TOKEN" not in run_env and "DATABASE_URL" not in run_env
    # the worker's own shell knows nothing of the project: the runs' settings come from the deployment
    worker_env = {
        "PATH": env["PATH"],
        "HOME": env.get("HOME", str(stack["tmp"])),
        **{k: v for k, v in env.items() if k.startswith("PREFECT_")},
    }
    elsewhere = stack["tmp"] / "worker-host"  # no checkout of its own: it clones per run
    elsewhere.mkdir()
    worker = Process(
        "worker",
        [str(VENV_BIN / "prefect"), "worker", "start", "--pool", "potability"],
        elsewhere,
        worker_env,
        stack["tmp"],
    )
    stack["processes"].append(worker)
    flow_run = wait_for_scheduled_run(env, due, [worker, *stack["processes"][:2]])
    assert flow_run.auto_scheduled and flow_run.state.is_completed(), worker.tail()
    report_latency("worker", flow_run, deploy_seconds)
    # it trained, shipped, and the server it was given serves the new champion
    mart = WaterMart(url=pg_url)
    assert mart.watermark("retrain") == mart.samples_added_since(None)[1]
    served = requests.get(
        f"{env['POTABILITY_SERVER_URL']}/v1/model",
        timeout=10,
        headers={"Authorization": f"Bearer {env['POTABILITY_ADMIN_TOKEN']}"},
    ).json()
    # the run's commit reached the remote's retrain branch, with the decision that was served
    decided = json.loads(
        run(
            ["git", "show", "retrain:metrics/promotion.json"], stack["remote"], os.environ.copy()
        ).stdout
    )
    assert served["version"] == decided["version"]
    assert not (root / "models").exists() and not (root / ".retrain").exists()
    with prefect_client(env) as client:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        report = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["retrain-report"]))
        )[0].data
    assert "**Deployed:**" in report and "Warnings" not in report
    worker.stop()


def test_retrain_serve_runs_on_its_own_schedule(stack):
    from potability.retrain.flow import SERVED_DEPLOYMENT

    env = stack["env"]
    due = next_minute(lead=20)
    served = Process(
        "retrain-serve",
        [sys.executable, "-m", "potability.cli", "retrain", "--serve"],
        stack["root"],
        {**env, "POTABILITY_RETRAIN_CRON": daily_cron(due)},
        stack["tmp"],
    )
    stack["processes"].append(served)
    flow_run = wait_for_scheduled_run(
        env, due, [served, stack["processes"][0]], deployment=SERVED_DEPLOYMENT
    )
    assert flow_run.auto_scheduled and flow_run.state.is_completed(), served.tail()
    report_latency("retrain --serve", flow_run)
    assert "nothing new" in served.tail(20000)  # the worker's run consumed the rows
    # serving here left the operator's worker deployment as `potability flow deploy` made it
    with prefect_client(env) as client:
        worker_deployment = client.read_deployment_by_name(f"{FLOW}/{DEPLOYMENT}")
    assert worker_deployment.work_pool_name == "potability", worker_deployment
    served.stop()


def test_a_missing_server_or_token_is_a_warning_in_the_run_and_the_report(stack, monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from potability.retrain.flow import reload_target, report_markdown

    monkeypatch.setenv("POTABILITY_ADMIN_TOKEN_BLOCK", "no-such-block")
    for name in ("POTABILITY_SERVER_URL", "POTABILITY_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    with temporary_settings(updates={PREFECT_API_URL: stack["env"]["PREFECT_API_URL"]}):
        url, token, warnings = reload_target(Settings(root=stack["root"]))
    assert url is None and token is None
    assert any("POTABILITY_SERVER_URL is not set" in w for w in warnings)
    assert any("no admin token" in w and "no-such-block" in w for w in warnings)
    markdown = report_markdown({}, {}, {"reason": "test"}, 1, None, warnings)
    assert "**Warnings:**" in markdown and "POTABILITY_SERVER_URL is not set" in markdown
