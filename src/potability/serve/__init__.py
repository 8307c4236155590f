"""The inference server: Flask app factories, one per kind of process. Nothing happens at import.

``create_app(settings)`` is a gunicorn worker's app: the sensors' API, the
open page and ops endpoints, the inference-log writer, the token cache, the
alias watcher and the hourly log maintenance. ``create_page_app(settings)`` is
the page's app for the renderer and the page listener: the page, its cache and
its reads, following the champion, with no inference log, token writer or
maintenance (the listener adds a token cache only when the page needs a
token). Both read the one ``Settings`` object they are given
(``potability.serve.context``); tests build their own.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from flask import Flask, g, request

from potability import db
from potability.config import Settings, get_settings
from potability.inference_store import InferenceStore
from potability.log_maintenance import lab_match_minutes
from potability.mart import WaterMart
from potability.rollups import Rollups
from potability.serve import context
from potability.serve.model_holder import ModelHolder

log = logging.getLogger(__name__)

# On every answer, HTML and JSON alike: no sniffing a JSON body into a page, no framing, no
# referrer leaving the page, and the page loads nothing but its own stylesheet (charts are inline
# SVG, styled from page.css; the icon is an empty data: URL).
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def create_app(settings: Settings | None = None, *, start_background: bool = True) -> Flask:
    """A worker's app; ``start_background=False`` leaves its threads off (tests drive them)."""
    from potability.serve import api, ops, page, ratelimit
    from potability.serve.auth import TokenCache
    from potability.serve.inference_log import open_log
    from potability.serve.maintenance import Maintenance
    from potability.serve.metrics import on_log_depth, on_quarantine

    settings = settings or get_settings()
    mart = _mart(settings)
    maintenance = Maintenance(
        mart.url,
        settings,
        lab_match_minutes(settings.params_path),
        lambda: holder.current,
        settings.log_maintenance_seconds,
    )
    app, holder = _base_app(settings, mart, on_swap=maintenance.model_changed)
    inference_log = open_log(
        InferenceStore(url=mart.url), settings.spool_dir, settings, on_log_depth, on_quarantine
    )
    app.extensions[context.LOG] = inference_log
    # the predict path's reading lookup: never behind a COPY, one round trip
    app.extensions[context.LOG_READS] = InferenceStore(url=mart.url, autocommit=True)
    app.extensions[context.MAINTENANCE] = maintenance
    app.extensions[context.TOKENS] = TokenCache(
        mart, settings.token_cache_seconds, settings.token_stale_seconds
    )
    if start_background:
        inference_log.start()
        holder.start_watching()
        maintenance.start()
    ratelimit.init_app(app, ratelimit.RateLimiter.from_settings(settings))
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(page.bp)
    return app


def create_page_app(settings: Settings | None = None) -> Flask:
    """The page's app (renderer, page listener): the page and its reads, following the champion."""
    from potability.serve import page
    from potability.serve.auth import TokenCache

    settings = settings or get_settings()
    mart = _mart(settings)
    app, holder = _base_app(settings, mart)
    if settings.page_requires_token:
        app.extensions[context.TOKENS] = TokenCache(
            mart, settings.token_cache_seconds, settings.token_stale_seconds
        )
    holder.start_watching()
    app.register_blueprint(page.bp)
    return app


def _mart(settings: Settings) -> WaterMart:
    """The process's mart, on the server's URL: every connection made from it has timeouts."""
    return WaterMart(url=db.server_url(db.database_url(settings), settings))


def _base_app(
    settings: Settings, mart: WaterMart, on_swap: Callable[[], None] | None = None
) -> tuple[Flask, ModelHolder]:
    """What every process's app has: settings, error shape, the champion, the page's reads.

    ``on_swap`` runs after each model swap, beside the metrics' own hook.
    """
    from potability.serve.errors import register_error_handlers
    from potability.serve.metrics import LATENCY, REQUESTS, on_model_swap
    from potability.serve.page_cache import PageCache

    def swapped(old, new) -> None:
        on_model_swap(old, new)
        if on_swap is not None:
            on_swap()

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.json.sort_keys = False
    holder = ModelHolder(
        settings.registered_model,
        settings.champion_alias,
        settings.model_cache_dir,
        settings.model_poll_seconds,
        _tracking_uri(settings, mart.url),
        settings.registry_connect_timeout,
        on_swap=swapped,
    )
    holder.start()
    app.extensions.update(
        {
            context.SETTINGS: settings,
            context.MART: mart,
            context.MODEL: holder,
            context.ROLLUPS: Rollups(mart.url, settings.rollups_pool_size),
            context.PAGE_CACHE: PageCache(settings.page_cache_dir, settings.page_stale_seconds),
        }
    )
    register_error_handlers(app)

    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def observe(response):
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        LATENCY.labels(endpoint=endpoint).observe(
            time.perf_counter() - g.get("started", time.perf_counter())
        )
        response.headers.update(SECURITY_HEADERS)
        return response

    return app, holder


def _tracking_uri(settings: Settings, database_url: str):
    """The registry's address, resolved when first needed (Postgres may be down at start)."""

    def resolve() -> str:
        return db.mlflow_tracking_uri(settings, url=database_url)

    return resolve


def shutdown(app: Flask) -> None:
    """Flush the inference log and stop background threads (gunicorn worker_exit, tests).

    Each app has only the parts its process uses; what it lacks is skipped.
    """
    parts = app.extensions
    parts[context.MODEL].stop()
    if context.MAINTENANCE in parts:
        parts[context.MAINTENANCE].stop()
    if context.LOG in parts:
        parts[context.LOG].close()
        parts[context.LOG_READS].close()
    parts[context.ROLLUPS].close()
    if context.RATELIMIT in parts:
        parts[context.RATELIMIT].close()
