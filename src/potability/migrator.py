"""Schema migrations: the shipped SQL files, applied in order under an advisory lock.

Apart from ``db`` so that what a DVC stage imports (``db`` for a connection)
does not pull in the log's maintenance, which a migration ends with.
"""

from __future__ import annotations

import logging
import re
from importlib import resources

from potability import db, log_maintenance, roles
from potability.config import Settings, get_settings
from potability.db import transaction

log = logging.getLogger(__name__)
_MIGRATION_LOCK_KEY = 727_101  # advisory lock id: two `db migrate` never interleave


def migration_files() -> list[tuple[int, str, str]]:
    """Return ``(version, name, sql)`` for each shipped migration, in order."""
    found = []
    for entry in resources.files("potability.migrations").iterdir():
        match = re.match(r"^(\d+)_(.+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def migrate(settings: Settings | None = None, url: str | None = None) -> list[str]:
    """Apply pending migrations under an advisory lock; return the names applied.

    Then, every time, the inference log's partitions are created ahead, the
    lab-match window is set from params.yaml (``log_maintenance.prepare``), the
    log's retention and the limits of its other functions for every caller but
    the owner are recorded (``log_maintenance.record_retention``,
    ``record_limits``), and the least-privileged roles and their grants are made
    again (``roles``), in the MLflow database beside ours too (whose tables are
    made first, by the owner, so the roles' grants have tables to name).
    """
    applied: list[str] = []
    settings = settings or get_settings()
    with transaction(settings, url) as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        cur.execute("CREATE SCHEMA IF NOT EXISTS water")
        cur.execute(
            """CREATE TABLE IF NOT EXISTS water.schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        cur.execute("SELECT version FROM water.schema_migrations")
        done = {row[0] for row in cur.fetchall()}
        for version, name, sql in migration_files():
            if version in done:
                continue
            cur.execute(sql)
            cur.execute(
                "INSERT INTO water.schema_migrations (version, name) VALUES (%s, %s)",
                (version, name),
            )
            applied.append(f"{version:03d}_{name}")
            log.info("applied migration %03d_%s", version, name)
        prepared = log_maintenance.prepare(cur, settings)
        for line in prepared.lines():
            log.info("inference log: %s", line)
        if log_maintenance.record_retention(cur, settings):
            log.info("inference log: retention %s days recorded", settings.log_retention_days)
        log_maintenance.record_limits(cur, settings)
        role_names = roles.ensure(cur, settings)
    # the MLflow database beside ours: the roles' grants in it too
    if role_names is not None and db.mlflow_beside(settings, url):
        registry = db.beside_mlflow_uri(settings, url)  # created if it is not there yet
        _mlflow_tables(registry, settings)
        with transaction(url=registry.replace("+psycopg2", "", 1)) as conn, conn.cursor() as cur:
            roles.ensure_registry(cur, role_names)
    return applied


def _mlflow_tables(registry: str, settings: Settings) -> None:
    """Make MLflow's tables in ``registry`` as the owner, so neither role ever needs to create one.

    A host without MLflow installed, or tables from an older MLflow, are left
    as they are with a warning: the grants cover the tables there now.
    """
    try:
        from mlflow.exceptions import MlflowException
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
    except ImportError:
        log.warning("MLflow is not installed here: its tables are made at its first use")
        return
    try:
        store = SqlAlchemyStore(registry, settings.mlflow_artifact_uri)
    except MlflowException as exc:  # "Detected out-of-date database schema"
        log.warning(
            "MLflow's tables in %s are not this MLflow's (%s): run `mlflow db upgrade` on it as "
            "the owner, then `potability db migrate` again",
            db.redact(registry),
            str(exc).splitlines()[0],
        )
        return
    store.engine.dispose()
