"""The inference log's storage: answered predictions into ``water.water_inferences`` by binary COPY.

The server hands over one ``AnsweredBatch`` per request (columns, not rows);
a batch whose rows have every measurement becomes COPY's binary wire format
through one numpy structured array, with no Python object per value. Rows
with a missing measurement (a NULL) and spooled rows (dicts) are encoded one
by one. ``InferenceStore`` has its own connection and lock, so a COPY never
makes a token lookup or a page read wait (they use ``WaterMart``).

The server's fresh batches are rolled up here too (migration 006): the
hourly and histogram deltas come from the same columns in numpy, in the
COPY's transaction, so the rollup trigger only matches lab samples for them
(binning every row and feature in SQL was most of its cost per statement).
"""

from __future__ import annotations

import io
import logging
import struct
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg2.errors

from potability.pgowner import PgOwner
from potability.schema import FEATURE_COLUMNS

log = logging.getLogger(__name__)

INFERENCE_COLUMNS = (
    "inference_id", "received_at", "sensor_id", "model_version", *FEATURE_COLUMNS,
    "probability", "potable", "threshold",
)  # fmt: skip
_COLUMN_LIST = ", ".join(INFERENCE_COLUMNS)
COPY_DIRECT = f"COPY water.water_inferences ({_COLUMN_LIST}) FROM STDIN WITH (FORMAT binary)"
# A replay (or a fresh batch that met a row already stored) goes through a staging table, so
# the insert can skip what is there. The one place that names the log's unique key.
STAGE_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS inference_stage "
    "(LIKE water.water_inferences INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
)
COPY_STAGE = f"COPY inference_stage ({_COLUMN_LIST}) FROM STDIN WITH (FORMAT binary)"
INSERT_FROM_STAGE = (
    "INSERT INTO water.water_inferences SELECT * FROM inference_stage "
    "ON CONFLICT (inference_id, received_at) DO NOTHING"
)

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz on the wire: µs since this
_MICROSECOND = timedelta(microseconds=1)
_NULL = struct.pack(">i", -1)
_FLOAT = struct.Struct(">id")  # length 8, then the big-endian double
_HOUR = 3_600_000_000  # microseconds: an hour starts at a multiple of it since 2000-01-01 UTC
# The writer's own rollups (migration 006): the trigger leaves hourly and histogram to it.
_EDGE_COLUMNS = ", ".join(FEATURE_COLUMNS)
BEGIN_ROLLUPS = f"SELECT model_version, {_EDGE_COLUMNS} FROM water.begin_writer_rollups(%s)"  # noqa: S608 (constant names)
ADD_ROLLUPS = (
    "SELECT water.add_hourly_deltas(%s::bigint[], %s::text[], %s::text[], %s::bigint[], "
    "%s::bigint[], %s::float8[], %s::bigint[]); "
    "SELECT water.add_histogram_deltas(%s::text[], %s::bigint[], %s::text[], %s::integer[], %s::bigint[])"
)


