"""The public quality page (filled in by the quality-page issue)."""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("page", __name__)
