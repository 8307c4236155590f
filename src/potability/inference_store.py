"""The inference log's storage: answered predictions into ``water.water_inferences`` by binary COPY.

The server hands over one ``AnsweredBatch`` per request (columns, not rows);
a batch whose rows have every measurement becomes COPY's binary wire format
through one numpy structured array, with no Python object per value. Rows
with a missing measurement (a NULL) and spooled rows (dicts) are encoded one
by one. ``InferenceStore`` has its own connection and lock, so a COPY never
makes a token lookup or a page read wait (they use ``WaterMart``).
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
    "ON CONFLICT (inference_id) DO NOTHING"
)

_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)  # signature, flags, no extension
_TRAILER = struct.pack(">h", -1)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # timestamptz on the wire: µs since this
_MICROSECOND = timedelta(microseconds=1)
_NULL = struct.pack(">i", -1)
_FLOAT = struct.Struct(">id")  # length 8, then the big-endian double


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

    def __len__(self) -> int:
        return len(self.inference_ids)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per answer, keyed by column (the spool's record); None for a missing value."""
        received = self.received_at.isoformat()
        rows = []
        for inference_id, features, probability in zip(
            self.inference_ids, self.features.tolist(), self.probabilities.tolist(), strict=True
        ):
            row = {"inference_id": inference_id, "received_at": received}
            row["sensor_id"], row["model_version"] = self.sensor_id, self.model_version
            pairs = zip(FEATURE_COLUMNS, features, strict=True)
            row.update((column, None if v != v else v) for column, v in pairs)
            row["probability"], row["potable"] = probability, probability >= self.threshold
            row["threshold"] = self.threshold
            rows.append(row)
        return rows


def _text(value: Any) -> bytes:
    data = str(value).encode("utf-8")
    return struct.pack(">i", len(data)) + data


def _timestamp(value: datetime | str) -> int:
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


def _complete_rows(batch: AnsweredBatch, take: np.ndarray) -> bytes:
    """The rows ``take`` selects (every measurement present), encoded in one numpy pass.

    Within one batch only the id, the nine measurements and the probability
    vary; the timestamp, sensor and model version are one run of bytes.
    """
    n = int(take.sum())
    constant = (
        struct.pack(">iq", 8, _timestamp(batch.received_at))
        + _text(batch.sensor_id)
        + _text(batch.model_version)
    )
    layout = np.dtype(
        [
            ("columns", ">i2"),
            ("id_len", ">i4"),
            ("id", "V16"),
            ("constant", f"V{len(constant)}"),
            ("features", [("len", ">i4"), ("value", ">f8")], (len(FEATURE_COLUMNS),)),
            ("p_len", ">i4"),
            ("p", ">f8"),
            ("potable_len", ">i4"),
            ("potable", "u1"),
            ("t_len", ">i4"),
            ("t", ">f8"),
        ]
    )
    out = np.empty(n, dtype=layout)
    out["columns"] = len(INFERENCE_COLUMNS)
    out["id_len"] = 16
    ids = [i for i, keep in zip(batch.inference_ids, take.tolist(), strict=True) if keep]
    out["id"] = np.frombuffer(bytes.fromhex("".join(ids).replace("-", "")), dtype="V16")
    out["constant"] = np.frombuffer(constant, dtype=f"V{len(constant)}")[0]
    out["features"]["len"] = 8
    out["features"]["value"] = batch.features[take]
    probabilities = batch.probabilities[take]
    out["p_len"], out["p"] = 8, probabilities
    out["potable_len"], out["potable"] = 1, probabilities >= batch.threshold
    out["t_len"], out["t"] = 8, batch.threshold
    return out.tobytes()


def encode(items: Iterable[AnsweredBatch | dict[str, Any]]) -> tuple[bytes, int]:
    """A whole binary COPY stream (header, rows, trailer) and its row count."""
    parts, count = [_HEADER], 0
    for item in items:
        if isinstance(item, AnsweredBatch):
            complete = ~np.isnan(item.features).any(axis=1)
            if complete.any():
                parts.append(_complete_rows(item, complete))
            for index in np.flatnonzero(~complete).tolist():  # a missing value: NULL, row by row
                parts.append(encode_row(_batch_row(item, index)))
            count += len(item)
        else:
            parts.append(encode_row([item.get(c) for c in INFERENCE_COLUMNS]))
            count += 1
    parts.append(_TRAILER)
    return b"".join(parts), count


def _batch_row(batch: AnsweredBatch, index: int) -> tuple:
    """Row ``index`` of a batch in ``INFERENCE_COLUMNS`` order (NaN stays NaN: NULL when encoded)."""
    probability = float(batch.probabilities[index])
    head = (batch.inference_ids[index], batch.received_at, batch.sensor_id, batch.model_version)
    tail = (probability, probability >= batch.threshold, batch.threshold)
    return (*head, *batch.features[index].tolist(), *tail)


class InferenceStore(PgOwner):
    """Writes the inference log (its own connection: never behind a page read or a token lookup)."""

    def write(self, items: Iterable[AnsweredBatch | dict[str, Any]], fresh: bool = False) -> int:
        """Store answered inferences by COPY; idempotent on the log's key (a replay never doubles).

        ``items`` are ``AnsweredBatch``es (the server) or dicts keyed by column
        (spool replay). ``fresh`` rows (just answered, never written) are copied
        straight into the table, which halves Postgres' work; should one exist
        after all, the batch is written again through the staging table.

        Returns:
            How many rows were stored (fewer than given when some already were).
        """
        stream, count = encode(items)
        if not count:
            return 0

        def direct(cur) -> int:
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
