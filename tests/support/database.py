"""Rows and databases: a lab sample, a logged answer, a query, a scratch database at an old migration."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import psycopg2

from potability import db, migrator
from potability.inference_store import AnsweredBatch
from potability.sensor.readings import reading_inference_id

LAB_BASE = {
    "ph": 7.0,
    "Hardness": 200.0,
    "Solids": 20000.0,
    "Chloramines": 7.0,
    "Sulfate": None,
    "Conductivity": 420.0,
    "Organic_carbon": 14.0,
    "Trihalomethanes": 66.0,
    "Turbidity": 4.0,
}


def lab_row(sample_id, potable=1, **changes):
    """One lab sample as the lab sends it (``Potability`` known), ``changes`` applied."""
    return {**LAB_BASE, **changes, "sample_id": sample_id, "Potability": potable}


def request_row(i=0, sensor="s"):
    """One answered request of one row (its only measurement: ph), as a worker's journal holds it."""
    features = np.full((1, 9), np.nan)
    features[0, 0] = 7.0 + i / 100
    return AnsweredBatch(
        [str(uuid.uuid4())], datetime.now(UTC), sensor, "v", features, np.array([0.5]), 0.4
    )


READ_AT = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0)  # one time per session


def reading_row(reading_id: str, ph: float, sensor: str = "s") -> AnsweredBatch:
    """One answered reading as the server logs it: its own key (the reading's id, ``READ_AT``)."""
    features = np.full((1, 9), np.nan)
    features[0, 0] = ph
    return AnsweredBatch(
        [reading_inference_id(sensor, reading_id)],
        datetime.now(UTC),
        sensor,
        "v",
        features,
        np.array([0.5]),
        0.4,
        logged_at=[READ_AT.isoformat()],
    )


def query(url, sql, params=None):
    """The rows of ``sql`` on a connection of its own (none for a statement without a result)."""
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(sql, params)
        rows = cur.fetchall() if cur.description else []
    conn.close()
    return rows


@contextlib.contextmanager
def scratch_database(pg_url: str, name: str):
    """A new, empty database on the session's server, dropped afterwards; yields its URL."""
    url = db.create_database(pg_url, name)
    try:
        yield url
    finally:
        db.drop_database(pg_url, name)


def migrate_by_hand(cur, up_to: int) -> None:
    """Bring an empty database to migration ``up_to`` as that release's migrate did: a filled old database."""
    cur.execute("CREATE SCHEMA water")
    cur.execute(
        "CREATE TABLE water.schema_migrations (version integer PRIMARY KEY, "
        "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, sql in migrator.migration_files():
        if version <= up_to:
            cur.execute(sql)
            cur.execute("INSERT INTO water.schema_migrations VALUES (%s, %s)", (version, name))
