"""Keep the partitioned inference log in shape: days created ahead, old days dropped, the match window set.

The SQL functions of migrations 004/005 do the work; this module decides when
and with which numbers (Settings, params.yaml) and says what happened.
``potability db migrate`` calls :func:`prepare` and :func:`record_retention` in
its transaction; ``potability log maintain`` and the server's hourly thread call
:func:`maintain`. Retention is the owner's: what ``db migrate`` recorded is the
least any other caller (a server's role) keeps, whatever it asks for.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2.errors

from potability import db
from potability.config import Settings, get_settings, load_params
from potability.quality import PAGE_DEFAULTS

log = logging.getLogger(__name__)

# advisory lock id: one maintenance at a time, across workers and hosts
MAINTENANCE_LOCK_KEY = 727_405


@dataclass
class MaintenanceReport:
    """What one maintenance run did."""

    created: list[str] = field(default_factory=list)  # partitions created ahead
    dropped: list[str] = field(default_factory=list)  # partitions (or default rows) past retention
    window_minutes: int | None = None
    window_changed: bool = False
    retention_days: int | None = None  # what retention kept: the request, or the owner's floor
    requested_days: int | None = None
    skipped: str | None = None  # why nothing was done (another run holds the lock, lock timeout)

    def lines(self) -> list[str]:
        if self.skipped:
            return [f"skipped: {self.skipped}"]
        lines = [
            f"partitions created: {', '.join(self.created) or 'none (all there already)'}",
            f"dropped past retention: {', '.join(self.dropped) or 'nothing'}",
            f"lab-match window: {self.window_minutes} min"
            + (" (changed: lab samples matched again)" if self.window_changed else ""),
        ]
        if self.retention_days is not None and self.retention_days != self.requested_days:
            lines.append(
                f"retention: {_days(self.retention_days)}, not the {_days(self.requested_days)} "
                "asked for (the database keeps what `potability db migrate` recorded; "
                "only its owner may drop sooner)"
            )
        return lines


def _days(days: int | None) -> str:
    if not days:
        return "keep forever"
    return f"{days} day" if days == 1 else f"{days} days"


def lab_match_minutes(params_path: Path) -> int:
    """``page.lab_match_minutes`` from params.yaml (the page's default without a checkout)."""
    try:
        page = load_params(params_path).get("page") or {}
    except FileNotFoundError:
        page = {}
    minutes = page.get("lab_match_minutes", PAGE_DEFAULTS["lab_match_minutes"])
    if not isinstance(minutes, int) or minutes <= 0:
        raise ValueError(
            f"params.yaml page.lab_match_minutes must be a positive whole number, got {minutes!r}"
        )
    return minutes


def prepare(cur: Any, settings: Settings, window_minutes: int | None = None) -> MaintenanceReport:
    """Create partitions ahead and set the lab-match window, inside the caller's transaction."""
    minutes = window_minutes or lab_match_minutes(settings.params_path)
    cur.execute(
        "SELECT water.ensure_inference_partitions(%s)", (settings.log_partitions_ahead_days,)
    )
    created = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT water.set_lab_match_window(%s)", (minutes,))
    changed = bool(cur.fetchone()[0])
    return MaintenanceReport(created=created, window_minutes=minutes, window_changed=changed)


def record_retention(cur: Any, settings: Settings) -> bool:
    """Record ``POTABILITY_LOG_RETENTION_DAYS`` as the database's retention (the owner's, in ``db migrate``).

    Every caller but the owner keeps at least this many days (migration 009);
    returns whether it changed.
    """
    cur.execute(
        "UPDATE water.log_retention SET keep_days = %s, set_at = now() WHERE keep_days <> %s",
        (settings.log_retention_days, settings.log_retention_days),
    )
    return cur.rowcount > 0


def maintain(
    settings: Settings | None = None, url: str | None = None, window_minutes: int | None = None
) -> MaintenanceReport:
    """Partitions ahead, retention (``POTABILITY_LOG_RETENTION_DAYS``), lab matches; one run at a time.

    Lab rows added since the last runs are matched again: a lab row and an
    answer near it committed at the same moment miss each other in the triggers.

    Partition DDL needs a short exclusive lock on the log; ``lock_timeout``
    bounds how long the log writer can wait behind it (the run is then skipped
    and retried next time) instead of stalling answers.
    """
    settings = settings or get_settings()
    with db.advisory_lock(MAINTENANCE_LOCK_KEY, settings, url) as acquired:
        if not acquired:
            return MaintenanceReport(skipped="another maintenance run holds the lock")
        try:
            with db.transaction(settings, url) as conn, conn.cursor() as cur:
                timeout_ms = int(settings.log_maintenance_lock_timeout_seconds * 1000)
                cur.execute("SELECT set_config('lock_timeout', %s, true)", (f"{timeout_ms}ms",))
                report = prepare(cur, settings, window_minutes)
                cur.execute(
                    "SELECT water.drop_inference_partitions(%s)", (settings.log_retention_days,)
                )
                report.dropped = [r[0] for r in cur.fetchall()]
                cur.execute(
                    "SELECT water.allowed_retention_days(%s)", (settings.log_retention_days,)
                )
                report.retention_days = cur.fetchone()[0]
                report.requested_days = settings.log_retention_days
                # twice the interval: a run that was skipped or late leaves no lab row unmatched
                cur.execute(
                    "SELECT water.rematch_lab_samples(now() - make_interval(secs => %s))",
                    (2 * settings.log_maintenance_seconds,),
                )
        except psycopg2.errors.LockNotAvailable:
            return MaintenanceReport(
                skipped=f"the log stayed locked past {settings.log_maintenance_lock_timeout_seconds} s; "
                "retry later"
            )
    for line in report.lines():
        log.info("log maintenance: %s", line)
    if report.retention_days != report.requested_days:
        log.warning("log maintenance: %s", report.lines()[-1])
    return report
