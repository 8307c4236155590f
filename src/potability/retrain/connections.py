"""Whose rights each part of a retrain uses: the pipeline role's, and the owner's for the deploy step alone.

Counting new lab rows, the watermark, the advisory lock and every DVC stage
(export reads the lab rows, train and evaluate write MLflow runs, the champion
stage reads the alias) connect as the database's pipeline role, on the
project database and on the MLflow database beside it. Only the deploy step
(register the version, move the alias, record the deployment) connects as the
owner ("admin"). A scheduled run is given both sets by `potability flow
deploy`, through the Secret block: ``DATABASE_URL`` and ``MLFLOW_TRACKING_URI``
are the pipeline's, ``POTABILITY_DEPLOY_DATABASE_URL`` and
``POTABILITY_DEPLOY_MLFLOW_TRACKING_URI`` the owner's. A local `potability
retrain` is given the owner's URL and finds the pipeline's from the roles file.
Where the roles could not be made (an owner without CREATEROLE), everything
uses the one URL, with a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from potability import db, roles
from potability.config import Settings, env_name

# the owner's URLs: the deploy step's alone, never a DVC stage's
DEPLOY_ENV = (env_name("deploy_database_url"), env_name("deploy_mlflow_tracking_uri"))


class RunRefused(RuntimeError):
    """A scheduled run whose ``DATABASE_URL`` is not the pipeline role's: it would train as someone else."""


@dataclass(frozen=True)
class Connections:
    """The settings each part of a retrain runs with (their URLs are secrets: never in a repr)."""

    pipeline: Settings = field(repr=False)
    deploy: Settings = field(repr=False)
    warnings: list[str] = field(default_factory=list)
    # the pipeline's part connects with more than the pipeline role's rights (the one-URL
    # fallback, or a tracking URI used as given): `potability flow deploy` refuses unless told
    widened: bool = False

    @property
    def one_url(self) -> bool:
        """Whether the pipeline's part and the deploy step connect with the same URL."""
        return db.database_url(self.pipeline) == self.deploy.database_url


def split(settings: Settings) -> Connections:
    """The pipeline's and the deploy step's settings for a retrain run with ``settings``.

    Raises ``RunRefused`` for a scheduled run whose ``DATABASE_URL`` is not the
    pipeline role's while that role exists.
    """
    if settings.deploy_database_url:  # a scheduled run: `potability flow deploy` split them
        return _scheduled(settings)
    admin_url = db.database_url(settings)
    admin = settings.model_copy(
        update={"database_url": admin_url, "mlflow_tracking_uri": db.mlflow_tracking_uri(settings)}
    )
    user, database = _login(admin_url)
    role = roles.role_name("pipeline", database)
    if user == role:  # narrower, not wider: its deploy step would be refused
        warning = (
            "DATABASE_URL is the pipeline role's: the deploy step needs the owner's, in "
            f"{env_name('deploy_database_url')} and {env_name('deploy_mlflow_tracking_uri')}"
        )
        return Connections(admin, admin, [warning])
    password, why_not = _pipeline_password(settings, admin_url, database)
    if password is None:
        return Connections(admin, admin, [why_not], widened=True)
    pipeline, warnings = _pipeline_settings(settings, admin, role, password)
    return Connections(pipeline, admin, warnings, widened=bool(warnings))


def _login(url: str) -> tuple[str, str]:
    """The user ``url`` connects as, and its database (asked of Postgres: a URL may leave them to libpq)."""
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute("SELECT session_user, current_database()")
        return cur.fetchone()


def _one_url_warning(why: str) -> str:
    return f"{why}: the whole retrain connects as DATABASE_URL's user"


