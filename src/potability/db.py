"""Owns the database connection: where Postgres is, connecting, and migrations.

With ``DATABASE_URL`` unset an embedded PostgreSQL (``pgserver``) is started
under ``.pgdata/`` and left running, like any local database, so that each CLI
call or DVC stage costs a connect, not a start. Same code path either way.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from potability.config import Settings, get_settings
from potability.errors import DatabaseUnavailable

log = logging.getLogger(__name__)

_embedded_urls: dict[Path, str] = {}


def embedded_server_url(pgdata: Path) -> str:
    """Start (or find) the embedded PostgreSQL in ``pgdata`` and return its libpq URI."""
    if pgdata not in _embedded_urls:
        logging.getLogger("pgserver").setLevel(logging.WARNING)  # it logs every command at INFO
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset on servers
            try:
                import pgserver  # imported lazily: only the embedded path needs it
            except ImportError:
                raise DatabaseUnavailable(
                    "DATABASE_URL is unset and the embedded Postgres (pgserver) is not installed "
                    "here: set DATABASE_URL, or install potability[train]"
                ) from None

            pgdata.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(pgdata, cleanup_mode=None)
            server.ensure_postgres_running()  # a handle cached by pgserver does not restart a stopped server
        _embedded_urls[pgdata] = server.get_uri()
    return _embedded_urls[pgdata]


def stop_embedded_server(pgdata: Path, mode: str = "fast") -> bool:
    """Stop the embedded PostgreSQL in ``pgdata``; False if none was running.

    ``mode`` is pg_ctl's: "fast" (clean) or "immediate" (as if killed: no checkpoint, crash recovery at start).
    """
    if not (pgdata / "postmaster.pid").exists():
        return False
    import pgserver

    pg_ctl = Path(pgserver.__file__).parent / "pginstall" / "bin" / "pg_ctl"
    command = [str(pg_ctl), "-D", str(pgdata), "stop", "-m", mode]
    if os.geteuid() == 0:  # as root, pgserver runs PostgreSQL as its own system user
        command = ["runuser", "-u", "pgserver", "--", *command]
    subprocess.run(command, check=False, capture_output=True)
    _embedded_urls.pop(pgdata, None)
    return True


def database_url(settings: Settings | None = None) -> str:
    """Return the libpq URI of the project database (usable by psql and psycopg2)."""
    settings = settings or get_settings()
    return settings.database_url or embedded_server_url(settings.pgdata)


def connection_params(settings: Settings) -> dict[str, str]:
    """What every connection sets: a connect timeout and TCP keepalives (libpq parameters).

    Without them a host that stops answering (blackholed, not refusing)
    holds a connect or a query until the kernel gives up, minutes later.
    """
    return {
        "connect_timeout": str(max(1, round(settings.db_connect_timeout_seconds))),
        "keepalives": "1",
        "keepalives_idle": str(settings.db_keepalives_idle_seconds),
        "keepalives_interval": str(settings.db_keepalives_interval_seconds),
        "keepalives_count": str(settings.db_keepalives_count),
    }


def missing_params(url: str, settings: Settings | None = None, **given) -> dict[str, str]:
    """``connection_params`` that neither ``url`` nor ``given`` sets (an explicit value wins)."""
    present = set(psycopg2.extensions.parse_dsn(url)) | set(given)
    params = connection_params(settings or get_settings())
    return {k: v for k, v in params.items() if k not in present}


def server_url(url: str, settings: Settings) -> str:
    """``url`` as a server's connections use it: the connection params and a statement timeout.

    In the URL, so every connection made from it (the owners' own, the page's
    pool, the deployments read, MLflow's registry engine) carries them. A
    statement past ``db_statement_timeout_seconds`` is cancelled (57014, an
    ``OperationalError``), which the owners treat as the database being down.
    """
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    extra = list(missing_params(url, settings).items())
    timeout_ms = round(settings.db_statement_timeout_seconds * 1000)
    options = f"-c statement_timeout={timeout_ms}"
    given = [v for k, v in query if k == "options"]
    query = [(k, v) for k, v in query if k != "options"]
    query += [*extra, ("options", " ".join([*given, options]))]
    return urlunsplit(parts._replace(query=urlencode(query, safe="/", quote_via=quote)))


def connect(
    settings: Settings | None = None, url: str | None = None, **kwargs
) -> psycopg2.extensions.connection:
    """Open a connection, with ``connection_params``, turning connection failures into ``DatabaseUnavailable``."""
    target = url or database_url(settings)
    try:
        return psycopg2.connect(target, **missing_params(target, settings, **kwargs), **kwargs)
    except psycopg2.OperationalError as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise DatabaseUnavailable(
            f"cannot reach Postgres at {redact(target)}: {first_line}. "
            "Is it running? Check DATABASE_URL, or unset it to use the embedded server."
        ) from exc


@contextmanager
def transaction(settings: Settings | None = None, url: str | None = None):
    """Yield a connection inside one transaction; commit on success, roll back on error."""
    conn = connect(settings, url)
    try:
        with conn:
            yield conn
    finally:
        conn.close()


@contextmanager
def advisory_lock(key: int, settings: Settings | None = None, url: str | None = None):
    """Hold a session-level Postgres advisory lock; yield False at once if another session holds it."""
    conn = connect(settings, url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
            acquired = bool(cur.fetchone()[0])
        yield acquired
    finally:
        conn.close()  # closing the session releases the lock, even after a crash


def redact(url: str) -> str:
    """Hide a password in a URI before it goes into a message or a log.

    Both places libpq reads one from: the user-info (``user:secret@``) and a
    ``password=`` parameter (``?password=secret``, or a key=value DSN).
    """
    url = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    return re.sub(r"(?i)(\bpassword\s*=\s*)('[^']*'|[^&\s]*)", r"\1***", url)


def mlflow_tracking_uri(settings: Settings | None = None, url: str | None = None) -> str:
    """Return the MLflow tracking URI: explicit, or a ``mlflow`` database on our server.

    SQLAlchemy maps a bare ``postgresql://`` to psycopg 3, which is not installed,
    so the driver is named. The database is created on first use; where the role
    may not create databases, MLflow shares ours (its tables do not clash with ``water``).
    """
    settings = settings or get_settings()
    if settings.mlflow_tracking_uri:
        return settings.mlflow_tracking_uri
    url = url or database_url(settings)
    parts = urlsplit(url)
    mlflow_url = urlunsplit(parts._replace(path="/mlflow"))
    try:
        conn = connect(url=url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = 'mlflow'")
            if cur.fetchone() is None:
                cur.execute("CREATE DATABASE mlflow")
        conn.close()
        target = mlflow_url
    except psycopg2.errors.DuplicateDatabase:  # another process created it just now
        target = mlflow_url
    except psycopg2.errors.InsufficientPrivilege:
        log.warning("no right to create database 'mlflow'; MLflow shares the project database")
        target = url
    return _with_driver(target)


def _with_driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg2://", 1).replace(
        "postgres://", "postgresql+psycopg2://", 1
    )


def beside_mlflow_uri(settings: Settings, url: str | None = None) -> str:
    """The MLflow database beside the project's (``mlflow_tracking_uri`` as if unset)."""
    return mlflow_tracking_uri(settings.model_copy(update={"mlflow_tracking_uri": None}), url)


def mlflow_beside(settings: Settings, url: str | None = None) -> bool:
    """Whether MLflow's store is the database beside ours: ``MLFLOW_TRACKING_URI`` unset, or naming it.

    There `potability db migrate` grants the roles their MLflow tables, and a
    retrain logs its runs with the pipeline role's credentials.
    """
    explicit = settings.mlflow_tracking_uri
    if not explicit:
        return True
    if not explicit.startswith("postgres"):  # a tracking server or a file store
        return False
    return _with_driver(explicit) == beside_mlflow_uri(settings, url)


# Scratch databases (benchmarks, tests): bound identifiers, sessions ended on drop.
def database_on(server_url: str, name: str) -> str:
    """The URL of database ``name`` on the server of ``server_url``."""
    return urlunsplit(urlsplit(server_url)._replace(path=f"/{name}"))


def _administer(server_url: str, *statements) -> None:
    conn = connect(url=server_url)
    conn.autocommit = True  # CREATE / DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
    finally:
        conn.close()


def create_database(server_url: str, name: str) -> str:
    """Drop (with its sessions) and create database ``name`` on the server of ``server_url``; its URL."""
    from psycopg2 import sql

    drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    _administer(server_url, drop, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return database_on(server_url, name)


def drop_database(server_url: str, name: str) -> None:
    """Drop database ``name`` and end its sessions (a bench killed mid-run leaves some)."""
    from psycopg2 import sql

    _administer(
        server_url, sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
    )
