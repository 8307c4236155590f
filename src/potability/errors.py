"""Typed errors of the data mart, each with a message a person can act on."""

from __future__ import annotations


class MartError(Exception):
    """Base of every error the data mart raises."""


class SchemaError(MartError):
    """The database lacks the tables this version expects (run ``potability db migrate``)."""


class ValidationError(MartError):
    """A row or field is wrong: names the row (or batch index) and the field."""

    def __init__(self, message: str, field: str | None = None, row: int | None = None):
        super().__init__(message)
        self.field = field
        self.row = row


class DuplicateSampleError(MartError):
    """A ``sample_id`` already exists with different measurements or verdict."""

    def __init__(self, message: str, sample_ids: list[str]):
        super().__init__(message)
        self.sample_ids = sample_ids


class DatabaseUnavailable(MartError):
    """Postgres cannot be reached; callers may retry or spool."""
