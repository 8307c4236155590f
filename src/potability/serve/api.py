"""Blueprint /v1: sensors ask, lab staff add samples, anyone with a token reads the model's meta."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
from flask import Blueprint, current_app, g, request

from potability.errors import DuplicateSampleError, MartError
from potability.ids import uuid7_batch
from potability.inference_store import AnsweredBatch
from potability.schema import (
    FEATURE_NAMES,
    FieldError,
    fast_feature_matrix,
    json_schema_sample,
    validate_features,
    validate_lab_row,
)
from potability.sensor.readings import split_readings
from potability.serve import context
from potability.serve.auth import require
from potability.serve.errors import ApiError
from potability.serve.inference_log import LogUnavailable, ReadingConflict
from potability.serve.metrics import PREDICTIONS

bp = Blueprint("api", __name__, url_prefix="/v1")


def json_body() -> Any:
    """The request's JSON, or a 415 / 400 that says what is wrong."""
    if request.mimetype != "application/json":
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send Content-Type: application/json, not {request.mimetype or 'none'!r}",
        )
    raw = request.get_data(cache=False)  # MAX_CONTENT_LENGTH turns an oversized body into a 413
    try:
        return orjson.loads(raw)  # strict RFC 8259: several times faster on a 1,000-sample batch
    except orjson.JSONDecodeError:
        pass  # NaN, a lone surrogate, an integer past 64 bits...: the standard parser decides
    try:
        # NaN / Infinity literals stay strings, so validation names them instead of taking them as missing
        return json.loads(raw, parse_constant=str)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:  # orjson stops at 255 levels; the standard parser at the stack's end
        raise ApiError(
            400, "invalid_json", "the body nests arrays or objects too deeply to be a sample"
        ) from None


def as_items(body: Any, max_batch: int) -> tuple[list[Any], bool]:
    """Split a body into its samples; True when it was a batch."""
    if isinstance(body, dict) and "samples" in body:
        items = body["samples"]
        if set(body) != {"samples"}:
            extra = sorted(set(body) - {"samples"})[0]
            raise ApiError(400, "invalid_field", "unknown field next to 'samples'", field=extra)
        if not isinstance(items, list) or not items:
            raise ApiError(
                422, "invalid_batch", "'samples' must be a non-empty list", field="samples"
            )
        if len(items) > max_batch:  # the document's maxItems: a validation error like minItems
            raise ApiError(
                422,
                "batch_too_large",
                f"{len(items)} samples; at most {max_batch} per request",
                field="samples",
            )
        return items, True
    if not isinstance(body, dict):
        raise ApiError(422, "invalid_body", 'send one sample object or {"samples": [...]}')
    return [body], False


def field_error(exc: FieldError, batch: bool) -> ApiError:
    return ApiError(
        400, "invalid_field", exc.message, field=exc.field, index=exc.index if batch else None
    )


def answers_of(answered: AnsweredBatch) -> list[dict[str, Any]]:
    """The answer objects, in request order: built from whole columns, no numpy scalar per row."""
    threshold, version = answered.threshold, answered.model_version
    potable = answered.potable.tolist()
    rounded = answered.probabilities.round(6).tolist()
    return [
        {
            "potable": p,
            "probability": q,
            "threshold": threshold,
            "inference_id": i,
            "model_version": version,
        }
        for p, q, i in zip(potable, rounded, answered.inference_ids, strict=True)
    ]


def refuse_changed_readings(
    sent: list[Any], readings: list[tuple[str, str] | None], X: np.ndarray, batch: bool
) -> None:
    """A reading sent again must carry the measurements it had: a 409 naming it otherwise.

    Compared within the request, then with the log in Postgres (by the log's
    key, one indexed lookup for the request); what this worker answered and has
    not stored yet is compared as the answers are journalled
    (``InferenceLog.submit``). While the log's writer finds Postgres down, or
    when the lookup fails, Postgres is not asked: a changed resend of a reading
    stored before is answered, and kept in quarantine at replay
    (``serve/spool.py``), never stored over the first.
    """
    first: dict[tuple[str, str], int] = {}
    looked_up: list[int] = []
    for k, key in enumerate(readings):
        if key is None:
            continue
        j = first.setdefault(key, k)
        if j == k:
            looked_up.append(k)
        elif not np.array_equal(X[j], X[k], equal_nan=True):
            raise reading_conflict(sent[k], k, batch, f"index {j} of this batch")
    if not looked_up or not context.part(context.LOG).db_ok:
        return
    try:
        stored = context.part(context.LOG_READS).stored_measurements(
            [readings[k][0] for k in looked_up], [readings[k][1] for k in looked_up]
        )
    except MartError:
        return
    for n, values in sorted(stored.items()):
        k = looked_up[n]
        if not np.array_equal(values, X[k], equal_nan=True):
            raise reading_conflict(sent[k], k, batch, "the log")


