"""The OpenAPI 3 document, generated from the same feature table validation uses."""

from __future__ import annotations

from typing import Any

from potability.schema import MAX_ID_LENGTH, json_schema_sample


def _error() -> dict[str, Any]:
    return {
        "description": "error",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def _one_or_batch(single: str, batch: str) -> dict[str, Any]:
    """A JSON request body that is one object of ``single`` or a ``batch``."""
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in (single, batch)]
    return {"required": True, "content": {"application/json": {"schema": {"oneOf": refs}}}}


def _batch_of(schema: str, max_batch: int) -> dict[str, Any]:
    """``{"samples": [...]}`` of the named schema."""
    items = {
        "type": "array",
        "minItems": 1,
        "maxItems": max_batch,
        "items": {"$ref": f"#/components/schemas/{schema}"},
    }
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["samples"],
        "properties": {"samples": items},
    }


def document(max_batch: int) -> dict[str, Any]:
    sample = json_schema_sample()
    sample_31 = {
        **sample,
        "properties": {
            k: {**v, "type": ["number", "null"]} for k, v in sample["properties"].items()
        },
    }
    lab = {
        **sample_31,
        "required": ["sample_id", "Potability"],
        "properties": {
            **sample_31["properties"],
            "sample_id": {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH},
            "sensor_id": {"type": ["string", "null"], "maxLength": MAX_ID_LENGTH},
            "collected_at": {"type": ["string", "null"], "format": "date-time"},
            "Potability": {"type": "integer", "enum": [0, 1]},
        },
    }
    errors = {str(c): _error() for c in (400, 401, 403, 413, 415, 422, 503)}
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
                "Sample": sample_31,
                "Batch": _batch_of("Sample", max_batch),
                "LabSample": lab,
                "LabBatch": _batch_of("LabSample", max_batch),
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "potable": {"type": "boolean"},
                        "probability": {"type": "number"},
                        "threshold": {"type": "number"},
                        "inference_id": {"type": "string", "format": "uuid"},
                        "model_version": {"type": "string"},
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                                "field": {"type": ["string", "null"]},
                                "index": {"type": "integer"},
                            },
                        }
                    },
                },
            },
        },
        "paths": {
            "/v1/predict": {
                "post": {
                    "summary": "Answer one sample or a batch; every answer is logged",
                    "security": bearer,
                    "requestBody": _one_or_batch("Sample", "Batch"),
                    "responses": {
                        "200": {
                            "description": "the answer(s)",
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "oneOf": [
                                            {"$ref": "#/components/schemas/Prediction"},
                                            {
                                                "type": "object",
                                                "properties": {
                                                    "model_version": {"type": "string"},
                                                    "predictions": {
                                                        "type": "array",
                                                        "items": {
                                                            "$ref": "#/components/schemas/Prediction"
                                                        },
                                                    },
                                                },
                                            },
                                        ]
                                    }
                                }
                            },
                        },
                        **errors,
                    },
                }
            },
            "/v1/samples": {
                "post": {
                    "summary": "Add labelled lab samples (idempotent on sample_id)",
                    "security": bearer,
                    "requestBody": _one_or_batch("LabSample", "LabBatch"),
                    "responses": {
                        "201": {"description": "inserted and duplicate counts"},
                        "409": _error(),
                        **errors,
                    },
                }
            },
            "/v1/model": {
                "get": {
                    "summary": "The production model's meta",
                    "security": bearer,
                    "responses": {
                        "200": {"description": "meta.json"},
                        "401": _error(),
                        "503": _error(),
                    },
                }
            },
            "/admin/reload": {
                "post": {
                    "summary": "Re-read the alias champion and serve that version now (admin)",
                    "security": bearer,
                    "responses": {
                        "200": {"description": "reloaded"},
                        "401": _error(),
                        "403": _error(),
                        "422": _error(),
                    },
                }
            },
            "/healthz": {
                "get": {"summary": "alive", "responses": {"200": {"description": "alive"}}}
            },
            "/readyz": {
                "get": {
                    "summary": "model loaded and log writable",
                    "responses": {"200": {"description": "ready"}, "503": _error()},
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text",
                    "responses": {"200": {"description": "metrics"}},
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "this document",
                    "responses": {"200": {"description": "OpenAPI 3"}},
                }
            },
        },
    }
