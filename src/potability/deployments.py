"""Owns ``water.deployments``: the record of every move of the alias ``champion``.

The registry says what is served now; this table says how it got there (who,
when, why, what it replaced), so a regulator can follow every change and an
operator can roll back to any earlier version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg2

from potability import db
from potability.config import Settings
from potability.errors import DatabaseUnavailable, SchemaError

_COLUMNS = (
    "deployed_at",
    "deployed_by",
    "action",
    "registered_model",
    "registry_version",
    "model_version",
    "previous_version",
    "previous_model_version",
    "reason",
    "lock_commit",
)


@dataclass(frozen=True)
class Deployment:
    deployed_at: datetime | None
    deployed_by: str
    action: str  # "deploy" or "rollback"
    registered_model: str
    registry_version: str
    model_version: str
    previous_version: str | None
    previous_model_version: str | None
    reason: str
    lock_commit: str | None = None  # the commit holding the dvc.lock that produced the version

    def as_dict(self) -> dict:
        data = {name: getattr(self, name) for name in _COLUMNS}
        data["deployed_at"] = self.deployed_at.isoformat() if self.deployed_at else None
        return data


def _run(work, settings: Settings | None, url: str | None):
    try:
        with db.transaction(settings, url) as conn, conn.cursor() as cur:
            return work(cur)
    except psycopg2.errors.UndefinedTable as exc:
        raise SchemaError("water.deployments does not exist: run `potability db migrate`") from exc
    except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
        raise DatabaseUnavailable(f"lost the connection to Postgres: {exc}") from exc


def record(entry: Deployment, settings: Settings | None = None, url: str | None = None) -> None:
    """Store one deployment (its ``deployed_at`` is the database's clock)."""
    values = [getattr(entry, name) for name in _COLUMNS[1:]]
    _run(
        lambda cur: cur.execute(
            f"INSERT INTO water.deployments ({', '.join(_COLUMNS[1:])}) "  # noqa: S608 (constant names)
            f"VALUES ({', '.join(['%s'] * len(values))})",
            values,
        ),
        settings,
        url,
    )


def history(
    registered_model: str, limit: int = 50, settings: Settings | None = None, url: str | None = None
) -> list[Deployment]:
    """The newest ``limit`` deployments of ``registered_model``, newest first."""

    def work(cur) -> list[Deployment]:
        cur.execute(
            f"SELECT {', '.join(_COLUMNS)} FROM water.deployments "  # noqa: S608
            "WHERE registered_model = %s ORDER BY deployed_at DESC, id DESC LIMIT %s",
            (registered_model, limit),
        )
        return [Deployment(*row) for row in cur.fetchall()]

    return _run(work, settings, url)
