"""What an app holds, read from inside a request: one accessor per part, one place for the keys.

Every part lives in ``app.extensions`` under a ``potability.*`` key, and the
settings object itself is there too: views read ``settings().max_batch``, never a
renamed copy in ``app.config``.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app

from potability.config import Settings

SETTINGS = "potability.settings"
MODEL = "potability.model"
MART = "potability.mart"
LOG = "potability.log"
LOG_READS = "potability.log_reads"  # the predict path's own connection to the log
ROLLUPS = "potability.rollups"
TOKENS = "potability.tokens"
PAGE_CACHE = "potability.page_cache"
MAINTENANCE = "potability.maintenance"
RATELIMIT = "potability.ratelimit"


def part(key: str, app: Flask | None = None) -> Any:
    """The part ``key`` of ``app`` (default: the app of this request)."""
    return (app or current_app).extensions[key]


def settings(app: Flask | None = None) -> Settings:
    """The settings this app was built with."""
    return part(SETTINGS, app)
