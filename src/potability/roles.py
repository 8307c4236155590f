"""Least-privileged database roles: what a server and the pipeline may do, and their passwords.

One superuser for everything meant a server made to run SQL could add an admin
token or move the champion. ``potability db migrate`` (the owner, "admin")
makes, every time it runs, two roles of the database it migrates (roles are
cluster-wide, so each database's carry its name: ``potability_server_<db>``,
see :func:`role_name`; a second workspace on the same Postgres never resets the
first one's passwords):

- server: read the tables it answers from (tokens, the page's rollups), insert
  into the inference log and the lab table; nothing else. The log's functions
  run as their owner (``SECURITY DEFINER``), so a server keeps its maintenance
  without rights to the tables behind it; it may execute only those it calls
  (:data:`SERVER_FUNCTIONS`), each held to what ``db migrate`` recorded:
  retention keeps at least the recorded days (migration 009), partitions go at
  most the recorded days ahead and lab rows are matched again at most the
  recorded seconds back (migration 010), whatever a server asks for; the
  lab-match window is the owner's alone. In the MLflow database it reads only
  the registry it follows (:data:`MLFLOW_SERVER_TABLES`) and never moves the
  alias.
- pipeline: read the lab rows, write the flow's own state; in the MLflow
  database log training runs (experiments, runs, their params, metrics, tags,
  inputs, logged models) and read the registry, never write it; no other
  MLflow table (:data:`MLFLOW_PIPELINE_TABLES`: not its secrets or webhooks).

Passwords are generated once and kept in ``POTABILITY_DB_ROLES_FILE`` (mode
0600); ``potability db url --role ROLE`` prints each role's URL.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from potability import db
from potability.config import Settings

log = logging.getLogger(__name__)
MADE = ("server", "pipeline")  # the roles `db migrate` makes; admin is the owner itself
ROLES = (*MADE, "admin")
_MAX_NAME_BYTES = 63  # Postgres cuts identifiers longer than NAMEDATALEN - 1

# {server} / {pipeline} stand for the database's role names (sql.Identifier)
_SERVER_GRANTS = (
    "GRANT SELECT ON ALL TABLES IN SCHEMA water TO {server}",
    "GRANT INSERT ON water.water_inferences, water.water_potability TO {server}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA water TO {server}",
    # an earlier release granted every function: only SERVER_FUNCTIONS from now on
    "REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA water FROM {server}",
    "GRANT EXECUTE ON FUNCTION {server_functions} TO {server}",
)
SERVER_FUNCTIONS = (
    # the log writer's batch: its histogram locks and the edges to bin with, then its deltas
    "water.begin_writer_rollups(text[])",
    "water.add_hourly_deltas(bigint[], text[], text[], bigint[], bigint[], double precision[], bigint[])",
    "water.add_histogram_deltas(text[], bigint[], text[], integer[], bigint[])",
    # hourly maintenance, each held to what `db migrate` recorded unless the caller owns the log:
    # partitions at most water.log_limits' days ahead and one day back (migration 010)
    "water.ensure_inference_partitions(integer, integer)",
    "water.allowed_partitions_ahead(integer)",
    # retention: never fewer days than water.log_retention's (migration 009)
    "water.drop_inference_partitions(integer)",
    "water.allowed_retention_days(integer)",
    # lab rows added within water.log_limits' seconds matched again (migration 010)
    "water.rematch_lab_samples(timestamp with time zone)",
    # the served version's drift bins: a version registered once, by whoever comes first
    "water.register_feature_edges(text, jsonb)",
)
"""The log's functions a server may call, each bounded as noted; the rest it may not.

