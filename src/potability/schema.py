"""The nine measurements: names, units and the physical bounds that validation enforces.

This table is the single source for input validation (server, CSV import) and
for the OpenAPI document, so the two can never disagree. CSV files and JSON
bodies use the data set's own names (``Hardness``); SQL uses lower case.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import chain
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Feature:
    name: str  # as in the data set and JSON bodies
    unit: str
    low: float  # physical bounds, inclusive
    high: float

    @property
    def column(self) -> str:
        return self.name.lower()


# Bounds: what any plausible water sample can hold (DATA.md "Physical bounds");
# wide enough for the real data's extremes, narrow enough to catch unit mistakes.
FEATURES: tuple[Feature, ...] = (
    Feature("ph", "pH", 0.0, 14.0),
    Feature("Hardness", "mg/L", 0.0, 2_000.0),
    Feature("Solids", "ppm", 0.0, 100_000.0),
    Feature("Chloramines", "ppm", 0.0, 50.0),
    Feature("Sulfate", "mg/L", 0.0, 5_000.0),
    Feature("Conductivity", "μS/cm", 0.0, 5_000.0),
    Feature("Organic_carbon", "ppm", 0.0, 1_000.0),
    Feature("Trihalomethanes", "μg/L", 0.0, 2_000.0),
    Feature("Turbidity", "NTU", 0.0, 1_000.0),
)
FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)
FEATURE_COLUMNS: tuple[str, ...] = tuple(f.column for f in FEATURES)
LABEL = "Potability"
LABEL_COLUMN = "potability"
SAMPLE_FIELDS = ("sample_id", "sensor_id", "collected_at")
MAX_ID_LENGTH = 200


class FieldError(ValueError):
    """One bad value: which field (and batch index or CSV row), and what is wrong."""

    def __init__(self, field: str | None, message: str, index: int | None = None):
        self.field = field
        self.index = index
        self.message = message
        where = ""
        if index is not None:
            where += f"[{index}]"
        if field is not None:
            where += f"{'.' if where else ''}{field}"
        super().__init__(f"{where}: {message}" if where else message)


def _number(field: str, value: Any, index: int | None, strict: bool = False) -> float | None:
    """Turn one JSON/CSV value into a float or None (missing), or raise FieldError.

    ``strict`` (JSON bodies): a number or null, as the OpenAPI document says;
    otherwise (CSV cells) text that reads as a number, and empty text as missing.
    """
    if value is None:
        return None
    if isinstance(value, bool) or (strict and isinstance(value, str)):
        raise FieldError(field, f"must be a number or null, got {value!r}", index)
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        try:
            number = float(text)
        except ValueError:
            raise FieldError(field, f"must be a number, got {value!r}", index) from None
    elif isinstance(value, (int, float)):
        try:
            number = float(value)
        except OverflowError:
            raise FieldError(field, "is too large to be a measurement", index) from None
    else:
        raise FieldError(field, f"must be a number, got {type(value).__name__}", index)
    if not math.isfinite(number):
        raise FieldError(field, f"must be a finite number, got {value!r}", index)
    return number


def validate_features(
    obj: dict[str, Any],
    index: int | None = None,
    extra_fields: tuple[str, ...] = (),
    strict: bool = False,
) -> dict[str, float | None]:
    """Check one sample's measurements against the physical bounds.

    Args:
        obj: the sample, keyed by the data set's names; null or absent means missing.
        index: position in a batch (or CSV row number) to name in errors.
        extra_fields: other keys the caller accepts (anything else is refused).
        strict: JSON types only (numbers or null), as the OpenAPI document says.

    Returns:
        The nine features by data-set name, each a float or None.
    """
    if not isinstance(obj, dict):
        raise FieldError(None, f"a sample must be a JSON object, got {type(obj).__name__}", index)
    allowed = set(FEATURE_NAMES) | set(extra_fields)
    unknown = sorted(k for k in obj if k not in allowed)
    if unknown:
        raise FieldError(
            unknown[0], f"unknown field; expected some of {', '.join(FEATURE_NAMES)}", index
        )
    values: dict[str, float | None] = {}
    for feature in FEATURES:
        number = _number(feature.name, obj.get(feature.name), index, strict)
        if number is not None and not feature.low <= number <= feature.high:
            raise FieldError(
                feature.name,
                f"{number:g} {feature.unit} is outside the physical range {feature.low:g}–{feature.high:g}",
                index,
            )
        values[feature.name] = number
    if all(v is None for v in values.values()):
        raise FieldError(None, "every measurement is missing; send at least one", index)
    return values


_FEATURE_SET = frozenset(FEATURE_NAMES)
_ALL_FEATURES = operator.itemgetter(*FEATURE_NAMES)
_PLAIN_NUMBERS = frozenset({float, int, type(None)})
_LOW = np.array([f.low for f in FEATURES])
_HIGH = np.array([f.high for f in FEATURES])


def fast_feature_matrix(items: list[Any]) -> np.ndarray | None:
    """The hot path of validation: a batch of plain, valid samples as a float64 matrix (NaN = missing).

    Returns None as soon as anything is unusual (a string, an unknown key, a
    value out of bounds, a sample with nothing in it); the caller then runs
    ``validate_features`` per sample, which names the field. Both paths accept
    exactly the same valid inputs. JSON must be parsed with NaN/Infinity
    literals kept as strings, so a NaN here can only mean null or absent.
    """
    if set(map(type, items)) != {dict}:
        return None
    try:
        # the usual sensor payload names all nine: nine keys, each found, is exactly the nine
        if set(map(len, items)) != {len(FEATURE_NAMES)}:
            raise KeyError("a sample leaves some measurements out")
        values = list(chain.from_iterable(map(_ALL_FEATURES, items)))
    except KeyError:
        if not all(map(_FEATURE_SET.issuperset, items)):
            return None
        values = [item.get(name) for item in items for name in FEATURE_NAMES]
    if not set(map(type, values)) <= _PLAIN_NUMBERS:  # bool, str, list...: the validator says which
        return None
    try:
        X = np.array(values, dtype=np.float64).reshape(len(items), len(FEATURE_NAMES))
    except (OverflowError, ValueError):
        return None
    missing = np.isnan(X)
    if np.isinf(X).any() or (X < _LOW).any() or (X > _HIGH).any() or missing.all(axis=1).any():
        return None
    return X


def validate_label(value: Any, index: int | None = None, strict: bool = False) -> int:
    """Check the lab verdict: 0 (not potable) or 1 (potable), never missing.

    ``strict`` (JSON bodies): the number 0 or 1, as the OpenAPI document says.
    """
    if value is None or (isinstance(value, str) and value.strip() == ""):
        raise FieldError(LABEL, "is missing; a lab row needs a verdict 0 or 1", index)
    if strict and (isinstance(value, (bool, str)) or not isinstance(value, (int, float))):
        raise FieldError(LABEL, f"must be the number 0 or 1, got {value!r}", index)
    if isinstance(value, bool):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FieldError(LABEL, f"must be 0 or 1, got {value!r}", index) from None
    if number not in (0.0, 1.0):
        raise FieldError(LABEL, f"must be 0 or 1, got {value!r}", index)
    return int(number)


def text_problem(value: str) -> str | None:
    """What makes ``value`` unfit to be an identifier, or None (NUL, lone surrogates, length)."""
    if "\x00" in value:
        return "must not contain NUL characters"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (it holds an unpaired surrogate)"
    if len(value) > MAX_ID_LENGTH:
        return f"is longer than {MAX_ID_LENGTH} characters"
    return None


def validate_text(
    field: str, value: Any, index: int | None = None, required: bool = False
) -> str | None:
    """Check an identifier such as ``sample_id`` or ``sensor_id``."""
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if required:
            raise FieldError(field, "is required", index)
        return None
    if not isinstance(value, str):
        raise FieldError(field, f"must be a string, got {type(value).__name__}", index)
    problem = text_problem(value)  # before stripping: the length the OpenAPI document counts
    if problem:
        raise FieldError(field, problem, index)
    return value.strip()


def validate_lab_row(
    obj: dict[str, Any], index: int | None = None, strict: bool = False
) -> dict[str, Any]:
    """Check one labelled lab row (JSON body with ``strict``, or CSV row) and return it normalised."""
    values = validate_features(obj, index, extra_fields=(LABEL, *SAMPLE_FIELDS), strict=strict)
    row: dict[str, Any] = {
        "sample_id": validate_text("sample_id", obj.get("sample_id"), index, required=True),
        "sensor_id": validate_text("sensor_id", obj.get("sensor_id"), index),
        "collected_at": _timestamp(obj.get("collected_at"), index, strict),
        **values,
        LABEL: validate_label(obj.get(LABEL), index, strict),
    }
    return row


# RFC 3339 date-time, as OpenAPI's ``format: date-time`` means it
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$", re.ASCII
)


def _timestamp(value: Any, index: int | None, strict: bool = False) -> str | None:
    """An ISO 8601 timestamp (RFC 3339 with ``strict``), normalised to UTC when it has an offset."""
    parsed = parse_timestamp(value, index, strict, "collected_at")
    return None if parsed is None else parsed.isoformat()


def parse_timestamp(value: Any, index: int | None, strict: bool, field: str) -> datetime | None:
    if value is None or (value == "" and not strict):
        return None
    if not isinstance(value, str):
        raise FieldError(field, "must be an ISO 8601 timestamp string", index)
    if strict and not _RFC3339.match(value):
        raise FieldError(field, f"is not an RFC 3339 date-time: {value[:40]!r}", index)
    try:
        parsed = datetime.fromisoformat(value.upper().replace("Z", "+00:00"))
        if parsed.tzinfo is not None:  # Postgres takes offsets up to 15:59 only: store UTC
            parsed = parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise FieldError(field, f"is not an ISO 8601 timestamp: {value[:40]!r}", index) from None
    return parsed


# What validate_text accepts, as a JSON Schema pattern: no NUL; an id also needs a visible character.
TEXT_PATTERN = "^[^\\u0000]*$"
ID_PATTERN = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"


def json_schema_sample() -> dict[str, Any]:
    """The JSON Schema of one sensor sample, generated from FEATURES (for OpenAPI).

    Null or absent means missing, but not every measurement at once: ``anyOf``
    says at least one is a number, as ``validate_features`` does.
    """
    return {
        "type": "object",
        "additionalProperties": False,
        "anyOf": [
            {"required": [f.name], "properties": {f.name: {"type": "number"}}} for f in FEATURES
        ],
        "properties": {
            f.name: {
                "type": ["number", "null"],
                "minimum": f.low,
                "maximum": f.high,
                "description": f"{f.name} in {f.unit}; null or absent = missing (imputed)",
            }
            for f in FEATURES
        },
    }
