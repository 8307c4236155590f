"""Idempotent readings: a sensor's own ``(reading_id, read_at)`` names one log row, however often sent.

A sample that carries them is logged as ``inference_id = uuid5(NAMESPACE,
"{sensor_id}/{reading_id}")`` and ``received_at = read_at``, so a resend (a
retry after a timeout, an outbox replayed after a crash) maps to the same
``(inference_id, received_at)``: the log's duplicate handling
(``InferenceStore.write``) stores it once and the answer carries the same
``inference_id``. The sensor id is the token's name, so two sensors' reading
ids never collide.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from potability.schema import READING_FIELDS, validate_reading

# Never change it: the inference ids already stored for readings were derived from it.
NAMESPACE = uuid.UUID("d604b975-df82-4282-9f5d-e98e17be2d97")


def reading_inference_id(sensor_id: str, reading_id: str) -> str:
    """The inference id a reading is logged under, whichever request carried it."""
    return str(uuid.uuid5(NAMESPACE, f"{sensor_id}/{reading_id}"))


def split_readings(
    items: list[Any], sensor_id: str, now: datetime, max_skew_seconds: float
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
        key = validate_reading(item, index, now, max_skew_seconds) if type(item) is dict else None
        if key is None:
            samples.append(item)
            keys.append(None)
            continue
        samples.append({k: v for k, v in item.items() if k not in READING_FIELDS})
        keys.append((reading_inference_id(sensor_id, key.reading_id), key.read_at.isoformat()))
    return samples, keys
