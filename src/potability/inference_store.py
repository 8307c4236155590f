"""The inference log's storage: answered predictions into ``water.water_inferences`` by binary COPY.

The one input is ``AnsweredBatch``: one request's answers, column by column,
as the server answered them and as a worker's journal (``serve/journal.py``)
holds them on disk. A batch whose rows have every measurement becomes COPY's
binary wire format through one numpy structured array, with no Python object
per value; a row with a missing measurement (a NULL) is encoded by itself.
``InferenceStore`` has its own connection and lock, so a COPY never makes a
token lookup or a page read wait (they use ``WaterMart``).

The hourly and histogram rollups are computed here and only here (migration
007): numpy deltas of exactly the rows the COPY inserts, added in the COPY's
transaction. A write is idempotent on the log's key: rows already stored (a
replay after a crash or an outage) are looked up first and left out of both
the COPY and the deltas, so nothing is stored or counted twice; one whose
measurements differ is no resend but a second answer for one reading, and is
refused (``ConflictingRows``), never dropped. The log's
trigger only matches lab samples. Rows that reach the table another way
(a bulk ``INSERT ... SELECT``) are rolled up by ``water.recompute_rollups``.
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
    "inference_id",
    "received_at",
    "sensor_id",
    "model_version",
    *FEATURE_COLUMNS,
    "probability",
    "potable",
    "threshold",
)
_COLUMN_LIST = ", ".join(INFERENCE_COLUMNS)
COPY_DIRECT = f"COPY water.water_inferences ({_COLUMN_LIST}) FROM STDIN WITH (FORMAT binary)"
# Which of a batch's rows are stored already (by the log's unique key, the one place that names
# it), with the measurements stored: a replay leaves them out of its COPY and its rollup deltas,
# unless they differ (a conflict, never dropped). Times cross as microseconds.
STORED_KEYS = (
    f"SELECT k.n, {', '.join(f'i.{c}' for c in FEATURE_COLUMNS)} "  # noqa: S608 (constant names)
    "FROM unnest(%s::uuid[], %s::bigint[]) WITH ORDINALITY AS k (id, us, n) "
    "JOIN water.water_inferences i ON i.inference_id = k.id "
    "AND i.received_at = timestamptz '2000-01-01 00:00:00+00' + k.us * interval '1 microsecond'"
)
# The measurements stored under given keys (a resend that differs is a conflict: serve/api.py),
# on the predict path: constant times, so the planner prunes to their partitions (a join on
# computed times, as above, would probe every day's partition).
STORED_MEASUREMENTS = (
    f"SELECT inference_id::text, received_at, {', '.join(FEATURE_COLUMNS)} "  # noqa: S608 (constant names)
    "FROM water.water_inferences "
    "WHERE received_at = ANY(%s::timestamptz[]) AND inference_id = ANY(%s::uuid[])"
)
# a replay that met rows another writer stored meanwhile looks again, this many times at most
STORE_ATTEMPTS = 3

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz on the wire: µs since this
_MICROSECOND = timedelta(microseconds=1)
_NULL = struct.pack(">i", -1)
_FLOAT = struct.Struct(">id")  # length 8, then the big-endian double
_HOUR = 3_600_000_000  # microseconds: an hour starts at a multiple of it since 2000-01-01 UTC
# The rollups (migration 007): the histogram locks and edges of the batch's versions, then its deltas.
_EDGE_COLUMNS = ", ".join(FEATURE_COLUMNS)
BEGIN_ROLLUPS = f"SELECT model_version, {_EDGE_COLUMNS} FROM water.begin_writer_rollups(%s)"  # noqa: S608 (constant names)
ADD_ROLLUPS = (
    "SELECT water.add_hourly_deltas(%s::bigint[], %s::text[], %s::text[], %s::bigint[], "
    "%s::bigint[], %s::float8[], %s::bigint[]); "
    "SELECT water.add_histogram_deltas(%s::text[], %s::bigint[], %s::text[], %s::integer[], %s::bigint[])"
)


class ConflictingRows(ValueError):
    """Rows whose key is logged already with other measurements: two answers for one reading.

    Never dropped as duplicates: nothing of the write is stored, and the spool's
    replay (``serve/spool.py``), which takes it for a refusal of the rows
    themselves, keeps each such row in quarantine.
    """


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

    def take(self, keep: np.ndarray) -> AnsweredBatch:
        """The rows where ``keep`` (a boolean mask) is true, as a batch of their own."""
        index = np.flatnonzero(keep).tolist()
        return AnsweredBatch(
            inference_ids=[self.inference_ids[i] for i in index],
            received_at=self.received_at,
            sensor_id=self.sensor_id,
            model_version=self.model_version,
            features=self.features[keep],
            probabilities=self.probabilities[keep],
            threshold=self.threshold,
            logged_at=None if self.logged_at is None else [self.logged_at[i] for i in index],
        )


def hourly_deltas(batches: Sequence[AnsweredBatch]) -> tuple[list, ...]:
    """What ``batches`` add to ``water.inference_hourly`` (``water.hourly_rollup_sql``'s aggregate).

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
    """What ``batches`` add to ``water.feature_histogram_hourly`` (``water.histogram_rollup_sql``'s).

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


def encode(batches: Iterable[AnsweredBatch]) -> tuple[bytes, int]:
    """A whole binary COPY stream (header, rows, trailer) and its row count.

    Batches are grouped by sensor and model version (the only text columns),
    so a flush of many one-row requests is still one numpy pass per sensor.
    """
    parts, count = [_HEADER], 0
    groups: dict[tuple[str, str], list[AnsweredBatch]] = {}
    for batch in batches:
        groups.setdefault((batch.sensor_id, batch.model_version), []).append(batch)
        count += len(batch)
    for (sensor_id, model_version), group in groups.items():
        parts.append(_encode_group(sensor_id, model_version, group))
    parts.append(_TRAILER)
    return b"".join(parts), count


def unstored(cur, batches: list[AnsweredBatch]) -> list[AnsweredBatch]:
    """``batches`` without the rows already in the log, nor a row a batch before names again.

    Such a row is a resend only with the same measurements; with others it is a
    second answer for one reading, and ``ConflictingRows`` names it.
    """
    ids = [str(i).lower() for b in batches for i in b.inference_ids]
    times = np.concatenate([b.microseconds() for b in batches]).tolist()
    features = np.concatenate([b.features for b in batches])
    cur.execute(STORED_KEYS, (ids, times))
    keep = np.ones(len(ids), dtype=bool)
    conflicts = []
    for n, *stored in cur.fetchall():
        keep[n - 1] = False
        if not np.array_equal(measurements(stored), features[n - 1], equal_nan=True):
            conflicts.append(n - 1)
    first: dict[tuple[str, int], int] = {}
    for k, key in enumerate(zip(ids, times, strict=True)):
        j = first.setdefault(key, k)
        if j != k:
            keep[k] = False
            if not np.array_equal(features[j], features[k], equal_nan=True):
                conflicts.append(k)
    if conflicts:
        raise ConflictingRows(_conflicts_named(batches, sorted(conflicts)))
    if keep.all():
        return batches
    out, start = [], 0
    for b in batches:
        part = keep[start : start + len(b)]
        start += len(b)
        if part.all():
            out.append(b)
        elif part.any():
            out.append(b.take(part))
    return out


def measurements(values: Sequence[float | None]) -> np.ndarray:
    """Stored measurements as the server holds them (NULL back to NaN)."""
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _conflicts_named(batches: list[AnsweredBatch], rows: list[int], shown: int = 3) -> str:
    """The conflicting rows (positions across ``batches``) by sensor, time and inference id."""
    sensors = [b.sensor_id for b in batches for _ in range(len(b))]
    ids = [i for b in batches for i in b.inference_ids]
    times = [t for b in batches for t in b.times()]
    named = "; ".join(
        f"sensor {sensors[k]!r}, read at {times[k]}, inference id {ids[k]}" for k in rows[:shown]
    )
    more = f" and {len(rows) - shown} more" if len(rows) > shown else ""
    return (
        f"{len(rows)} row(s) name a reading logged already with other measurements "
        f"(the first answer stands): {named}{more}"
    )


class InferenceStore(PgOwner):
    """Writes the inference log (its own connection: never behind a page read or a token lookup)."""

    def stored_measurements(
        self, inference_ids: Sequence[str], received_at: Sequence[datetime | str]
    ) -> dict[int, np.ndarray]:
        """The measurements logged under each key that is stored, by its position in the lists.

        Missing measurements come back as NaN, as the server holds them.
        """

        position = {
            (str(i).lower(), _timestamp(t)): n
            for n, (i, t) in enumerate(zip(inference_ids, received_at, strict=True))
        }

        def work(cur) -> dict[int, np.ndarray]:
            times = sorted({t if isinstance(t, str) else t.isoformat() for t in received_at})
            cur.execute(STORED_MEASUREMENTS, (times, sorted({i for i, _ in position})))
            found = {}
            for inference_id, at, *values in cur.fetchall():
                n = position.get((inference_id, _timestamp(at)))
                if n is not None:  # an id stored at another of the batch's times is not this key
                    found[n] = measurements(values)
            return found

        return self._run(work)

    def write(self, batches: Iterable[AnsweredBatch], fresh: bool = False) -> int:
        """Store answered inferences by COPY and roll them up; idempotent on the log's key.

        ``fresh`` batches (just answered, never written) are copied straight
        in; should one of their rows exist after all (or a batch name one
        reading twice), the write is done again without those rows. Other
        writes (a journal's replay) look up which rows are stored first. The
        hourly and histogram deltas of exactly the rows copied are added in
        the COPY's transaction (``hourly_deltas``, ``histogram_deltas``).

        Returns:
            How many rows were stored (fewer than given when some already were).

        Raises:
            ConflictingRows: a row's key is stored (or named earlier in ``batches``)
                with other measurements; nothing is stored.
        """
        batches = [b for b in batches if len(b)]
        if not batches:
            return 0

        def copy(cur, todo: list[AnsweredBatch]) -> int:
            stream, count = encode(todo)
            if not count:
                return 0
            cur.execute(BEGIN_ROLLUPS, (sorted({b.model_version for b in todo}),))
            edges = {row[0]: row[1:] for row in cur.fetchall()}
            # before the COPY, whose trigger then matches lab samples: every writer of the log
            # locks rollup rows in one order (hourly, histogram, lab matches), so two writers
            # never wait for each other crosswise (a deadlock)
            cur.execute(ADD_ROLLUPS, (*hourly_deltas(todo), *histogram_deltas(todo, edges)))
            cur.copy_expert(COPY_DIRECT, io.BytesIO(stream))
            return count

        if fresh:
            try:
                return self._run(lambda cur: copy(cur, batches))
            except psycopg2.errors.UniqueViolation:
                log.warning(
                    "inference batch already partly stored; writing it again without the duplicates"
                )
        for attempt in range(STORE_ATTEMPTS):
            try:
                return self._run(lambda cur: copy(cur, unstored(cur, batches)))
            except psycopg2.errors.UniqueViolation:  # another writer stored some meanwhile
                if attempt == STORE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")
