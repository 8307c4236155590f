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

import psycopg2.extensions

from potability import db, roles
from potability.config import Settings, env_name

# the owner's URLs: the deploy step's alone, never a DVC stage's
DEPLOY_ENV = (env_name("deploy_database_url"), env_name("deploy_mlflow_tracking_uri"))


@dataclass(frozen=True)
class Connections:
    """The settings each part of a retrain runs with (their URLs are secrets: never in a repr)."""

    pipeline: Settings = field(repr=False)
    deploy: Settings = field(repr=False)
    warnings: list[str] = field(default_factory=list)


def split(settings: Settings) -> Connections:
    """The pipeline's and the deploy step's settings for a retrain run with ``settings``."""
    if settings.deploy_database_url:  # a scheduled run: `potability flow deploy` split them
        deploy = settings.model_copy(
            update={
                "database_url": settings.deploy_database_url,
                # unset: a tracking server as given, else the MLflow database beside the owner's
                "mlflow_tracking_uri": settings.deploy_mlflow_tracking_uri
                or (settings.mlflow_tracking_uri if settings.tracking_server else None),
            }
        )
        return Connections(settings, deploy)
    admin_url = db.database_url(settings)
    tracking = db.mlflow_tracking_uri(settings)
    admin = settings.model_copy(update={"database_url": admin_url, "mlflow_tracking_uri": tracking})
    database = roles.database_name(admin_url)
    user = roles.role_name("pipeline", database)
    if psycopg2.extensions.parse_dsn(admin_url).get("user") == user:
        warning = (
            "DATABASE_URL is the pipeline role's: the deploy step needs the owner's, in "
            f"{env_name('deploy_database_url')} and {env_name('deploy_mlflow_tracking_uri')}"
        )
        return Connections(admin, admin, [warning])
    if not roles.made(admin_url):
        warning = (
            f"the pipeline role of database {database!r} does not exist (`potability db "
            "migrate` by an owner without CREATEROLE): the whole retrain connects as "
            "DATABASE_URL's user"
        )
        return Connections(admin, admin, [warning])
    try:
        password = roles.passwords(settings, create=False)["pipeline"]
    except LookupError as exc:  # the roles were made from another host's roles file
        warning = (
            f"{exc} (`potability db migrate` writes it; {env_name('db_roles_file')} names it): "
            "the whole retrain connects as DATABASE_URL's user"
        )
        return Connections(admin, admin, [warning])
    pipeline_tracking, warnings = tracking, []
    beside = not settings.mlflow_tracking_uri or tracking == db.mlflow_tracking_uri(
        admin.model_copy(update={"mlflow_tracking_uri": None})
    )
    if (
        beside
    ):  # the MLflow database beside ours, where `db migrate` granted the pipeline its tables
        pipeline_tracking = roles.with_user(tracking, user, password)
    elif tracking.startswith("postgres"):  # a tracking server or file store has its own rights
        warnings.append(
            f"{env_name('mlflow_tracking_uri')} is not the MLflow database beside DATABASE_URL: "
            "the pipeline's runs are logged with its credentials as given"
        )
    pipeline = settings.model_copy(
        update={
            "database_url": roles.with_user(admin_url, user, password),
            "mlflow_tracking_uri": pipeline_tracking,
        }
    )
    return Connections(pipeline, admin, warnings)


def run_secrets(connections: Connections) -> dict[str, str]:
    """The four URLs a scheduled run needs, under the names its settings read."""
    values = {
        env_name("database_url"): db.database_url(connections.pipeline),
        env_name("mlflow_tracking_uri"): connections.pipeline.mlflow_tracking_uri,
        env_name("deploy_database_url"): connections.deploy.database_url,
        env_name("deploy_mlflow_tracking_uri"): connections.deploy.mlflow_tracking_uri,
    }
    return {k: v for k, v in values.items() if v}
