"""Deploy the retrain flow to a Prefect server, refusing at deploy time what would fail at 03:00.

`potability flow deploy` is the one documented way: it checks the project
root, the database, the inference server and its admin token, the Prefect API
and the work pool; stores every credential the runs need in Prefect Secret
blocks (the admin token in its own; database and tracking URLs and credentials
in ``RUN_SECRETS_BLOCK``, which each run adds to its environment: the pipeline
role's as ``DATABASE_URL`` and ``MLFLOW_TRACKING_URI``, the owner's for the
deploy step as ``POTABILITY_DEPLOY_*``, see ``connections``), never in the
plain Variable or job variables, which anyone who reads the Prefect API reads;
records the rest of the runs' environment in a Prefect Variable that
``src/potability/retrain/prefect.yaml`` reads as its job variables; then
runs ``prefect deploy`` on ``src/potability/retrain/prefect.yaml`` from the project root. A bare
``prefect deploy`` of that file is refused by its build step (`potability flow
check`), so no deployment exists that skipped the checks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import requests
import yaml

from potability import db, vcs
from potability.config import Settings, env_name
from potability.errors import DatabaseUnavailable
from potability.retrain import connections

log = logging.getLogger(__name__)
PREFECT_FILE = Path("src/potability/retrain/prefect.yaml")
# the Prefect Variable that prefect.yaml's job_variables.env reads
ENV_VARIABLE = "potability_retrain_env"
# set by `potability flow deploy` for prefect.yaml's build step
DEPLOY_MARKER = "POTABILITY_FLOW_DEPLOY"
# besides every POTABILITY_* variable: what the flow's settings read from the environment
SETTINGS_ENV = ("DATABASE_URL", "MLFLOW_TRACKING_URI", "DASK_SCHEDULER_ADDRESS")
SECRET_ENV = ("POTABILITY_ADMIN_TOKEN",)  # goes to the Secret block, never into job variables
# credentials a run needs: in the Secret block RUN_SECRETS_BLOCK, never in plain job variables
RUN_SECRET_ENV = (
    "DATABASE_URL",
    "MLFLOW_TRACKING_URI",
    *connections.DEPLOY_ENV,
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_TRACKING_TOKEN",
)
RUN_SECRETS_BLOCK = "potability-retrain-secrets"
# the opt-in to runs that train with more than the pipeline role's rights (docs/security.md)
ALLOW_WIDER = "--allow-wider-privileges"
_URL_PASSWORD = re.compile(r"://[^/@\s]*:[^@/\s]+@")  # user:password@ in any URL


class DeployRefused(Exception):
    """The deployment would fail when it runs; the message lists every missing or unreachable input."""


@dataclass(frozen=True)
class Deployed:
    """What `potability flow deploy` created: the deployment's name and its schedule."""

    name: str
    cron: str
    work_pool: str
    output: str


def deployment_config(root: Path) -> dict:
    """The single deployment of ``src/potability/retrain/prefect.yaml`` (name, work pool, schedule)."""
    config = yaml.safe_load((root / PREFECT_FILE).read_text(encoding="utf-8"))
    return config["deployments"][0]


def admin_token(settings: Settings) -> tuple[str | None, str]:
    """The admin token the runs will use, and where it comes from (env, or the Secret block)."""
    if settings.admin_token:
        return settings.admin_token, "POTABILITY_ADMIN_TOKEN"
    from prefect.blocks.system import Secret

    try:
        return Secret.load(
            settings.admin_token_block
        ).get(), f"Secret block {settings.admin_token_block!r}"
    except ValueError:  # Prefect: "Unable to find block document named ..."
        return None, f"Secret block {settings.admin_token_block!r}"


def check_inputs(
    settings: Settings, work_pool: bool = True, allow_wider: bool = False
) -> list[str]:
    """Every problem that would make a scheduled run fail or skip its server reload; [] when none.

    ``work_pool=False`` for `potability retrain --serve`, whose runs need no worker.
    Runs that would train with more than the pipeline role's rights (the one-URL
    fallback, a tracking URI used as given) are a problem unless ``allow_wider``.
    """
    problems = (
        _check_root(settings.root)
        + _check_database(settings, allow_wider)
        + _check_remotes(settings)
    )
    server_ok = _check_server(settings, problems)
    problems += _check_prefect(settings, server_ok, work_pool)
    return problems


def _check_root(root: Path) -> list[str]:
    missing = [
        p
        for p in ("dvc.yaml", "params.yaml", "src/potability/retrain/flow.py", str(PREFECT_FILE))
        if not (root / p).is_file()
    ]
    if missing:
        return [
            f"project root {root} (POTABILITY_ROOT, else the working directory) has no "
            f"{', '.join(missing)}: run from the project's checkout"
        ]
    return []


