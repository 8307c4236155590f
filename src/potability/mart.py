"""The data mart: the only code that reads and writes the ``water.*`` tables.

Every method is one short transaction. Driver errors are turned into the typed
errors of ``potability.errors`` so callers (CLI, stages, flow, server) can tell
"run the migrations" from "the database is down" from "this row is wrong".
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import pandas as pd
import psycopg2
import psycopg2.errors
import psycopg2.extras

from potability.errors import (
    DuplicateSampleError,
    ValidationError,
)
from potability.pgowner import PgOwner
from potability.schema import FEATURE_COLUMNS, FEATURE_NAMES, LABEL, LABEL_COLUMN, text_problem

log = logging.getLogger(__name__)
T = TypeVar("T")

ROLES = ("sensor", "lab", "admin")
SAMPLE_COLUMNS = ("sample_id", "sensor_id", *FEATURE_COLUMNS, LABEL_COLUMN, "collected_at")


@dataclass
class InsertReport:
    """What became of a batch of lab rows."""

    inserted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # same sample_id, same content: skipped
    conflicts: list[str] = field(default_factory=list)  # same sample_id, other content: refused


@dataclass(frozen=True)
class TokenInfo:
    name: str
    role: str


def hash_token(token: str) -> str:
    """Tokens are stored and looked up by sha256, never in clear."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class WaterMart(PgOwner):
    """Reads and writes lab samples, API tokens, the flow watermark and the page's queries."""

    # -- lab samples ------------------------------------------------------
    def insert_samples(
        self, rows: Sequence[dict[str, Any]], added_by: str, strict: bool = False
    ) -> InsertReport:
        """Insert validated lab rows, idempotent on ``sample_id``.

        A row whose ``sample_id`` exists with identical content is a duplicate
        (skipped); with other content it is a conflict: reported, never
        overwritten, and with ``strict`` raised as ``DuplicateSampleError``.
        """
        if not rows:
            return InsertReport()
        seen: dict[str, dict[str, Any]] = {}
        repeats: list[dict[str, Any]] = []  # same sample_id twice in one batch
        for i, row in enumerate(rows):
            if not row.get("sample_id"):
                raise ValidationError(f"row {i}: sample_id is required", field="sample_id", row=i)
            if row["sample_id"] in seen:
                repeats.append(row)
            else:
                seen[row["sample_id"]] = row
        values = [
            (
                r["sample_id"],
                r.get("sensor_id"),
                *(r.get(n) for n in FEATURE_NAMES),
                int(r[LABEL]),
                r.get("collected_at"),
                added_by,
            )
            for r in seen.values()
        ]

        def work(cur) -> InsertReport:
            inserted = psycopg2.extras.execute_values(
                cur,
                f"""INSERT INTO water.water_potability
                    (sample_id, sensor_id, {", ".join(FEATURE_COLUMNS)}, potability, collected_at, added_by)
                    VALUES %s ON CONFLICT (sample_id) DO NOTHING RETURNING sample_id""",  # noqa: S608 (column names are constants)
                values,
                page_size=1000,
                fetch=True,
            )
            report = InsertReport(inserted=[r[0] for r in inserted])
            rest = [sid for sid in seen if sid not in set(report.inserted)]
            if rest:
                cur.execute(
                    f"SELECT sample_id, {', '.join(FEATURE_COLUMNS)}, potability "  # noqa: S608
                    "FROM water.water_potability WHERE sample_id = ANY(%s)",
                    (rest,),
                )
                stored = {r[0]: r[1:] for r in cur.fetchall()}
                for sid in rest:
                    same = _same(stored.get(sid), _content(seen[sid]))
                    (report.duplicates if same else report.conflicts).append(sid)
            for row in repeats:
                first = seen[row["sample_id"]]
                same = _same(_content(first), _content(row))
                (report.duplicates if same else report.conflicts).append(row["sample_id"])
            if strict and report.conflicts:
                raise DuplicateSampleError(
                    f"sample_id {', '.join(report.conflicts[:5])} already stored with other values; "
                    "lab rows are never overwritten: use a new sample_id",
                    report.conflicts,
                )
            return report

        return self._run(work)

    def samples(self, with_added_at: bool = False) -> pd.DataFrame:
        """All lab rows, sorted by ``sample_id``, with the data set's column names (and ``added_at``)."""
        extra = ["added_at"] if with_added_at else []

        def work(cur) -> pd.DataFrame:
            cur.execute(
                f"SELECT sample_id, {', '.join([*FEATURE_COLUMNS, 'potability', *extra])} "  # noqa: S608
                'FROM water.water_potability ORDER BY sample_id COLLATE "C"'
            )
            return pd.DataFrame(
                cur.fetchall(), columns=["sample_id", *FEATURE_NAMES, LABEL, *extra]
            )

        frame = self._run(work)
        for name in FEATURE_NAMES:
            frame[name] = frame[name].astype("float64")
        frame[LABEL] = frame[LABEL].astype("int64")
        return frame

    def sample_count(self) -> int:
        def work(cur) -> int:
            cur.execute("SELECT count(*) FROM water.water_potability")
            return int(cur.fetchone()[0])

        return self._run(work)

    def samples_added_since(self, watermark: int | None) -> tuple[int, int | None]:
        """Count lab rows committed after ``watermark`` (a ``commit_seq``); return it and the newest seq.

        ``commit_seq`` follows commit order (migration 003), so a row whose
        transaction commits late is never behind a watermark already stored.
        """

        def work(cur):
            cur.execute(
                "SELECT count(*), max(commit_seq) FROM water.water_potability "
                "WHERE %s::bigint IS NULL OR commit_seq > %s::bigint",
                (watermark, watermark),
            )
            return cur.fetchone()

        count, newest = self._run(work)
        return int(count), (int(newest) if newest is not None else None)

    # -- flow state -------------------------------------------------------
    def watermark(self, name: str) -> int | None:
        """The ``commit_seq`` of the newest lab row the named flow has consumed."""

        def work(cur):
            cur.execute("SELECT watermark_seq FROM water.flow_state WHERE name = %s", (name,))
            row = cur.fetchone()
            return row[0] if row else None

        return self._run(work)

    def set_watermark(
        self, name: str, watermark: int | None, data_hash: str | None, lock_hash: str | None
    ) -> None:
        self._run(
            lambda cur: cur.execute(
                """INSERT INTO water.flow_state (name, watermark_seq, watermark, data_hash, lock_hash, updated_at)
                   VALUES (%s, %s, (SELECT max(added_at) FROM water.water_potability WHERE commit_seq <= %s),
                           %s, %s, now())
                   ON CONFLICT (name) DO UPDATE SET watermark_seq = EXCLUDED.watermark_seq,
                     watermark = EXCLUDED.watermark, data_hash = EXCLUDED.data_hash,
                     lock_hash = EXCLUDED.lock_hash, updated_at = now()""",
                (name, watermark, watermark, data_hash, lock_hash),
            )
        )

    # -- inferences (written by potability.inference_store) -----------
    def inferences(self, since: datetime | None = None) -> pd.DataFrame:
        """Answered inferences (optionally since a time), oldest first, data-set names."""

        def work(cur) -> pd.DataFrame:
            cur.execute(
                f"SELECT inference_id::text, received_at, sensor_id, model_version, {', '.join(FEATURE_COLUMNS)}, "  # noqa: S608
                "probability, potable, threshold FROM water.water_inferences "
                "WHERE %s::timestamptz IS NULL OR received_at >= %s::timestamptz ORDER BY received_at",
                (since, since),
            )
            return pd.DataFrame(
                cur.fetchall(),
                columns=[
                    "inference_id",
                    "received_at",
                    "sensor_id",
                    "model_version",
                    *FEATURE_NAMES,
                    "probability",
                    "potable",
                    "threshold",
                ],
            )

        return self._run(work)

    # -- API tokens -------------------------------------------------------
    def create_token(self, name: str, role: str) -> str:
        """Create a token for ``name`` with ``role``; return it (the only time it is seen)."""
        if role not in ROLES:
            raise ValidationError(
                f"role must be one of {', '.join(ROLES)}, got {role!r}", field="role"
            )
        _check_token_name(name)
        token = "pot_" + secrets.token_urlsafe(32)
        self._run(
            lambda cur: cur.execute(
                "INSERT INTO water.api_tokens (name, role, token_sha256) VALUES (%s, %s, %s)",
                (name.strip(), role, hash_token(token)),
            )
        )
        return token

    def lookup_token(self, token: str) -> TokenInfo | None:
        """The live (not revoked) token's owner and role, or None."""

        def work(cur):
            cur.execute(
                "SELECT name, role FROM water.api_tokens WHERE token_sha256 = %s AND revoked_at IS NULL",
                (hash_token(token),),
            )
            return cur.fetchone()

        row = self._run(work)
        return TokenInfo(*row) if row else None

    def revoke_tokens(self, name: str) -> int:
        """Revoke every live token of ``name``; return how many."""
        _check_token_name(name)

        def work(cur) -> int:
            cur.execute(
                "UPDATE water.api_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL",
                (name,),
            )
            return cur.rowcount

        return self._run(work)


def _check_token_name(name: str) -> None:
    """A token's name is a sensor's id in every answer it logs: same rules as any id."""
    if not name or not name.strip():
        raise ValidationError("token name must not be empty", field="name")
    problem = text_problem(name)
    if problem:
        raise ValidationError(f"token name {problem}", field="name")


def _content(row: dict[str, Any]) -> tuple:
    return (*(row.get(n) for n in FEATURE_NAMES), int(row[LABEL]))


def _same(stored: Sequence[Any] | None, mine: Sequence[Any]) -> bool:
    if stored is None:
        return False
    for a, b in zip(stored, mine, strict=True):
        if a is None or b is None:
            if a is not b:
                return False
        elif abs(float(a) - float(b)) > 1e-9 * max(1.0, abs(float(b))):
            return False
    return True
