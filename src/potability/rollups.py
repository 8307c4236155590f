"""The quality page's reads, from rollups kept up to date as answers arrive (never the raw log).

Migration 005's statement triggers fill ``water.inference_hourly``,
``water.feature_histogram_hourly`` and ``water.lab_matches`` with every insert
into the log or the lab table, so a page read costs a few index range scans
over small tables whatever the size of the log. Reads use a small pool of
their own, so a page load never waits for the log writer's or the token
lookup's connection (``WaterMart`` keeps one connection behind one lock).
Each read returns ``as_of``: the newest row its rollup covers, so the page can
say how fresh it is.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.errors
import psycopg2.pool

from potability import db
from potability.errors import DatabaseUnavailable, SchemaError
from potability.schema import FEATURES

T = TypeVar("T")
_COLUMN = {f.name: f.column for f in FEATURES}
_NAME = {f.column: f.name for f in FEATURES}


class Rollups:
    """Reads the page's rollups over a bounded pool of its own connections."""

    def __init__(self, url: str, pool_size: int):
        if pool_size < 1:
            raise ValueError(f"rollups pool size must be at least 1, got {pool_size}")
        self._url = url
        self._size = pool_size
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        # callers wait for a slot, never PoolError
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._lock:
            if self._pool is None:
                try:
                    self._pool = psycopg2.pool.ThreadedConnectionPool(
                        0, self._size, self._url, **db.missing_params(self._url)
                    )
                except psycopg2.OperationalError as exc:
                    raise DatabaseUnavailable(
                        f"cannot reach Postgres at {db.redact(self._url)}: {_first_line(exc)}"
                    ) from exc
            return self._pool

    def _read(self, work: Callable[[Any], T]) -> T:
        """Run ``work(cursor)`` in a read transaction on a pooled connection, mapping driver errors."""
        with self._slots:
            pool = self._get_pool()
            try:
                conn = pool.getconn()
            except psycopg2.OperationalError as exc:
                raise DatabaseUnavailable(
                    f"cannot reach Postgres at {db.redact(self._url)}: {_first_line(exc)}"
                ) from exc
            broken = False
            try:
                with conn, conn.cursor() as cur:
                    return work(cur)
            except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedFunction) as exc:
                raise SchemaError(
                    f"{_first_line(exc)}: the database is not migrated; run `potability db migrate`"
                ) from exc
            except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                broken = True
                raise DatabaseUnavailable(
                    f"lost the connection to Postgres: {_first_line(exc)}"
                ) from exc
            finally:
                pool.putconn(conn, close=broken or conn.closed != 0)

    def hourly(self, since: datetime) -> tuple[pd.DataFrame, datetime | None]:
        """Answers per UTC hour and sensor since ``since`` (its hour included), and ``as_of``."""

        def work(cur):
            cur.execute(
                "SELECT hour, sensor_id, sum(answers)::bigint, sum(potable)::float / sum(answers), "
                "max(last_received_at) FROM water.inference_hourly "
                "WHERE hour >= date_trunc('hour', %s::timestamptz, 'UTC') "
                "GROUP BY hour, sensor_id ORDER BY hour, sensor_id",
                (since,),
            )
            return cur.fetchall()

        rows = self._read(work)
        frame = pd.DataFrame(
            [r[:4] for r in rows], columns=["hour", "sensor_id", "answers", "potable_share"]
        )
        return frame, max((r[4] for r in rows), default=None)

    def lab_confusion(self) -> tuple[dict[str, int], datetime | None]:
        """Matched lab samples counted by lab verdict and live answer (tp, fp, fn, tn), and the newest one's time."""

        def work(cur):
            cur.execute(
                "SELECT count(*) FILTER (WHERE potable AND potability = 1), "
                "count(*) FILTER (WHERE potable AND potability = 0), "
                "count(*) FILTER (WHERE NOT potable AND potability = 1), "
                "count(*) FILTER (WHERE NOT potable AND potability = 0), "
                "max(collected_at) FROM water.lab_matches"
            )
            return cur.fetchone()

        tp, fp, fn, tn, newest = self._read(work)
        return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}, newest

    def lab_match_window(self) -> int | None:
        """The minutes the database matches lab samples within (set by ``db migrate``), None before."""

        def work(cur):
            cur.execute("SELECT window_minutes FROM water.lab_match_config")
            row = cur.fetchone()
            return row[0] if row else None

        return self._read(work)

    def feature_counts(
        self, model_version: str, edges: dict[str, list[float]], since: datetime
    ) -> tuple[dict[str, np.ndarray], int, datetime | None]:
        """Live answers of ``model_version`` per bin and feature since ``since``; how many; ``as_of``.

        Counts per feature (data set names) follow ``quality``: one per bin of
        ``edges`` (``len(edges) + 1``), then missing last.
        """

        def work(cur):
            cur.execute(
                "SELECT feature, bucket, sum(answers)::bigint FROM water.feature_histogram_hourly "
                "WHERE model_version = %s AND hour >= date_trunc('hour', %s::timestamptz, 'UTC') "
                "GROUP BY feature, bucket",
                (model_version, since),
            )
            buckets = cur.fetchall()
            cur.execute(
                "SELECT max(last_received_at) FROM water.inference_hourly "
                "WHERE model_version = %s AND hour >= date_trunc('hour', %s::timestamptz, 'UTC')",
                (model_version, since),
            )
            return buckets, cur.fetchone()[0]

        buckets, as_of = self._read(work)
        counts = {
            name: np.zeros(len(edges[name]) + 2) for name in edges if _COLUMN.get(name) is not None
        }
        for column, bucket, answers in buckets:
            name = _NAME.get(column)
            if name in counts:
                counts[name][-1 if bucket < 0 else bucket] += answers
        # each answer falls in one bin per feature
        total = max((int(c.sum()) for c in counts.values()), default=0)
        return counts, total, as_of


def register_edges(url: str, model_version: str, reference: dict[str, Any]) -> bool:
    """Store a model version's profile edges so its answers are binned as they arrive.

    ``reference`` is meta.json's ``reference`` ({feature: {edges, shares}}).
    Answers of this version already logged are counted once, now; a version
    registered before is left alone. Returns whether it was new.
    """
    unknown = sorted(set(reference) - set(_COLUMN))
    if unknown:
        raise ValueError(f"model {model_version}: reference names unknown features {unknown}")
    edges = {}
    for name, column in _COLUMN.items():
        values = [float(v) for v in (reference.get(name) or {}).get("edges", [])]
        if values != sorted(values):
            raise ValueError(f"model {model_version}: reference edges of {name} are not sorted")
        edges[column] = values  # empty: no profile for it, and the page skips it
    with db.transaction(url=url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT water.register_feature_edges(%s, %s::jsonb)", (model_version, json.dumps(edges))
        )
        return bool(cur.fetchone()[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
