"""The inference server: Flask app factory. Nothing happens at import time.

``create_app(config)`` builds defaults from the environment (``Settings``),
then applies ``config`` overrides (tests). It loads the champion from the MLflow
registry (or its local cache), starts the inference-log writer and the alias
watcher, opens the page cache and the open pages' rate limit, and registers the
blueprints. The page renderer (``serve/renderer.py``) builds this same app, takes
no traffic, and keeps the page cache fresh.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from flask import Flask, g, request

from potability.config import get_settings, page_cache_dir
from potability.inference_store import InferenceStore
from potability.log_maintenance import lab_match_minutes
from potability.mart import WaterMart
from potability.rollups import Rollups

log = logging.getLogger(__name__)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    from potability.serve import api, ops, page, ratelimit
    from potability.serve.auth import TokenCache
    from potability.serve.errors import register_error_handlers
    from potability.serve.inference_log import open_log
    from potability.serve.maintenance import Maintenance
    from potability.serve.metrics import (
        LATENCY,
        REQUESTS,
        on_log_depth,
        on_model_swap,
        on_quarantine,
    )
    from potability.serve.model_holder import ModelHolder
    from potability.serve.page_cache import PageCache

    settings = get_settings()
    app = Flask(__name__)
    app.config.from_mapping(
        DATABASE_URL=None,
        MLFLOW_TRACKING_URI=None,  # None: MLFLOW_TRACKING_URI, else the mlflow database beside ours
        REGISTERED_MODEL=settings.registered_model,
        CHAMPION_ALIAS=settings.champion_alias,
        MODEL_CACHE_DIR=str(settings.model_cache_dir),
        SPOOL_DIR=str(settings.spool_dir),
        MAX_BATCH=settings.max_batch,
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
        READING_MAX_SKEW_SECONDS=settings.reading_max_skew_seconds,
        TOKEN_CACHE_SECONDS=settings.token_cache_seconds,
        LOG_FLUSH_SECONDS=settings.log_flush_seconds,
        LOG_BATCH_ROWS=settings.log_batch_rows,
        SPOOL_REPLAY_SECONDS=settings.spool_replay_seconds,
        SPOOL_MAX_BYTES=settings.spool_max_bytes,
        LOG_QUEUE_MAX_ROWS=settings.log_queue_max_rows,
        LOG_JOURNAL_FSYNC=settings.log_journal_fsync,
        LOG_JOURNAL_SEGMENT_BYTES=settings.log_journal_segment_bytes,
        TOKEN_STALE_SECONDS=settings.token_stale_seconds,
        MODEL_POLL_SECONDS=settings.model_poll_seconds,
        REGISTRY_CONNECT_TIMEOUT=settings.registry_connect_timeout,
        PAGE_REQUIRES_TOKEN=settings.page_requires_token,
        PAGE_REFRESH_SECONDS=settings.page_refresh_seconds,
        PAGE_STALE_SECONDS=settings.page_stale_seconds,
        PAGE_RATE_PER_SECOND=settings.page_rate_per_second,
        PAGE_RATE_BURST=settings.page_rate_burst,
        PAGE_RATE_CLIENTS=settings.page_rate_clients,
        TRUST_FORWARDED_FOR=settings.trust_forwarded_for,
        PARAMS_PATH=str(settings.params_path),
        ROLLUPS_POOL_SIZE=settings.rollups_pool_size,
        LOG_MAINTENANCE_SECONDS=settings.log_maintenance_seconds,
        START_BACKGROUND=True,
    )
    app.config.from_mapping(config or {})
    app.json.sort_keys = False

    mart = WaterMart(url=app.config["DATABASE_URL"]) if app.config["DATABASE_URL"] else WaterMart()
    maintenance = Maintenance(
        mart.url,
        settings,
        lab_match_minutes(Path(app.config["PARAMS_PATH"])),
        lambda: holder.current,
        app.config["LOG_MAINTENANCE_SECONDS"],
    )

    def swapped(old, new) -> None:
        on_model_swap(old, new)
        maintenance.model_changed()

    holder = ModelHolder(
        app.config["REGISTERED_MODEL"], app.config["CHAMPION_ALIAS"], Path(app.config["MODEL_CACHE_DIR"]),
        app.config["MODEL_POLL_SECONDS"], _tracking_uri(app.config["MLFLOW_TRACKING_URI"], mart.url),
        app.config["REGISTRY_CONNECT_TIMEOUT"], on_swap=swapped,
    )  # fmt: skip
    holder.start()
    inference_log = open_log(
        InferenceStore(url=mart.url),
        Path(app.config["SPOOL_DIR"]),
        settings,
        on_log_depth,
        on_quarantine,
    )
    page_dir = page_cache_dir(app.config["SPOOL_DIR"])
    app.extensions.update({
        "potability.page_cache": PageCache(page_dir, app.config["PAGE_STALE_SECONDS"]),
        "potability.mart": mart,
        "potability.model": holder,
        "potability.log": inference_log,
        "potability.rollups": Rollups(mart.url, app.config["ROLLUPS_POOL_SIZE"]),
        "potability.maintenance": maintenance,
        "potability.tokens": TokenCache(mart, app.config["TOKEN_CACHE_SECONDS"],
                                        app.config["TOKEN_STALE_SECONDS"]),
    })  # fmt: skip
    if app.config["START_BACKGROUND"]:
        inference_log.start()
        holder.start_watching()
        maintenance.start()

    register_error_handlers(app)
    ratelimit.init_app(app, ratelimit.RateLimiter(
        page_dir / "ratelimit", app.config["PAGE_RATE_PER_SECOND"], app.config["PAGE_RATE_BURST"],
        app.config["PAGE_RATE_CLIENTS"],
    ))  # fmt: skip
    app.register_blueprint(api.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(page.bp)

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
        return response

    return app


def _tracking_uri(explicit: str | None, database_url: str):
    """The registry's address, resolved when first needed (Postgres may be down at start)."""

    def resolve() -> str:
        if explicit:
            return explicit
        from potability import db
        from potability.config import get_settings

        return db.mlflow_tracking_uri(get_settings(), url=database_url)

    return resolve


def shutdown(app: Flask) -> None:
    """Flush the inference log and stop background threads (gunicorn worker_exit, tests)."""
    app.extensions["potability.model"].stop()
    app.extensions["potability.maintenance"].stop()
    app.extensions["potability.log"].close()
    app.extensions["potability.rollups"].close()
    app.extensions["potability.ratelimit"].close()