def _check_database(settings: Settings, allow_wider: bool) -> list[str]:
    if not settings.database_url:
        return [
            "DATABASE_URL is not set: a scheduled run must name its database "
            "(for this workspace's embedded one: export DATABASE_URL=$(potability db url))"
        ]
    try:
        db.connect(settings).close()
    except DatabaseUnavailable as exc:
        return [f"DATABASE_URL: {exc}"]
    try:
        run_as = connections.split(settings)
    except connections.RunRefused as exc:  # POTABILITY_DEPLOY_* exported here
        return [str(exc)]
    if run_as.warnings and not (run_as.widened and allow_wider):
        accept = f" (to accept that, deploy with {ALLOW_WIDER})" if run_as.widened else ""
        return [f"{warning}{accept}" for warning in run_as.warnings]
    try:  # the URL runs will train with: a stale roles file would fail them at 03:00
        db.connect(run_as.pipeline).close()
    except DatabaseUnavailable as exc:
        return [
            f"the pipeline role's URL (`potability db url --role pipeline`): {exc} "
            f"(run `potability db migrate`: it sets the passwords of {settings.db_roles_file})"
        ]
    return []


def _check_remotes(settings: Settings) -> list[str]:
    """The git repository runs clone (and push their branch to) and the DVC remote they pull from and push to."""
    problems = []
    url = vcs.source_url(settings)
    found = vcs.git(["ls-remote", "--heads", "--", url], settings.root, check=False)
    if found.returncode != 0:
        problems.append(
            f"git repository {url} (POTABILITY_GIT_URL, else remote {settings.git_remote!r}, "
            f"else the root) cannot be read: {found.stderr.strip()[-300:]}"
        )
    try:
        remote = vcs.dvc_remote(settings)
    except vcs.VcsError as exc:
        return [*problems, f"DVC remote: {exc}"]
    if remote is None:
        problems.append(
            "no DVC remote: set POTABILITY_DVC_REMOTE (or a default remote in .dvc/config)"
        )
    elif Path(remote).is_absolute() and not Path(remote).parent.is_dir():  # a local folder
        problems.append(f"DVC remote {remote}: its parent directory does not exist")
    return problems


def _check_server(settings: Settings, problems: list[str]) -> bool:
    """Append server problems to ``problems``; True when the server answered."""
    if not settings.server_url:
        problems.append(
            "POTABILITY_SERVER_URL is not set: a promoted model would not be "
            "reloaded at once (set it to the inference server's base URL)"
        )
        return False
    url = f"{settings.server_url.rstrip('/')}/healthz"
    try:
        requests.get(url, timeout=settings.reload_timeout_seconds).raise_for_status()
    except requests.RequestException as exc:
        problems.append(f"POTABILITY_SERVER_URL={settings.server_url}: {url} unreachable ({exc})")
        return False
    return True


