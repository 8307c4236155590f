"""The OpenAPI 3 document, generated from the same feature table validation uses.

It is the contract, checked by schemathesis against the real server
(tests/test_contract.py): every shape has one unambiguous schema, the rules
validation enforces are in the schemas (at least one measurement, no NUL in
ids), and every status a route can give is listed.
"""

from __future__ import annotations

from typing import Any

from potability.schema import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    TEXT_PATTERN,
    json_schema_sample,
)
from potability.sensor.readings import json_schema_reading

# what any authenticated JSON route may answer besides its success
BODY_ERRORS = (400, 401, 403, 413, 415, 422, 503)


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), "error") for s in statuses}


def _open_read(
    summary: str, content_type: str, schema: dict[str, Any], *extra: int
) -> dict[str, Any]:
    """A GET of the open page or its stats: answered from the renderer's cache, rate-limited per client."""
    retry = {
        "Retry-After": {
            "description": "seconds to wait",
            "schema": {"type": "integer", "minimum": 1},
        }
    }
    errors = {
        str(s): {**_json(_ref("Error"), why), "headers": retry}
        for s, why in (
            (429, "rate_limited: past this client's burst and rate (page_rate_* settings)"),
            (503, "page_rendering: no copy rendered yet, one is under way"),
        )
    }
    return {
        "get": {
            "summary": summary,
            "description": "Answered from the copy the page renderer refreshes every page_refresh_seconds "
            "(ETag, Last-Modified and Cache-Control max-age let browsers and proxies keep it); "
            "limited per client address (a token bucket) so no client can crowd out the sensors. "
            "401/403 only when the server is set to require a token for the page.",
            "responses": {
                "200": {
                    "description": "the panel(s)",
                    "content": {content_type: {"schema": schema}},
                },
                "304": {"description": "not modified since the ETag sent in If-None-Match"},
                **_errors(401, 403, *extra),
                **errors,
            },
        }
    }


def _one_or_batch(single: str, batch: str) -> dict[str, Any]:
    """A JSON request body that is one object of ``single`` or a ``batch``."""
    return {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [_ref(single), _ref(batch)]}}},
    }


def _batch_of(schema: str, max_batch: int) -> dict[str, Any]:
    """``{"samples": [...]}`` of the named schema."""
    items = {"type": "array", "minItems": 1, "maxItems": max_batch, "items": _ref(schema)}
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["samples"],
        "properties": {"samples": items},
    }