def _scheduled(settings: Settings) -> Connections:
    """A scheduled run's connections: ``DATABASE_URL`` as the pipeline's, the ``POTABILITY_DEPLOY_*`` the deploy step's.

    The worker's own environment wins over the Secret block, so a worker
    started from the owner's shell would hand it the owner's ``DATABASE_URL``:
    refused, unless the roles do not exist (the one-URL fallback, with a warning).
    """
    url = db.database_url(settings)
    user, database = _login(url)
    expected = roles.role_name("pipeline", database)
    warnings = []
    if user != expected:
        if roles.made(url):
            raise RunRefused(
                f"DATABASE_URL connects as {user!r}, not as the pipeline role {expected!r} of "
                f"database {database!r}: a scheduled retrain trains as that role and only its "
                f"deploy step uses {env_name('deploy_database_url')}. The worker's environment "
                "wins over the Secret block: unset DATABASE_URL where the worker starts, or run "
                "`potability flow deploy` again"
            )
        warnings.append(_one_url_warning(f"the pipeline role {expected!r} does not exist"))
    tracking = settings.mlflow_tracking_uri or ""
    tracking_user = urlsplit(tracking).username if tracking.startswith("postgres") else None
    if tracking_user and tracking_user != expected:
        warnings.append(_tracking_as_given_warning(tracking_user))
    pipeline = settings.model_copy(  # the owner's URLs never reach the training tasks
        update={"deploy_database_url": None, "deploy_mlflow_tracking_uri": None}
    )
    deploy = settings.model_copy(
        update={
            "database_url": settings.deploy_database_url,
            # unset: a tracking server as given, else the MLflow database beside the owner's
            "mlflow_tracking_uri": settings.deploy_mlflow_tracking_uri
            or (settings.mlflow_tracking_uri if settings.tracking_server else None),
        }
    )
    return Connections(pipeline, deploy, warnings, widened=bool(warnings))


def _tracking_as_given_warning(user: str | None = None) -> str:
    who = f" (as {user!r})" if user else ""
    return (
        f"{env_name('mlflow_tracking_uri')} is not the MLflow database beside DATABASE_URL: "
        f"the pipeline's runs are logged with its credentials as given{who}"
    )


def _pipeline_password(settings: Settings, admin_url: str, database: str) -> tuple[str | None, str]:
    """The pipeline role's password, or None and why the whole retrain uses ``admin_url``."""
    if not roles.made(admin_url):
        return None, _one_url_warning(
            f"the pipeline role of database {database!r} does not exist (`potability db "
            "migrate` by an owner without CREATEROLE)",
        )
    try:
        return roles.passwords(settings, create=False)["pipeline"], ""
    except LookupError as exc:  # the roles were made from another host's roles file
        return None, _one_url_warning(
            f"{exc} (`potability db migrate` writes it; {env_name('db_roles_file')} names it)",
        )


def _pipeline_settings(
    settings: Settings, admin: Settings, user: str, password: str
) -> tuple[Settings, list[str]]:
    """The pipeline role's settings on the owner's database and the MLflow database beside it, and warnings."""
    tracking, warnings = admin.mlflow_tracking_uri, []
    if db.mlflow_beside(settings):  # where `db migrate` granted the pipeline its tables
        tracking = roles.with_user(tracking, user, password)
    elif tracking.startswith("postgres"):  # a tracking server or file store has its own rights
        warnings.append(_tracking_as_given_warning())
    pipeline = settings.model_copy(
        update={
            "database_url": roles.with_user(admin.database_url, user, password),
            "mlflow_tracking_uri": tracking,
        }
    )
    return pipeline, warnings


def run_secrets(connections: Connections) -> dict[str, str]:
    """The URLs a scheduled run needs, under the names its settings read.

    The owner's, for the deploy step, only where the pipeline has its own: with
    one URL the run takes the fallback again, and its log and report say so.
    """
    values = {
        env_name("database_url"): db.database_url(connections.pipeline),
        env_name("mlflow_tracking_uri"): connections.pipeline.mlflow_tracking_uri,
    }
    if not connections.one_url:  # one URL: the run finds the fallback again, and warns of it
        values[env_name("deploy_database_url")] = connections.deploy.database_url
        values[env_name("deploy_mlflow_tracking_uri")] = connections.deploy.mlflow_tracking_uri
    return {k: v for k, v in values.items() if v}
