"""A sensor's readings on disk until the server has answered them (``PotabilityClient.flush``).

One SQLite file per directory, written with ``synchronous=FULL`` so a reading
is on disk before ``enqueue`` returns and survives a power cut. A reading
keeps the id and time it was made with, so sending it again after a crash
between the answer and ``remove`` is harmless: the server logs it once.
Readings the server refuses move to ``rejected`` with the reason, never
deleted, so an operator can see and fix them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from potability.sensor.readings import Reading

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    reading_id TEXT NOT NULL UNIQUE,
    read_at    TEXT NOT NULL,
    features   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected (
    reading_id  TEXT NOT NULL,
    read_at     TEXT NOT NULL,
    features    TEXT NOT NULL,
    reason      TEXT NOT NULL,
    rejected_at TEXT NOT NULL
);
"""


class Outbox:
    def __init__(self, directory: Path):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / "outbox.sqlite3"
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)

    def add(self, readings: Sequence[Reading]) -> int:
        """Keep readings (one transaction); a reading id already waiting is kept as it was."""
        rows = [(r.reading_id, r.read_at, json.dumps(r.features)) for r in readings]
        with self._lock, self._db:
            before = self._db.total_changes
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR IGNORE INTO pending (reading_id, read_at, features) VALUES (?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def oldest(self, limit: int) -> list[Reading]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reading_id, read_at, features FROM pending ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Reading(rid, at, json.loads(features)) for rid, at, features in rows]

    def remove(self, reading_ids: Sequence[str]) -> None:
        """Forget answered readings."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "DELETE FROM pending WHERE reading_id = ?", [(i,) for i in reading_ids]
            )

    def reject(self, reading: Reading, reason: str) -> None:
        """Move a reading the server refused out of the way, keeping it and the reason."""
        now = datetime.now(UTC).isoformat()
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO rejected VALUES (?, ?, ?, ?, ?)",
                (reading.reading_id, reading.read_at, json.dumps(reading.features), reason, now),
            )
            self._db.execute("DELETE FROM pending WHERE reading_id = ?", (reading.reading_id,))

    def rejected(self) -> list[tuple[Reading, str]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT reading_id, read_at, features, reason FROM rejected ORDER BY rowid"
            ).fetchall()
        return [(Reading(rid, at, json.loads(f)), reason) for rid, at, f, reason in rows]

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM pending").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
