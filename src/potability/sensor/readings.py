"""A sensor's readings: its own ``(reading_id, read_at)`` names one log row, however often sent.

The one place for the concept: the fields and their check (used by the client before it sends
and by the server when it answers), their OpenAPI schema, and the inference id a reading gets.

A sample that carries them is logged as ``inference_id = uuid5(NAMESPACE,
"{sensor_id}/{reading_id}")`` and ``received_at = read_at``, so a resend (a
retry after a timeout, an outbox replayed after a crash) maps to the same
``(inference_id, received_at)``: the log's duplicate handling
(``InferenceStore.write``) stores it once and the answer carries the same
``inference_id``. The sensor id is the token's name, so two sensors' reading
ids never collide: both may hold "/", so the reading id's "%" and "/" are
escaped first (``reading_inference_id``), which leaves the last "/" the one
between the two.

A reading's time must lie within ``[now - max_age, now + max_skew]``: no
further ahead than a wrong clock, no further back than an outbox holds
readings, so a backdated row cannot rewrite the public page's history.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from potability.schema import MAX_ID_LENGTH, FieldError, parse_timestamp, validate_features

READING_FIELDS = ("reading_id", "read_at")
READING_ID_PATTERN = f"^[ -~]{{1,{MAX_ID_LENGTH}}}$"  # printable ASCII, used byte for byte
_READING_ID = re.compile(READING_ID_PATTERN, re.ASCII)


@dataclass(frozen=True)
class ReadingKey:
    reading_id: str
    read_at: datetime  # UTC


def validate_reading(
    obj: dict[str, Any],
    index: int | None,
    now: datetime,
    max_skew_seconds: float,
    max_age_seconds: float = math.inf,
) -> ReadingKey | None:
    """Check a sample's ``reading_id`` and ``read_at`` (both or neither); None when neither.

    ``read_at`` must be an RFC 3339 date-time with an offset, at most
    ``max_skew_seconds`` after ``now`` (a clock that far ahead is wrong, and
    its readings would sort after everything real) and at most
    ``max_age_seconds`` before it (older readings would rewrite the hours the
    public page has shown).
    """
    reading_id, read_at = obj.get("reading_id"), obj.get("read_at")
    if reading_id is None and read_at is None:
        return None
    if reading_id is None:
        raise FieldError("reading_id", "is required with read_at", index)
    if not isinstance(reading_id, str) or not _READING_ID.fullmatch(reading_id):
        shown = reading_id[:40] if isinstance(reading_id, str) else type(reading_id).__name__
        raise FieldError(
            "reading_id",
            f"must be 1–{MAX_ID_LENGTH} printable ASCII characters, got {shown!r}",
            index,
        )
    if read_at is None:
        raise FieldError("read_at", "is required with reading_id (RFC 3339, with offset)", index)
    parsed = parse_timestamp(read_at, index, strict=True, field="read_at")
    ahead = (parsed - now).total_seconds()
    if ahead > max_skew_seconds:
        raise FieldError(
            "read_at",
            f"is {ahead:.0f} s after the server's clock (at most {max_skew_seconds:g} s); "
            "check the sensor's clock",
            index,
        )
    if -ahead > max_age_seconds:
        raise FieldError(
            "read_at",
            f"is {-ahead:.0f} s before the server's clock (at most {max_age_seconds:g} s): "
            "too old to log",
            index,
        )
    return ReadingKey(reading_id, parsed)


def json_schema_reading() -> dict[str, Any]:
    """The reading fields of a sensor sample (for OpenAPI): properties and their pairing."""
    return {
        "properties": {
            "reading_id": {
                "type": "string",
                "pattern": READING_ID_PATTERN,
                "description": "the sensor's own id for this reading; sending it again stores "
                "it once and answers with the same inference_id",
            },
            "read_at": {
                "type": "string",
                "format": "date-time",
                "description": "when the sensor read it (RFC 3339); logged as received_at; "
                "400 when too far after the server's clock or too long before it "
                "(reading_max_skew_seconds, reading_max_age_seconds)",
            },
        },
        "dependentRequired": {"reading_id": ["read_at"], "read_at": ["reading_id"]},
    }


# Never change it: the inference ids already stored for readings were derived from it.
NAMESPACE = uuid.UUID("d604b975-df82-4282-9f5d-e98e17be2d97")


def reading_inference_id(sensor_id: str, reading_id: str) -> str:
    """The inference id a reading is logged under, whichever request carried it.

    The name is ``"{sensor_id}/{reading_id}"`` with the reading id's "%" and
    "/" percent-escaped: the reading part then holds no "/", so the last one
    splits the pair and two pairs never share a name (sensor ``plant`` with
    reading ``7/r1`` and sensor ``plant/7`` with ``r1`` did). A reading id
    without "%" or "/" keeps the id it always had.
    """
    escaped = reading_id.replace("%", "%25").replace("/", "%2F")
    return str(uuid.uuid5(NAMESPACE, f"{sensor_id}/{escaped}"))


def split_readings(
    items: list[Any],
    sensor_id: str,
    now: datetime,
    max_skew_seconds: float,
    max_age_seconds: float = math.inf,
) -> tuple[list[Any], list[tuple[str, str] | None] | None]:
    """Take the reading fields off each sample.

    Returns:
        The samples with only their measurements left, and per sample its
        ``(inference_id, received_at)`` or None (no reading id: a fresh id and
        the server's clock); the second is None when no sample has reading fields.
    """
    if not any(type(item) is dict and not item.keys().isdisjoint(READING_FIELDS) for item in items):
        return items, None
    samples: list[Any] = []
    keys: list[tuple[str, str] | None] = []
    for index, item in enumerate(items):
        # a batch may name one reading twice (a resend joined to new readings): same id, stored once
        key = (
            validate_reading(item, index, now, max_skew_seconds, max_age_seconds)
            if type(item) is dict
            else None
        )
        if key is None:
            samples.append(item)
            keys.append(None)
            continue
        samples.append({k: v for k, v in item.items() if k not in READING_FIELDS})
        keys.append((reading_inference_id(sensor_id, key.reading_id), key.read_at.isoformat()))
    return samples, keys


@dataclass(frozen=True)
class Reading:
    """One measurement as the sensor took it: its own id and time, fixed at creation."""

    reading_id: str
    read_at: str  # RFC 3339, UTC
    features: dict[str, float | None]

    def body(self) -> dict[str, Any]:
        return {**self.features, "reading_id": self.reading_id, "read_at": self.read_at}


def new_reading(
    features: Mapping[str, Any],
    read_at: datetime | str | None = None,
    reading_id: str | None = None,
    index: int | None = None,
) -> Reading:
    """A reading checked as the server checks it (``FieldError`` names the field).

    Args:
        features: the measurements by the data set's names; numbers, numeric
            text, or None / absent for missing.
        read_at: when it was read (aware datetime or RFC 3339); default now.
        reading_id: the sensor's own id; default a new UUID.
        index: a position (batch index or CSV line) to name in errors.
    """
    now = datetime.now(UTC)
    if read_at is None:
        read_at = now
    if isinstance(read_at, datetime):
        read_at = read_at.isoformat()
    key = validate_reading(
        {"reading_id": reading_id or str(uuid.uuid4()), "read_at": read_at}, index, now, math.inf
    )
    values = validate_features(dict(features), index)
    return Reading(key.reading_id, key.read_at.isoformat(), values)
