"""The public quality page (``/``, ``/model``) and its JSON twins (``/v1/stats/...``).

Read-only, open by default (a setting can require a token); it shows no tokens
and no raw sensor inputs, only aggregates. Requests are answered from the page
cache (``serve/page_cache.py``) that the renderer process keeps fresh, so a page
load costs a worker well under a millisecond; ``render_all`` is the renderer's
cycle, ``render_entry`` a worker's fallback.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Blueprint, current_app, render_template, request

from potability import deployments, quality
from potability.config import load_params
from potability.errors import MartError
from potability.serve import context
from potability.serve.errors import ApiError
from potability.serve.page_cache import Entry, PageCache, RenderBusy, RenderFailed, rendered

log = logging.getLogger(__name__)
bp = Blueprint("page", __name__)
DATABASE_UNAVAILABLE = "database unavailable"
PAGE_KEY = "page"  # `/` and `/model` are one page
PAGE_DEFAULTS = quality.PAGE_DEFAULTS


def page_params() -> dict[str, Any]:
    """The page's numbers from params.yaml (``page:``), read once per app."""
    cached = current_app.extensions.get("potability.page_params")
    if cached is None:
        try:
            cached = {
                **PAGE_DEFAULTS,
                **load_params(context.settings().params_path).get("page", {}),
            }
        except FileNotFoundError:
            cached = dict(PAGE_DEFAULTS)
        current_app.extensions["potability.page_params"] = cached
    return cached


def _check_access() -> None:
    if context.settings().page_requires_token:
        from potability.serve.auth import require

        require("sensor", "lab", "admin")(lambda: None)()


def _production():
    return context.part(context.MODEL).current


def model_panel() -> dict[str, Any]:
    holder = context.part(context.MODEL)
    production = holder.current
    card = quality.model_card(production.meta if production else None, holder.history())
    try:
        shipped = deployments.history(context.settings().registered_model, url=_mart().url)
        card["deployments"] = [d.as_dict() for d in shipped]
        served = production.meta.get("registered_version") if production else None
        # the commit holding the dvc.lock that made the served version: its lineage, on the card
        card["commit"] = next(
            (d.lock_commit for d in shipped if d.registry_version == served and d.lock_commit), None
        )
    except MartError as exc:
        card["deployments_error"] = unavailable(exc)
    return card


def unavailable(exc: MartError) -> str:
    """What the open page says of a database error: that it happened, never where the database is.

    The driver's text names the host, socket path, user and port; the server's log keeps it.
    """
    log.warning("page: %s", exc)
    return DATABASE_UNAVAILABLE


def _mart():
    return context.part(context.MART)


def _rollups():
    return context.part(context.ROLLUPS)


def _as_of(newest: datetime | None) -> str | None:
    """The newest row a panel's rollup covers, so the page can say how fresh it is."""
    return newest.isoformat() if newest else None


def live_panel() -> dict[str, Any]:
    since = datetime.now(UTC) - timedelta(days=page_params()["live_days"])
    hourly, newest = _rollups().hourly(since)
    return {
        "days": page_params()["live_days"],
        "as_of": _as_of(newest),
        **quality.live_summary(hourly),
    }


def agreement_panel() -> dict[str, Any]:
    confusion, newest = _rollups().lab_confusion()
    # the window the matches were made with: db migrate's, which a server's params.yaml cannot change
    minutes = _rollups().lab_match_window() or page_params()["lab_match_minutes"]
    agreement = quality.agreement_from_confusion(**confusion)
    return {"window_minutes": minutes, "as_of": _as_of(newest), **agreement}


def drift_panel() -> dict[str, Any]:
    params = page_params()
    production = _production()
    profile = (production.meta.get("reference") if production else None) or {}
    if not profile:
        return {
            "rows": 0,
            "threshold": params["drift_psi_threshold"],
            "features": [],
            "as_of": None,
            "note": "no training profile in the served model yet",
        }
    since = datetime.now(UTC) - timedelta(days=params["live_days"])
    edges = {name: ref["edges"] for name, ref in profile.items() if ref}
    counts, rows, newest = _rollups().feature_counts(production.version, edges, since)
    report = quality.drift_from_counts(profile, counts, rows, params["drift_psi_threshold"])
    return {**report, "as_of": _as_of(newest)}


PANELS = {
    "model": model_panel,
    "live": live_panel,
    "agreement": agreement_panel,
    "drift": drift_panel,
}