def _check_prefect(settings: Settings, server_ok: bool, work_pool: bool) -> list[str]:
    """The Prefect API, the work pool, and the admin token (env or Secret block, accepted by the server)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        return [
            "PREFECT_API_URL is not set: deploy to the Prefect server your worker polls "
            "(e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)"
        ]
    with get_client(sync_client=True) as client:
        if (error := client.api_healthcheck()) is not None:
            return [f"PREFECT_API_URL={api_url}: unreachable ({error})"]
        problems = []
        if work_pool and (settings.root / PREFECT_FILE).is_file():
            pool = deployment_config(settings.root)["work_pool"]["name"]
            try:
                client.read_work_pool(pool)
            except ObjectNotFound:
                problems.append(
                    f"work pool {pool!r} does not exist on {api_url}: "
                    f"prefect work-pool create {pool} --type process"
                )
    token, source = admin_token(settings)
    if token is None:
        problems.append(
            f"no admin token: set POTABILITY_ADMIN_TOKEN or create the {source} "
            "(`potability token create --role admin --name retrain-flow`)"
        )
    elif server_ok:
        response = requests.post(
            f"{settings.server_url.rstrip('/')}/admin/reload",
            headers={"Authorization": f"Bearer {token}"},
            timeout=settings.reload_timeout_seconds,
        )
        if response.status_code in (401, 403):
            problems.append(
                f"the admin token from {source} is refused by {settings.server_url} "
                f"({response.status_code}): create one with --role admin"
            )
    return problems


def _is_secret(name: str, value: str) -> bool:
    return name in RUN_SECRET_ENV or bool(_URL_PASSWORD.search(value))


def run_environment(settings: Settings) -> dict[str, str]:
    """The environment every run gets in plain job variables: no credential, no password."""
    env = {
        k: v
        for k, v in os.environ.items()
        if (k.startswith("POTABILITY_") or k in SETTINGS_ENV)
        and k not in SECRET_ENV
        and v
        and not _is_secret(k, v)
    }
    env.pop(DEPLOY_MARKER, None)
    env.pop("POTABILITY_ROOT", None)  # runs work in the clone their pull steps made
    env["POTABILITY_RETRAIN_WORKSPACE"] = "."
    env.update({k: v for k, v in _resolved(settings).items() if not _is_secret(k, v)})
    if not db.mlflow_tracking_uri(settings).startswith(("http://", "https://")):
        # a clone is thrown away after its run: artifacts go where the operator's do
        env.setdefault("POTABILITY_MLFLOW_ARTIFACTS", str(settings.mlflow_artifacts))
    env[env_name("run_secrets_block")] = RUN_SECRETS_BLOCK
    return env


def run_secrets(settings: Settings) -> dict[str, str]:
    """The credentials every run gets from the Secret block ``RUN_SECRETS_BLOCK``."""
    found = {
        k: v
        for k, v in os.environ.items()
        if (k.startswith(("POTABILITY_", "MLFLOW_TRACKING_")) or k in SETTINGS_ENV)
        and k not in SECRET_ENV
        and v
        and _is_secret(k, v)
    }
    resolved = _resolved(settings).items()
    # the split URLs win over the operator's own DATABASE_URL: runs connect as the pipeline role
    return {**{k: v for k, v in resolved if _is_secret(k, v)}, **found, **_split(settings)}


def _resolved(settings: Settings) -> dict[str, str]:
    """What a run in a throwaway clone must be told: where to clone and pull from (its database
    and tracking URLs, also when they came from the root's `.env`, which a clone lacks: ``_split``)."""
    values = {
        "POTABILITY_GIT_URL": vcs.source_url(settings),
        "POTABILITY_DVC_REMOTE": vcs.dvc_remote(settings),
    }
    return {k: v for k, v in values.items() if v}


def _split(settings: Settings) -> dict[str, str]:
    """The pipeline's and the deploy step's URLs (``connections.run_secrets``); warnings logged."""
    run_as = connections.split(settings)
    for warning in run_as.warnings:
        log.warning("%s", warning)
    return connections.run_secrets(run_as)


def load_run_secrets(settings: Settings) -> list[str]:
    """In a deployed run, add the Secret block's credentials to the environment; return their names.

    A variable already set (by the worker's operator) wins; a ``DATABASE_URL``
    that is not the pipeline role's is then refused by ``connections.split``.
    Nothing is loaded when ``POTABILITY_RUN_SECRETS_BLOCK`` is unset (a local
    `potability retrain`).
    """
    if not settings.run_secrets_block:
        return []
    from prefect.blocks.system import Secret

    values = Secret.load(settings.run_secrets_block).get()
    added = [k for k in values if k not in os.environ]
    for name in added:
        os.environ[name] = values[name]
    return sorted(added)


def deploy(settings: Settings, allow_wider: bool = False) -> Deployed:
    """Check, store the token and the run environment, then `prefect deploy` src/potability/retrain/prefect.yaml."""
    problems = check_inputs(settings, allow_wider=allow_wider)
    if problems:
        raise DeployRefused("refusing to deploy:\n" + "\n".join(f"- {p}" for p in problems))
    from prefect.blocks.system import Secret
    from prefect.variables import Variable

    if settings.admin_token:
        Secret(value=settings.admin_token).save(settings.admin_token_block, overwrite=True)
    # one JSON string: Prefect obfuscates a string secret on read, not a dict's values
    Secret(value=json.dumps(run_secrets(settings))).save(RUN_SECRETS_BLOCK, overwrite=True)
    Variable.set(ENV_VARIABLE, run_environment(settings), overwrite=True)
    config = deployment_config(settings.root)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        DEPLOY_MARKER: "1",
        "POTABILITY_ROOT": str(settings.root),
        "POTABILITY_GIT_URL": vcs.source_url(settings),
        "POTABILITY_RETRAIN_CRON": settings.retrain_cron,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    command = [
        sys.executable,
        "-m",
        "prefect",
        "deploy",
        "--no-prompt",
        "--prefect-file",
        str(PREFECT_FILE),
        "--name",
        config["name"],
    ]
    result = subprocess.run(command, cwd=settings.root, env=env, capture_output=True, text=True)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise DeployRefused(
            f"`prefect deploy` failed (exit {result.returncode}):\n{output[-3000:]}"
        )
    return Deployed(config["name"], settings.retrain_cron, config["work_pool"]["name"], output)


def guard() -> list[str]:
    """prefect.yaml's build step: a bare `prefect deploy` is refused, naming the command that checks."""
    if os.environ.get(DEPLOY_MARKER) == "1":
        return []
    return [
        "deploy src/potability/retrain/prefect.yaml with `potability flow deploy` from the project root: it checks "
        "the root, DATABASE_URL, POTABILITY_SERVER_URL, the admin token and the work pool first, "
        "and records the runs' environment (a bare `prefect deploy` would store unchecked templates)"
    ]
