"""Rows and databases: a lab sample, a logged answer, a query, a scratch database at an old migration."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime

import psycopg2

from potability import migrator

LAB_BASE = {"ph": 7.0, "Hardness": 200.0, "Solids": 20000.0, "Chloramines": 7.0, "Sulfate": None,
            "Conductivity": 420.0, "Organic_carbon": 14.0, "Trihalomethanes": 66.0, "Turbidity": 4.0}  # fmt: skip


def lab_row(sample_id, potable=1, **changes):
    """One lab sample as the lab sends it (``Potability`` known), ``changes`` applied."""
    return {**LAB_BASE, **changes, "sample_id": sample_id, "Potability": potable}


def logged_row(i=0):
    """One answered inference as the inference log stores it (a dict keyed by column)."""
    return {"inference_id": str(uuid.uuid4()), "received_at": datetime.now(UTC).isoformat(), "sensor_id": "s",
            "model_version": "v", "ph": 7.0 + i / 100, "hardness": None, "solids": None, "chloramines": None,
            "sulfate": None, "conductivity": None, "organic_carbon": None, "trihalomethanes": None,
            "turbidity": None, "probability": 0.5, "potable": True, "threshold": 0.4}  # fmt: skip


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
    admin = psycopg2.connect(pg_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f"DROP DATABASE IF EXISTS {name}")
        cur.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_url.replace("/postgres?", f"/{name}?")
    finally:
        with admin.cursor() as cur:
            cur.execute(f"DROP DATABASE {name} WITH (FORCE)")
        admin.close()


def migrate_by_hand(cur, up_to: int) -> None:
    """Bring an empty database to migration ``up_to`` as that release's migrate did: a filled old database."""
    cur.execute("CREATE SCHEMA water")
    cur.execute("CREATE TABLE water.schema_migrations (version integer PRIMARY KEY, "
                "name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")  # fmt: skip
    for version, name, sql in migrator.migration_files():
        if version <= up_to:
            cur.execute(sql)
            cur.execute("INSERT INTO water.schema_migrations VALUES (%s, %s)", (version, name))