Not here, so refused to a server: ``set_lab_match_window`` (the window is the
owner's, set by ``db migrate`` from params.yaml: changing it matches every lab
sample again), ``ensure_inference_partition`` (one day, any day),
``recompute_rollups`` (locks and recounts the rollups: a bench's tool),
``lock_histograms`` and the ``*_sql`` builders (used inside the functions
above, which run as the owner) and the trigger functions (a trigger runs its
function without the inserting role's EXECUTE).
"""
_PIPELINE_GRANTS = (
    "GRANT SELECT ON water.water_potability, water.deployments, water.flow_state TO {pipeline}",
    "GRANT INSERT, UPDATE ON water.flow_state TO {pipeline}",
)
# MLflow's tables a training run writes (this MLflow's schema: runs and their params, metrics,
# tags, inputs and datasets, the logged models of MLflow 3); never the registry's
MLFLOW_RUN_TABLES = (
    "experiments",
    "experiment_tags",
    "runs",
    "params",
    "metrics",
    "latest_metrics",
    "tags",
    "datasets",
    "inputs",
    "input_tags",
    "logged_models",
    "logged_model_params",
    "logged_model_metrics",
    "logged_model_tags",
)
MLFLOW_REGISTRY_TABLES = (
    "registered_models",
    "registered_model_tags",
    "registered_model_aliases",
    "model_versions",
    "model_version_tags",
)
"""The model registry: models, versions, aliases and their tags (the ``manifest_sha256`` tag)."""
MLFLOW_SCHEMA_TABLES = ("alembic_version",)
"""MLflow's schema version, which its store checks against its own before any call."""
MLFLOW_SERVER_TABLES = (
    *MLFLOW_SCHEMA_TABLES,
    *MLFLOW_REGISTRY_TABLES,
    # MlflowClient's tracking store reads the default experiment when it is made
    "experiments",
    "experiment_tags",
)
"""The MLflow tables a server reads, and nothing else of MLflow's database.

A server follows the champion alias and downloads the version it names
(``tracking.download_version``): the alias, the version (its source, its
``manifest_sha256`` tag) and the registered model. Everything else MLflow keeps
(runs, traces, secrets, webhooks, gateway endpoints, jobs...) a server has no
use for; a table a later MLflow adds is not readable until added here.
"""
MLFLOW_PIPELINE_TABLES = (*MLFLOW_SCHEMA_TABLES, *MLFLOW_RUN_TABLES, *MLFLOW_REGISTRY_TABLES)
"""The MLflow tables the pipeline reads: the runs it logs (``MLFLOW_RUN_TABLES``, which it
also writes) and the registry, which the champion stage reads (the alias, the version's
tags and source) and never writes (the deploy step, as the owner, does)."""
MLFLOW_COLUMNS = {"webhooks": ("webhook_id", "workspace")}
"""Columns both roles read of a table they may not read whole.

MLflow's registry store, when it is made, checks that no webhook lies outside
the default workspace: it reads those two columns. A webhook's URL and secret
stay unreadable to both roles.
"""


def role_name(role: str, database: str) -> str:
    """The name of ``role`` ("server" or "pipeline") of ``database``: ``potability_<role>_<database>``.

    Within Postgres's 63 bytes: a longer one keeps the database name's head
    and a hash of the whole name, so two long names never share a role.
    """
    name = f"potability_{role}_{database}"
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    digest = hashlib.sha256(database.encode()).hexdigest()[:8]
    head = f"potability_{role}_"
    room = _MAX_NAME_BYTES - len(head) - len(digest) - 1
    cut = database.encode()[:room].decode(errors="ignore")  # never half a character
    return f"{head}{cut}_{digest}"


def database_name(url: str) -> str:
    """The database ``url`` connects to (asked of Postgres when the URL leaves it to libpq)."""
    named = psycopg2.extensions.parse_dsn(url).get("dbname")
    if named:
        return named
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_database()")
        return cur.fetchone()[0]


def names(database: str) -> dict[str, str]:
    """Each made role's name in ``database``."""
    return {role: role_name(role, database) for role in MADE}


def passwords(settings: Settings, create: bool = True) -> dict[str, str]:
    """Each role's password: generated at the first call, then read from the roles file.

    ``create=False`` for a host that only reads them: a missing one raises
    ``LookupError`` instead of making a password no role has.
    """
    path = settings.db_roles_file
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        stored = {}
    missing = [role for role in MADE if role not in stored]
    if missing and not create:
        raise LookupError(f"{path} holds no password for the {' and '.join(missing)} role")
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
    return with_user(
        admin_url, role_name(role, database_name(admin_url)), passwords(settings)[role]
    )


# libpq parameters that name who connects: in a URL's query they win over its userinfo, so a role
# URL built from the owner's must not keep them (it would connect as the owner, and carry its password)
_LOGIN_PARAMETERS = frozenset({"user", "password", "passfile", "service"})


def with_user(url: str, user: str, password: str) -> str:
    """``url`` (any scheme, the MLflow database's too) connecting as ``user`` with ``password``."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    login = f"{quote(user, safe='')}:{quote(password, safe='')}"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in _LOGIN_PARAMETERS]
    query = parts.query if len(kept) == len(pairs) else urlencode(kept, safe="/:")
    return urlunsplit(parts._replace(netloc=f"{login}@{host}", query=query))


def made(admin_url: str) -> bool:
    """Whether ``db migrate`` made the roles of ``admin_url``'s database (an owner without CREATEROLE did not)."""
    wanted = list(names(database_name(admin_url)).values())
    with db.transaction(url=admin_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", (wanted,))
        return cur.fetchone()[0] == len(wanted)


def ensure(cur, settings: Settings) -> dict[str, str] | None:
    """Create or refresh the roles, their passwords and grants, in the migration's transaction.

    An owner without the right to create roles (a managed database's) leaves
    them out with a warning, and every process keeps using ``DATABASE_URL``;
    returns the roles' names, or None when they are not in place.
    """
    cur.execute("SAVEPOINT potability_roles")
    try:
        made_names = _ensure(cur, settings)
    except psycopg2.errors.InsufficientPrivilege as exc:
        cur.execute("ROLLBACK TO SAVEPOINT potability_roles")
        log.warning(
            "database roles not made (%s): have a role with CREATEROLE run `potability db "
            "migrate`; until then every process connects as DATABASE_URL's user",
            str(exc).strip().splitlines()[0],
        )
        return None
    cur.execute("RELEASE SAVEPOINT potability_roles")
    return made_names


def _grants(statements: tuple[str, ...], role_names: dict[str, str]) -> list[sql.Composed]:
    ids = {role: sql.Identifier(name) for role, name in role_names.items()}
    functions = sql.SQL(", ".join(SERVER_FUNCTIONS))  # our constants, not input
    return [sql.SQL(s).format(server_functions=functions, **ids) for s in statements]


def _ensure(cur, settings: Settings) -> dict[str, str]:
    stored = passwords(settings)
    cur.execute("SELECT current_database()")
    role_names = names(cur.fetchone()[0])
    for role, name in role_names.items():
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)),
            (stored[role],),
        )
    cur.execute("REVOKE ALL ON SCHEMA water FROM PUBLIC")
    for statement in _grants(("GRANT USAGE ON SCHEMA water TO {server}, {pipeline}",), role_names):
        cur.execute(statement)
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
    for statement in _grants((*_SERVER_GRANTS, *_PIPELINE_GRANTS), role_names):
        cur.execute(statement)
    return role_names


