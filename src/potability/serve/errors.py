"""JSON errors: ``{"error": {"code", "message", "field"}}``, with the status that fits."""

from __future__ import annotations

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException, MethodNotAllowed


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        index: int | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.index = (
            status,
            code,
            message,
            field,
            index,
        )
        self.headers = headers or {}  # e.g. Retry-After on a 429 or 503

    def response(self):
        body = {"code": self.code, "message": self.message, "field": self.field}
        if self.index is not None:
            body["index"] = self.index
        return jsonify({"error": body}), self.status, self.headers


def register_error_handlers(app: Flask) -> None:
    app.register_error_handler(ApiError, lambda exc: exc.response())

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        code = (exc.name or "error").lower().replace(" ", "_")
        message = {
            413: f"request body larger than {app.config['MAX_CONTENT_LENGTH']} bytes",
        }.get(exc.code or 500, exc.description or exc.name)
        response, status, _ = ApiError(exc.code or 500, code, message).response()
        if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response, status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        app.logger.exception("unhandled error")
        return ApiError(
            500, "internal_error", "unexpected server error; it has been logged"
        ).response()