@dataclass(frozen=True)
class AnsweredBatch:
    """One request's answers, column by column: what the log writer stores.

    ``features`` is the (n, 9) float64 matrix the model saw (NaN = missing,
    stored as NULL); ``inference_ids`` the ids the client was given.
    """

    inference_ids: Sequence[str]
    received_at: datetime
    sensor_id: str
    model_version: str
    features: np.ndarray
    probabilities: np.ndarray
    threshold: float
    # per row, when a sensor's own reading carries its time (potability/sensor/readings.py); else received_at
    logged_at: Sequence[datetime | str] | None = None

    def __len__(self) -> int:
        return len(self.inference_ids)

    @property
    def potable(self) -> np.ndarray:
        """Each answer's decision as the client was told it; the log and its rollups store this."""
        return self.probabilities >= self.threshold

    def times(self) -> list[str]:
        """Each row's ``received_at`` as stored, in ISO 8601."""
        if self.logged_at is None:
            return [self.received_at.isoformat()] * len(self)
        return [t if isinstance(t, str) else t.isoformat() for t in self.logged_at]

    def microseconds(self) -> np.ndarray:
        """Each row's ``received_at`` on COPY's wire: microseconds since 2000-01-01 UTC."""
        if self.logged_at is None:
            return np.full(len(self), _timestamp(self.received_at), dtype=np.int64)
        return np.array([_timestamp(t) for t in self.logged_at], dtype=np.int64)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per answer, keyed by column (the spool's record); None for a missing value."""
        rows = []
        for inference_id, received, features, probability, potable in zip(
            self.inference_ids,
            self.times(),
            self.features.tolist(),
            self.probabilities.tolist(),
            self.potable.tolist(),
            strict=True,
        ):
            row = {"inference_id": inference_id, "received_at": received}
            row["sensor_id"], row["model_version"] = self.sensor_id, self.model_version
            pairs = zip(FEATURE_COLUMNS, features, strict=True)
            row.update((column, None if v != v else v) for column, v in pairs)
            row["probability"], row["potable"] = probability, potable
            row["threshold"] = self.threshold
            rows.append(row)
        return rows


def hourly_deltas(batches: Sequence[AnsweredBatch]) -> tuple[list, ...]:
    """What ``batches`` add to ``water.inference_hourly``, as the trigger would count them.

    Returns:
        Columns for ``water.add_hourly_deltas``: hour (microseconds since
        2000-01-01 UTC), sensor, model version, answers, potable, sum of
        probabilities, newest answer (microseconds), one entry per hour,
        sensor and version.
    """
    groups: dict[tuple[str, str], list[AnsweredBatch]] = {}
    for b in batches:
        groups.setdefault((b.sensor_id, b.model_version), []).append(b)
    columns: tuple[list, ...] = ([], [], [], [], [], [], [])
    for (sensor_id, model_version), group in groups.items():
        received = np.concatenate([b.microseconds() for b in group])
        probabilities = np.concatenate([b.probabilities for b in group]).astype(np.float64)
        hours, inverse = np.unique(received // _HOUR, return_inverse=True)
        newest = np.full(len(hours), np.iinfo(np.int64).min)
        np.maximum.at(newest, inverse, received)
        answered_potable = np.concatenate([b.potable for b in group])
        potable = np.bincount(inverse, weights=answered_potable, minlength=len(hours))
        for column, values in zip(
            columns,
            (
                (hours * _HOUR).tolist(),
                [sensor_id] * len(hours),
                [model_version] * len(hours),
                np.bincount(inverse, minlength=len(hours)).tolist(),
                potable.astype(np.int64).tolist(),
                np.bincount(inverse, weights=probabilities, minlength=len(hours)).tolist(),
                newest.tolist(),
            ),
            strict=True,
        ):
            column.extend(values)
    return columns


def histogram_deltas(
    batches: Sequence[AnsweredBatch], edges: dict[str, Sequence[Sequence[float]]]
) -> tuple[list, ...]:
    """What ``batches`` add to ``water.feature_histogram_hourly``, as the trigger would count them.

    ``edges`` maps a model version to its nine edge arrays (``FEATURE_COLUMNS``
    order, as ``water.feature_edges`` holds them); a version without is not
    counted. A value's bucket is ``searchsorted(edges, x, side="right")``: the
    number of edges <= x, which is Postgres' ``width_bucket(x, edges)``, also
    for no edges (0) and ±inf; a missing value (NaN, stored as NULL) is -1.

    Returns:
        Columns for ``water.add_histogram_deltas``: model version, hour
        (microseconds since 2000-01-01 UTC), feature (column), bucket, answers.
    """
    groups: dict[str, list[AnsweredBatch]] = {}
    for b in batches:
        if b.model_version in edges:
            groups.setdefault(b.model_version, []).append(b)
    columns: tuple[list, ...] = ([], [], [], [], [])
    for model_version, group in groups.items():
        hours, inverse = np.unique(
            np.concatenate([b.microseconds() for b in group]) // _HOUR, return_inverse=True
        )
        features = np.concatenate([b.features for b in group]).astype(np.float64)
        for j, column in enumerate(FEATURE_COLUMNS):
            bounds = np.asarray(edges[model_version][j], dtype=np.float64)
            values = features[:, j]
            buckets = np.searchsorted(bounds, values, side="right")
            buckets[np.isnan(values)] = -1
            slots = len(bounds) + 2  # buckets -1 .. len(bounds)
            counts = np.bincount(inverse * slots + buckets + 1, minlength=len(hours) * slots)
            found = np.flatnonzero(counts)
            columns[0].extend([model_version] * len(found))
            columns[1].extend((hours[found // slots] * _HOUR).tolist())
            columns[2].extend([column] * len(found))
            columns[3].extend((found % slots - 1).tolist())
            columns[4].extend(counts[found].tolist())
    return columns


def _text(value: Any) -> bytes:
    data = str(value).encode("utf-8")
    return struct.pack(">i", len(data)) + data


def _timestamp(value: datetime | str | int) -> int:
    """Microseconds since 2000-01-01 UTC (an int is taken as that already)."""
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _PG_EPOCH) // _MICROSECOND


def _float_or_null(value: Any) -> bytes:
    if value is None:
        return _NULL
    number = float(value)
    return _NULL if number != number else _FLOAT.pack(8, number)


def encode_row(row: Sequence[Any]) -> bytes:
    """One row (values in ``INFERENCE_COLUMNS`` order) in COPY's binary format."""
    inference_id, received_at, sensor_id, model_version = row[:4]
    *features, probability, potable, threshold = row[4:]
    return b"".join(
        (
            struct.pack(">hi", len(INFERENCE_COLUMNS), 16),
            uuid.UUID(str(inference_id)).bytes,
            struct.pack(">iq", 8, _timestamp(received_at)),
            _text(sensor_id),
            _text(model_version),
            *(_float_or_null(v) for v in features),
            _FLOAT.pack(8, float(probability)),
            struct.pack(">i?", 1, bool(potable)),
            _FLOAT.pack(8, float(threshold)),
        )
    )


def _layout(constant_bytes: int) -> np.dtype:
    """One complete row on the wire; ``constant`` is the sensor and model version, as text."""
    return np.dtype(
        [
            ("columns", ">i2"),
            ("id_len", ">i4"),
            ("id", "V16"),
            ("received_len", ">i4"),
            ("received", ">i8"),
            ("constant", f"V{constant_bytes}"),
            ("features", [("len", ">i4"), ("value", ">f8")], (len(FEATURE_COLUMNS),)),
            ("p_len", ">i4"),
            ("p", ">f8"),
            ("potable_len", ">i4"),
            ("potable", "u1"),
            ("t_len", ">i4"),
            ("t", ">f8"),
        ]
    )


def _encode_group(sensor_id: str, model_version: str, group: list[AnsweredBatch]) -> bytes:
    """The rows of every batch from one sensor and model version, in one numpy pass.

    Rows with every measurement present go through one structured array (a
    single-row request costs no more than its share of it); a row with a
    missing measurement, a NULL on the wire, is encoded by itself.
    """
    lengths = [len(b) for b in group]
    ids = [i for b in group for i in b.inference_ids]
    received = np.concatenate([b.microseconds() for b in group])
    features = np.concatenate([b.features for b in group])
    probabilities = np.concatenate([b.probabilities for b in group])
    thresholds = np.repeat([b.threshold for b in group], lengths).astype(np.float64)
    potable = np.concatenate([b.potable for b in group])
    complete = ~np.isnan(features).any(axis=1)
    parts = []
    for i in np.flatnonzero(~complete).tolist():
        row = (
            ids[i],
            int(received[i]),
            sensor_id,
            model_version,
            *features[i].tolist(),
            float(probabilities[i]),
            bool(potable[i]),
            float(thresholds[i]),
        )
        parts.append(encode_row(row))
    if complete.all():
        kept = ids
    else:
        kept = [i for i, keep in zip(ids, complete.tolist(), strict=True) if keep]
        received, features = received[complete], features[complete]
        probabilities, thresholds = probabilities[complete], thresholds[complete]
        potable = potable[complete]
    constant = _text(sensor_id) + _text(model_version)
    out = np.empty(len(kept), dtype=_layout(len(constant)))
    out["columns"], out["id_len"], out["received_len"] = len(INFERENCE_COLUMNS), 16, 8
    out["id"] = np.frombuffer(bytes.fromhex("".join(kept).replace("-", "")), dtype="V16")
    out["received"] = received
    out["constant"] = np.frombuffer(constant, dtype=f"V{len(constant)}")[0]
    out["features"]["len"], out["features"]["value"] = 8, features
    out["p_len"], out["p"] = 8, probabilities
    out["potable_len"], out["potable"] = 1, potable
    out["t_len"], out["t"] = 8, thresholds
    parts.append(out.tobytes())
    return b"".join(parts)


def encode(items: Iterable[AnsweredBatch | dict[str, Any] | Sequence[Any]]) -> tuple[bytes, int]:
    """A whole binary COPY stream (header, rows, trailer) and its row count.

    Batches are grouped by sensor and model version (the only text columns),
    so a flush of many one-row requests is still one numpy pass per sensor.
    """
    parts, count = [_HEADER], 0
    groups: dict[tuple[str, str], list[AnsweredBatch]] = {}
    for item in items:
        if isinstance(item, AnsweredBatch):
            groups.setdefault((item.sensor_id, item.model_version), []).append(item)
            count += len(item)
        else:  # a dict keyed by column (the spool) or a row in INFERENCE_COLUMNS order
            row = [item.get(c) for c in INFERENCE_COLUMNS] if isinstance(item, dict) else item
            parts.append(encode_row(row))
            count += 1
    for (sensor_id, model_version), group in groups.items():
        parts.append(_encode_group(sensor_id, model_version, group))
    parts.append(_TRAILER)
    return b"".join(parts), count


class InferenceStore(PgOwner):
    """Writes the inference log (its own connection: never behind a page read or a token lookup)."""

    def write(
        self, items: Iterable[AnsweredBatch | dict[str, Any] | Sequence[Any]], fresh: bool = False
    ) -> int:
        """Store answered inferences by COPY; idempotent on the log's key (a replay never doubles).

        ``items`` are ``AnsweredBatch``es (the server), dicts keyed by column
        (spool replay) or rows in ``INFERENCE_COLUMNS`` order. ``fresh`` rows
        (just answered, never written) are copied straight into the table,
        which halves Postgres' work; should one exist after all (or a batch
        name one reading twice), the batch is written again through the
        staging table. Fresh ``AnsweredBatch``es are rolled up here, in the
        COPY's transaction (``hourly_deltas``, ``histogram_deltas``); every
        other write is rolled up by the log's trigger.

        Returns:
            How many rows were stored (fewer than given when some already were).
        """
        items = list(items)
        stream, count = encode(items)
        if not count:
            return 0
        # The server's batches: rolled up here, not by the trigger (only when all of them are, so
        # the trigger's setting covers exactly this COPY). The staged path leaves it to the
        # trigger, which counts only the rows the insert did not skip.
        by_writer = fresh and all(isinstance(item, AnsweredBatch) for item in items)
        hourly = hourly_deltas(items) if by_writer else None

        def direct(cur) -> int:
            if not by_writer:
                cur.copy_expert(COPY_DIRECT, io.BytesIO(stream))
                return count
            cur.execute(BEGIN_ROLLUPS, (sorted({b.model_version for b in items}),))
            edges = {row[0]: row[1:] for row in cur.fetchall()}
            # before the COPY, whose trigger then matches lab samples: every writer of the log
            # locks rollup rows in the trigger's order (hourly, histogram, lab matches), so two
            # writers never wait for each other crosswise (a deadlock)
            cur.execute(ADD_ROLLUPS, (*hourly, *histogram_deltas(items, edges)))
            cur.copy_expert(COPY_DIRECT, io.BytesIO(stream))
            return count

        def staged(cur) -> int:
            cur.execute(STAGE_TABLE)
            cur.copy_expert(COPY_STAGE, io.BytesIO(stream))
            cur.execute(INSERT_FROM_STAGE)
            return cur.rowcount

        if fresh:
            try:
                return self._run(direct)
            except psycopg2.errors.UniqueViolation:
                log.warning(
                    "inference batch already partly stored; writing it again without the duplicates"
                )
        return self._run(staged)