def ensure_registry(cur, role_names: dict[str, str]) -> None:
    """In the MLflow database: each role reads only its tables; the pipeline logs runs; neither writes the registry.

    Run by the owner after MLflow's tables exist (``migrator`` creates them),
    and again after an MLflow upgrade adds some: grants name only the tables
    there now, and every other table's SELECT (an earlier release granted them
    all) is revoked.
    """
    ids = {role: sql.Identifier(name) for role, name in role_names.items()}
    both = sql.SQL("{server}, {pipeline}").format(**ids)
    cur.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(both))
    # PostgreSQL up to 14 lets PUBLIC create tables in public: no role of ours makes tables
    cur.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    cur.execute(sql.SQL("REVOKE SELECT ON ALL TABLES IN SCHEMA public FROM {}").format(both))
    cur.execute(
        sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE SELECT ON TABLES FROM {}").format(
            both
        )
    )
    for role, wanted in (("server", MLFLOW_SERVER_TABLES), ("pipeline", MLFLOW_PIPELINE_TABLES)):
        readable = _tables(cur, wanted)
        if readable:
            cur.execute(
                sql.SQL("GRANT SELECT ON {} TO {}").format(sql.SQL(", ").join(readable), ids[role])
            )
    for table, columns in MLFLOW_COLUMNS.items():
        cur.execute(
            "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' "
            "AND c.relname = %s AND a.attname = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped "
            "ORDER BY a.attnum",
            (table, list(columns)),
        )
        present = [sql.Identifier(row[0]) for row in cur.fetchall()]
        if present:
            cur.execute(
                sql.SQL("GRANT SELECT ({}) ON {} TO {}").format(
                    sql.SQL(", ").join(present), sql.Identifier("public", table), both
                )
            )
    tables = _tables(cur, MLFLOW_RUN_TABLES)
    if not tables:  # not an MLflow database yet
        return
    cur.execute(
        sql.SQL("GRANT INSERT, UPDATE ON {} TO {}").format(
            sql.SQL(", ").join(tables), ids["pipeline"]
        )
    )
    # the sequences behind those tables' serial and identity columns (experiment ids)
    cur.execute(
        "SELECT DISTINCT s.relname FROM pg_class s JOIN pg_depend d ON d.objid = s.oid "
        "JOIN pg_class t ON t.oid = d.refobjid JOIN pg_namespace n ON n.oid = s.relnamespace "
        "WHERE s.relkind = 'S' AND n.nspname = 'public' AND t.relname = ANY(%s)",
        (list(MLFLOW_RUN_TABLES),),
    )
    sequences = [sql.Identifier("public", row[0]) for row in cur.fetchall()]
    if sequences:
        cur.execute(
            sql.SQL("GRANT USAGE, SELECT ON SEQUENCE {} TO {}").format(
                sql.SQL(", ").join(sequences), ids["pipeline"]
            )
        )


def _tables(cur, wanted: tuple[str, ...]) -> list[sql.Composed]:
    """Those of ``wanted`` that this MLflow's database has (public schema)."""
    cur.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s) "
        "ORDER BY c.relname",
        (list(wanted),),
    )
    return [sql.Identifier("public", row[0]) for row in cur.fetchall()]
