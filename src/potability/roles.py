"""Least-privileged database roles: what a server and the pipeline may do, and their passwords.

One superuser for everything meant a server made to run SQL could add an admin
token or move the champion. ``potability db migrate`` (the owner, "admin")
makes, every time it runs:

- ``potability_server``: read the tables it answers from (tokens, the page's
  rollups), insert into the inference log and the lab table; nothing else. The
  log's functions (rollups, partitions ahead, retention, drift bins) run as
  their owner (``SECURITY DEFINER``), so a server keeps its maintenance without
  rights to the tables behind it. In the MLflow database it may only read:
  the registry it follows, never the alias.
- ``potability_pipeline``: read the lab rows, write the flow's own state.

Passwords are generated once and kept in ``POTABILITY_DB_ROLES_FILE`` (mode
0600); ``potability db url --role ROLE`` prints each role's URL.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg2.errors
from psycopg2 import sql

from potability.config import Settings

log = logging.getLogger(__name__)
ROLE_NAMES = {"server": "potability_server", "pipeline": "potability_pipeline"}
ROLES = ("server", "pipeline", "admin")

_SERVER_GRANTS = (
    "GRANT SELECT ON ALL TABLES IN SCHEMA water TO potability_server",
    "GRANT INSERT ON water.water_inferences, water.water_potability TO potability_server",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA water TO potability_server",
    "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA water TO potability_server",
)
_PIPELINE_GRANTS = (
    "GRANT SELECT ON water.water_potability, water.deployments, water.flow_state "
    "TO potability_pipeline",
    "GRANT INSERT, UPDATE ON water.flow_state TO potability_pipeline",
)


def passwords(settings: Settings) -> dict[str, str]:
    """Each role's password: generated at the first call, then read from the roles file."""
    path = settings.db_roles_file
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        stored = {}
    missing = [role for role in ROLE_NAMES if role not in stored]
    if missing:
        stored.update({role: secrets.token_urlsafe(24) for role in missing})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(stored, fh, indent=2, sort_keys=True)
        os.replace(tmp, path)
    return stored


def role_url(admin_url: str, role: str, settings: Settings) -> str:
    """The URL of ``role`` on the server and database of ``admin_url`` (``admin``: that URL)."""
    if role == "admin":
        return admin_url
    parts = urlsplit(admin_url)
    host = parts.netloc.rsplit("@", 1)[-1]
    user = f"{ROLE_NAMES[role]}:{quote(passwords(settings)[role], safe='')}"
    return urlunsplit(parts._replace(netloc=f"{user}@{host}"))


def ensure(cur, settings: Settings) -> bool:
    """Create or refresh the roles, their passwords and grants, in the migration's transaction.

    An owner without the right to create roles (a managed database's) leaves
    them out with a warning, and every process keeps using ``DATABASE_URL``;
    returns whether the roles are in place.
    """
    cur.execute("SAVEPOINT potability_roles")
    try:
        _ensure(cur, settings)
    except psycopg2.errors.InsufficientPrivilege as exc:
        cur.execute("ROLLBACK TO SAVEPOINT potability_roles")
        log.warning(
            "database roles not made (%s): have a role with CREATEROLE run `potability db "
            "migrate`; until then every process connects as DATABASE_URL's user",
            str(exc).strip().splitlines()[0],
        )
        return False
    cur.execute("RELEASE SAVEPOINT potability_roles")
    return True


def _ensure(cur, settings: Settings) -> None:
    stored = passwords(settings)
    for role, name in ROLE_NAMES.items():
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
            (stored[role],),
        )
    cur.execute("REVOKE ALL ON SCHEMA water FROM PUBLIC")
    cur.execute("GRANT USAGE ON SCHEMA water TO potability_server, potability_pipeline")
    cur.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA water FROM PUBLIC")
    # every function of the log runs as its owner, and finds only our objects by name; except
    # where a function sets a transaction-local flag for the rest of the transaction
    # (begin_writer_rollups tells the log's trigger the writer counts its rows): a SET clause
    # would undo that flag at the function's exit, and every batch would be counted twice
    cur.execute(
        "SELECT p.oid::regprocedure::text, p.prosrc LIKE '%%set_config(%%' FROM pg_proc p "
        "JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'water'"
    )
    for signature, sets_flags in cur.fetchall():
        pinned = "" if sets_flags else " SET search_path = water, pg_catalog, pg_temp"
        cur.execute(f"ALTER FUNCTION {signature} SECURITY DEFINER{pinned}")  # noqa: S608
    for statement in (*_SERVER_GRANTS, *_PIPELINE_GRANTS):
        cur.execute(statement)


def ensure_registry(cur) -> None:
    """In the MLflow database: the server reads the registry, never writes it (the alias included)."""
    cur.execute("SELECT 1 FROM pg_roles WHERE rolname = 'potability_server'")
    if cur.fetchone() is None:  # the roles could not be made (ensure() said why)
        return
    cur.execute("GRANT USAGE ON SCHEMA public TO potability_server, potability_pipeline")
    cur.execute("GRANT SELECT ON ALL TABLES IN SCHEMA public TO potability_server")
    cur.execute(
        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO potability_server"
    )