def _panel(name: str) -> dict[str, Any]:
    try:
        return PANELS[name]()
    except MartError as exc:
        return {"error": unavailable(exc)}


def stats_key(name: str) -> str:
    return f"stats-{name}"


def _json_entry(panel: dict[str, Any]) -> tuple[bytes, str, int]:
    return current_app.json.dumps(panel).encode(), "application/json", 200


def _page_as_of(panels: dict[str, dict[str, Any]], rendered_at: datetime) -> str:
    """The oldest of the panels' own ``as_of`` stamps (rollups lag the log), else the render time."""
    stamps = []
    for panel in panels.values():
        value = panel.get("as_of")
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                continue
        if isinstance(value, datetime):
            stamps.append(value if value.tzinfo else value.replace(tzinfo=UTC))
    return _stamp(min([*stamps, rendered_at]))


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _page_entry(panels: dict[str, dict[str, Any]]) -> tuple[bytes, str, int]:
    from potability.serve import charts

    now = datetime.now(UTC)
    live, drift = panels["live"], panels["drift"]
    html = render_template(
        "page.html",
        card=panels["model"],
        live=live,
        agreement=panels["agreement"],
        drift=drift,
        live_chart=charts.answers_per_hour(live.get("hourly", [])),
        drift_chart=charts.drift_bars(drift.get("features", []), drift.get("threshold", 0.2)),
        as_of=_page_as_of(panels, now),
        generated_at=_stamp(now),
        refresh_seconds=context.settings().page_refresh_seconds,
    )
    return html.encode(), "text/html; charset=utf-8", 200


def render_entry(key: str) -> Entry:
    """Render one cache entry here and now (a worker's fallback when the renderer's copy is missing).

    Raises:
        RenderFailed: a panel met a database error (down, or past the statement
            timeout); the page cache answers its last copy instead.
    """
    panels: dict[str, dict[str, Any]] = {}
    if key == PAGE_KEY:

        def page() -> tuple[bytes, str, int]:
            panels.update({name: _panel(name) for name in PANELS})
            return _page_entry(panels)

        entry = rendered(page)
    else:
        name = key.removeprefix("stats-")
        entry = rendered(lambda: _json_entry(panels.setdefault(name, _panel(name))))
    if any("error" in panel for panel in panels.values()):
        raise RenderFailed(entry)
    return entry


def render_all() -> dict[str, Entry]:
    """Every entry, each panel computed once (the renderer's cycle); needs an app and request context."""
    panels: dict[str, dict[str, Any]] = {}
    entries: dict[str, Entry] = {}
    for name in PANELS:

        def one(name: str = name) -> tuple[bytes, str, int]:
            panels[name] = _panel(name)
            return _json_entry(panels[name])

        entries[stats_key(name)] = rendered(one)
    page = rendered(lambda: _page_entry(panels))
    # the page costs its panels plus its template: its Server-Timing says so
    total = round(page.render_ms + sum(e.render_ms for e in entries.values()), 1)
    entries[PAGE_KEY] = Entry(page.body, page.content_type, page.status, page.rendered_at, total)
    return entries


def _cached(key: str):
    """Answer ``key`` from the page cache, with validators so browsers and proxies can help."""
    cache: PageCache = context.part(context.PAGE_CACHE)
    try:
        entry = cache.get(key, lambda: render_entry(key))
    except RenderBusy:
        raise ApiError(
            503,
            "page_rendering",
            "the page is being rendered for the first time; retry in a second",
            headers={"Retry-After": "1"},
        ) from None
    response = current_app.response_class(
        entry.body, status=entry.status, content_type=entry.content_type
    )
    response.set_etag(entry.etag)
    response.last_modified = datetime.fromtimestamp(entry.rendered_at, UTC)
    settings = context.settings()
    max_age = max(0, round(settings.page_refresh_seconds - entry.age()))
    scope = "private" if settings.page_requires_token else "public"
    response.headers["Cache-Control"] = f"{scope}, max-age={max_age}"
    response.headers["Server-Timing"] = f"render;dur={entry.render_ms}"
    return response.make_conditional(request)


@bp.get("/v1/stats/<name>")
def stats(name: str):
    _check_access()
    if name not in PANELS:
        raise ApiError(
            404, "not_found", f"no panel {name!r}; try one of {', '.join(PANELS)}", field="name"
        )
    return _cached(stats_key(name))


@bp.get("/")
@bp.get("/model")
def page():
    _check_access()
    return _cached(PAGE_KEY)