def _closed(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    """An object with exactly these properties (all required unless ``required`` says)."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(properties) if required is None else required,
        "properties": properties,
    }


def document(max_batch: int, panels: tuple[str, ...]) -> dict[str, Any]:
    sample = json_schema_sample()
    reading = json_schema_reading()
    # a sensor's sample may name its reading (idempotent resends); a lab row may not
    sensor_sample = {
        **sample,
        "properties": {**sample["properties"], **reading["properties"]},
        "dependentRequired": reading["dependentRequired"],
    }
    lab = {
        **sample,
        "required": ["sample_id", "Potability"],
        "properties": {
            **sample["properties"],
            "sample_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": MAX_ID_LENGTH,
                "pattern": ID_PATTERN,
            },
            "sensor_id": {
                "type": ["string", "null"],
                "maxLength": MAX_ID_LENGTH,
                "pattern": TEXT_PATTERN,
            },
            "collected_at": {"type": ["string", "null"], "format": "date-time"},
            "Potability": {"type": "integer", "enum": [0, 1]},
        },
    }
    prediction = _closed(
        {
            "potable": {"type": "boolean"},
            "probability": {"type": "number", "minimum": 0, "maximum": 1},
            "threshold": {"type": "number"},
            "inference_id": {"type": "string", "format": "uuid"},
            "model_version": {"type": "string"},
        }
    )
    predictions = _closed(
        {
            "model_version": {"type": "string"},
            "predictions": {"type": "array", "items": _ref("Prediction")},
        }
    )
    stored = _closed(
        {
            "inserted": {"type": "integer", "minimum": 0},
            "duplicates": {"type": "integer", "minimum": 0},
            "sample_ids": {"type": "array", "items": {"type": "string"}},
        }
    )
    error = _closed(
        {
            "error": {
                "type": "object",
                "required": ["code", "message", "field"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": ["string", "null"]},
                    "index": {"type": "integer"},
                },
            }
        }
    )
    readiness = {
        "type": "object",
        "required": ["ready", "model_loaded", "database", "journal_ok"],
        "properties": {
            "ready": {"type": "boolean"},
            "model_loaded": {"type": "boolean"},
            "database": {"type": "boolean"},
            "journal_ok": {
                "type": "boolean",
                "description": "a request can be written to this worker's journal (false: not "
                "ready, journal_error says why)",
            },
            "journal_error": {"type": ["string", "null"]},
            "model_source": {
                "enum": ["registry", "cache", None],
                "description": "cache: the registry could not be read when the served model was "
                "loaded, so the host serves the champion it cached before (last_model_error says why)",
            },
        },
    }
    bearer = [{"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "potability",
            "version": "1",
            "description": "Drinking-water potability answers for plant sensors; lab samples in.",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Sample": sensor_sample,
                "Batch": _batch_of("Sample", max_batch),
                "LabSample": lab,
                "LabBatch": _batch_of("LabSample", max_batch),
                "Prediction": prediction,
                "Predictions": predictions,
                "Stored": stored,
                "Readiness": readiness,
                "Error": error,
            },
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "summary": "Answer one sample or a batch; every answer is logged",
                    "description": "503 log_unavailable: the answer could not be logged (Postgres "
                    "down and the spool full); nothing is answered without a record. A sample with "
                    "reading_id and read_at is idempotent: sent again, it is logged once and "
                    "answered with the same inference_id; 409 reading_conflict when it comes "
                    "again with other measurements; 400 on read_at when it lies too far after "
                    "the server's clock or too long before it.",
                    "security": bearer,
                    "requestBody": _one_or_batch("Sample", "Batch"),
                    "responses": {
                        "200": _json(
                            {"oneOf": [_ref("Prediction"), _ref("Predictions")]},
                            "one answer for one sample; predictions in order for a batch",
                        ),
                        **_errors(409, *BODY_ERRORS),
                    },
                }
            },
            "/v1/samples": {
                "post": {
                    "summary": "Add labelled lab samples (idempotent on sample_id)",
                    "security": bearer,
                    "requestBody": _one_or_batch("LabSample", "LabBatch"),
                    "responses": {
                        "201": _json(_ref("Stored"), "inserted and duplicate counts"),
                        **_errors(409, *BODY_ERRORS),
                    },
                }
            },
            "/v1/model": {
                "get": {
                    "summary": "The production model's meta",
                    "security": bearer,
                    "responses": {
                        "200": _json({"type": "object"}, "meta.json"),
                        **_errors(401, 403, 503),
                    },
                }
            },
            "/admin/reload": {
                "post": {
                    "summary": "Re-read the alias champion and serve that version now (admin)",
                    "security": bearer,
                    "responses": {
                        "200": _json(
                            _closed(
                                {
                                    "version": {"type": "string"},
                                    "previous": {"type": ["string", "null"]},
                                    "changed": {"type": "boolean"},
                                }
                            ),
                            "reloaded",
                        ),
                        **_errors(401, 403, 422, 503),
                    },
                }
            },
            "/": _open_read("The quality page (HTML)", "text/html", {"type": "string"}),
            "/model": _open_read(
                "The quality page (HTML), as at /", "text/html", {"type": "string"}
            ),
            "/v1/stats/{name}": {
                **_open_read(
                    "One panel of the quality page as JSON",
                    "application/json",
                    {"type": "object"},
                    404,
                ),
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": list(panels)},
                    }
                ],
            },
            "/healthz": {
                "get": {
                    "summary": "alive",
                    "responses": {"200": _json({"type": "object"}, "alive")},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "model loaded and every answer can be logged",
                    "responses": {
                        "200": _json(_ref("Readiness"), "ready"),
                        "503": _json(_ref("Readiness"), "not ready: see which part"),
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": _json({"type": "object"}, "OpenAPI 3")},
                }
            },
        },
    }