def reading_conflict(sample: dict[str, Any], index: int, batch: bool, where: str) -> ApiError:
    return ApiError(
        409,
        "reading_conflict",
        f"reading {sample['reading_id']!r} read at {sample['read_at']} is already in {where} with "
        "other measurements; a new reading needs a new reading_id",
        field="reading_id",
        index=index if batch else None,
    )


@bp.post("/predict")
@require("sensor", "admin")
def predict():
    settings = context.settings()
    sent, batch = as_items(json_body(), settings.max_batch)
    now, sensor_id = datetime.now(UTC), g.token.name
    try:
        items, readings = split_readings(
            sent,
            sensor_id,
            now,
            settings.reading_max_skew_seconds,
            settings.reading_max_age_seconds,
        )
    except FieldError as exc:
        raise field_error(exc, batch) from None
    X = fast_feature_matrix(items)
    if X is None:  # something unusual: the per-sample validator finds it and names the field
        try:
            samples = [
                validate_features(item, index=i, strict=True) for i, item in enumerate(items)
            ]
        except FieldError as exc:
            raise field_error(exc, batch) from None
        X = np.array(
            [[np.nan if s[n] is None else s[n] for n in FEATURE_NAMES] for s in samples],
            dtype=np.float64,
        )
    if readings:
        refuse_changed_readings(sent, readings, X, batch)
    production = context.part(context.MODEL).current
    if production is None:
        raise ApiError(
            503, "no_model", "no model is loaded yet; run `dvc repro` and POST /admin/reload"
        )
    probabilities = production.model.predict_proba(X)
    threshold, version = production.threshold, production.version
    inference_ids: list[str] = uuid7_batch(len(X), now)
    logged_at = None
    if readings:  # a sensor's own reading is logged under its own id and time
        inference_ids = [r[0] if r else i for r, i in zip(readings, inference_ids, strict=True)]
        logged_at = [r[1] if r else now for r in readings]
    answered = AnsweredBatch(
        inference_ids=inference_ids,
        received_at=now,
        sensor_id=sensor_id,
        model_version=version,
        features=X,
        probabilities=probabilities,
        threshold=threshold,
        logged_at=logged_at,
    )
    try:
        context.part(context.LOG).submit(answered)
    except ReadingConflict as exc:
        k = exc.index
        raise reading_conflict(sent[k], k, batch, "the log (answered, not yet stored)") from None
    except LogUnavailable as exc:
        raise ApiError(
            503, "log_unavailable", f"no answer without a record: {exc}; retry later"
        ) from None
    answers = answers_of(answered)
    potable_count = sum(a["potable"] for a in answers)
    if potable_count:
        PREDICTIONS.labels(answer="potable").inc(potable_count)
    if len(answers) - potable_count:
        PREDICTIONS.labels(answer="not_potable").inc(len(answers) - potable_count)
    body = {"model_version": version, "predictions": answers} if batch else answers[0]
    return current_app.response_class(orjson.dumps(body), mimetype="application/json")


@bp.post("/samples")
@require("lab", "admin")
def add_samples():
    items, batch = as_items(json_body(), context.settings().max_batch)
    try:
        rows = [validate_lab_row(item, index=i, strict=True) for i, item in enumerate(items)]
    except FieldError as exc:
        raise field_error(exc, batch) from None
    mart = context.part(context.MART)
    try:
        report = mart.insert_samples(rows, added_by=g.token.name, strict=True)
    except DuplicateSampleError as exc:
        raise ApiError(409, "sample_conflict", str(exc), field="sample_id") from None
    except MartError as exc:
        raise ApiError(
            503, "database_unavailable", f"samples not stored, send them again: {exc}"
        ) from None
    return {
        "inserted": len(report.inserted),
        "duplicates": len(report.duplicates),
        "sample_ids": [r["sample_id"] for r in rows],
    }, 201


@bp.get("/model")
@require("sensor", "lab", "admin")
def model_meta():
    production = context.part(context.MODEL).current
    if production is None:
        raise ApiError(503, "no_model", "no model is loaded yet")
    # the input's schema, not an input example: the example is real lab rows from training
    meta = {k: v for k, v in production.meta.items() if k != "input_example"}
    return {**meta, "input_schema": json_schema_sample()}
