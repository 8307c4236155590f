"""Operations endpoints: health, readiness, metrics, the OpenAPI document, and admin reload."""

from __future__ import annotations

import os

from flask import Blueprint, current_app

from potability.artifacts import ArtifactError
from potability.serve import context
from potability.serve.auth import require
from potability.serve.errors import ApiError
from potability.serve.metrics import exposition, on_scrape
from potability.serve.openapi import document
from potability.serve.page import DATABASE_UNAVAILABLE, PANELS

bp = Blueprint("ops", __name__)


@bp.get("/healthz")
def healthz():
    return {"status": "alive"}


@bp.get("/readyz")
def readyz():
    holder = context.part(context.MODEL)
    log = context.part(context.LOG)
    spool_writable = os.access(log.spool.directory, os.W_OK)
    # a worker that refuses every request for want of its journal must leave the load balancer
    journal_error = log.journal.check()
    status = {
        "model_loaded": holder.current is not None,
        "model_version": holder.current.version if holder.current else None,
        "model_source": holder.source,  # "cache": the registry was unreachable when it loaded
        "database": log.db_ok,
        "spool_writable": spool_writable,
        "log_accepting": log.accepting,
        "journal_ok": journal_error is None,
        "journal_error": journal_error,
        "queued_rows": log.queued,
        "spooled_rows": log.spooled,
        # open to anyone: what kind of trouble, never the driver's text (host, socket, user, port)
        "last_log_error": _public_log_error(log),
        "last_model_error": (
            "model reload refused (registry or artifact); see the server log"
            if holder.last_error
            else None
        ),
    }
    # ready = an answer would be given and logged: journalled first, within the disk cap
    ready = (
        status["model_loaded"]
        and (log.db_ok or spool_writable)
        and log.accepting
        and journal_error is None
    )
    return {"ready": ready, **status}, (200 if ready else 503)


def _public_log_error(log) -> str | None:
    if log.last_error is None:
        return None
    return DATABASE_UNAVAILABLE if not log.db_ok else "log writer error; see the server log"


@bp.get("/metrics")
def metrics():
    log = context.part(context.LOG)
    on_scrape(log.spool.depth(), log.journal.size())
    body, content_type = exposition()
    return current_app.response_class(
        body, mimetype=content_type.split(";")[0], content_type=content_type
    )


@bp.get("/openapi.json")
def openapi():
    return document(context.settings().max_batch, tuple(PANELS))


@bp.post("/admin/reload")
@require("admin")
def reload_model():
    holder = context.part(context.MODEL)
    before = holder.current.version if holder.current else None
    try:
        production = holder.reload()
    except ArtifactError as exc:
        raise ApiError(
            422, "bad_artifact", f"reload refused, still serving {before or 'nothing'}: {exc}"
        ) from None
    return {
        "version": production.version,
        "previous": before,
        "changed": production.version != before,
    }
