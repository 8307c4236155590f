"""One Postgres connection with one owner: a lock, one transaction per call, driver errors mapped.

Each resource owner (``WaterMart`` for samples, tokens and pages;
``InferenceStore`` for the log) holds its own ``PgOwner`` connection, so a
COPY of logged answers never holds the lock a token lookup or a page read
waits on.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors

from potability import db
from potability.config import Settings
from potability.errors import DatabaseUnavailable, SchemaError

T = TypeVar("T")


class PgOwner:
    """A lazily opened connection that heals itself: the base of every resource owner."""

    def __init__(
        self, settings: Settings | None = None, url: str | None = None, autocommit: bool = False
    ):
        """``autocommit``: each statement its own transaction, one round trip instead of three
        (BEGIN, the statement, COMMIT): for an owner that only reads, one statement a call."""
        self._url = url or db.database_url(settings)
        self._conn: psycopg2.extensions.connection | None = None
        self._lock = threading.Lock()
        self._autocommit = autocommit

    @property
    def url(self) -> str:
        return self._url

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    # -- plumbing ---------------------------------------------------------
    def _run(self, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in one transaction, mapping driver errors to mart errors.

        After any driver error the connection is checked; one that is broken is
        dropped so the next call reconnects (a crashed server reaches psycopg2 as
        a bare ``DatabaseError`` on a connection that may not say ``closed`` yet).
        """
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = db.connect(url=self._url)
                    self._conn.autocommit = self._autocommit
                with self._conn, self._conn.cursor() as cur:
                    return work(cur)
            except (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName) as exc:
                raise SchemaError(
                    f"{exc.pgerror.strip().splitlines()[0] if exc.pgerror else exc}: "
                    "the database is not migrated; run `potability db migrate`"
                ) from exc
            except DatabaseUnavailable:
                self._drop_connection()
                raise
            except psycopg2.Error as exc:
                if isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError)) or (
                    not self._connection_healthy()
                ):
                    self._drop_connection()
                    raise DatabaseUnavailable(
                        f"lost the connection to Postgres: {str(exc).strip() or exc!r}"
                    ) from exc
                raise

    def _connection_healthy(self) -> bool:
        """True when the connection still answers; a statement error leaves it usable."""
        conn = self._conn
        if conn is None or conn.closed:
            return False
        try:
            if conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN:
                return False
            conn.rollback()
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
            return True
        except psycopg2.Error:
            return False

    def _drop_connection(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None
