"""The public quality page (``/``, ``/model``) and its JSON twins (``/v1/stats/...``).

Read-only, open by default (a setting can require a token); it shows no tokens
and no raw sensor inputs, only aggregates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Blueprint, current_app, render_template

from potability import deployments, quality
from potability.config import load_params
from potability.errors import MartError
from serve.errors import ApiError

bp = Blueprint("page", __name__)
PAGE_DEFAULTS = quality.PAGE_DEFAULTS


def page_params() -> dict[str, Any]:
    """The page's numbers from params.yaml (``page:``), read once per app."""
    cached = current_app.extensions.get("potability.page_params")
    if cached is None:
        try:
            cached = {
                **PAGE_DEFAULTS,
                **load_params(Path(current_app.config["PARAMS_PATH"])).get("page", {}),
            }
        except FileNotFoundError:
            cached = dict(PAGE_DEFAULTS)
        current_app.extensions["potability.page_params"] = cached
    return cached


def _check_access() -> None:
    if current_app.config["PAGE_REQUIRES_TOKEN"]:
        from serve.auth import require

        require("sensor", "lab", "admin")(lambda: None)()


def _production():
    return current_app.extensions["potability.model"].current


def model_panel() -> dict[str, Any]:
    holder = current_app.extensions["potability.model"]
    production = holder.current
    card = quality.model_card(production.meta if production else None, holder.history())
    try:
        shipped = deployments.history(current_app.config["REGISTERED_MODEL"], url=_mart().url)
        card["deployments"] = [d.as_dict() for d in shipped]
    except MartError as exc:
        card["deployments_error"] = f"the database is unavailable: {exc}"
    return card


def _mart():
    return current_app.extensions["potability.mart"]


def _rollups():
    return current_app.extensions["potability.rollups"]


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
    minutes = page_params()["lab_match_minutes"]
    agreement = quality.agreement_from_confusion(**confusion)
    return {"window_minutes": minutes, "as_of": _as_of(newest), **agreement}


def drift_panel() -> dict[str, Any]:
    params = page_params()
    production = _production()
    profile = (production.meta.get("reference") if production else None) or {}
    if not profile:
        return {"rows": 0, "threshold": params["drift_psi_threshold"], "features": [], "as_of": None,
                "note": "no training profile in the served model yet"}  # fmt: skip
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
        return {"error": f"the database is unavailable: {exc}"}


@bp.get("/v1/stats/<name>")
def stats(name: str):
    _check_access()
    if name not in PANELS:
        raise ApiError(
            404, "not_found", f"no panel {name!r}; try one of {', '.join(PANELS)}", field="name"
        )
    return _panel(name)


@bp.get("/")
@bp.get("/model")
def page():
    from serve import charts

    _check_access()
    started = time.perf_counter()
    panels = {name: _panel(name) for name in PANELS}
    live, drift = panels["live"], panels["drift"]
    return render_template(
        "page.html",
        card=panels["model"], live=live, agreement=panels["agreement"], drift=drift,
        live_chart=charts.answers_per_hour(live.get("hourly", [])),
        drift_chart=charts.drift_bars(drift.get("features", []), drift.get("threshold", 0.2)),
        generated_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        render_ms=round((time.perf_counter() - started) * 1000),
    )  # fmt: skip
