"""Keep the partitioned inference log in shape: days created ahead, old days dropped, the match window set.

The SQL functions of migrations 004/005 do the work; this module decides when
and with which numbers (Settings, params.yaml) and says what happened.
``potability db migrate`` calls :func:`prepare`, :func:`record_retention` and
:func:`record_limits` in its transaction; ``potability log maintain`` and the
server's hourly thread call :func:`maintain`. Retention, the days created ahead, how far back lab rows are
matched again and the lab-match window are the owner's: any other caller (a
server's role) keeps at least the retention ``db migrate`` recorded, creates at
most its days ahead, matches again at most its seconds back (migrations 009 and
010, :func:`record_limits`) and leaves the window as ``db migrate`` set it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2.errors
from psycopg2 import sql

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
    requested_window: int | None = None  # params.yaml's, when only the owner may set it
    ahead_days: int | None = None  # what the partitions ahead were: the request, or the owner's cap
    requested_ahead: int | None = None
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
        if self.ahead_days is not None and self.ahead_days != self.requested_ahead:
            lines.append(
                f"partitions ahead: {_days(self.ahead_days, 'none')}, not the "
                f"{_days(self.requested_ahead, 'none')} asked for (the most `potability db "
                "migrate` recorded; only the owner may create more)"
            )
        if self.requested_window is not None and self.requested_window != self.window_minutes:
            lines.append(
                f"lab-match window: params.yaml says {self.requested_window} min; the database "
                f"matches within the {self.window_minutes} min `potability db migrate` set "
                "(only the owner changes it)"
            )
        # a request of 0 is no preference of this host's: the database's recorded retention applies
        if self.requested_days and self.retention_days not in (None, self.requested_days):
            lines.append(
                f"retention: {_days(self.retention_days)}, not the {_days(self.requested_days)} "
                "asked for (the database keeps what `potability db migrate` recorded; "
                "only its owner may drop sooner)"
            )
        return lines


def _days(days: int | None, zero: str = "keep forever") -> str:
    if not days:
        return zero
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


def _granted(cur: Any, function: str, requested: int) -> int | None:
    """What the log's ``allowed_*`` ``function`` grants this caller for ``requested``, for the report.

    None when the caller may not ask (a role made before the function, as during an upgrade):
    the report then says nothing of it, and the maintenance itself goes on (the functions
    that act check the limits as their owner).
    """
    signature = f"water.{function}(integer)"
    cur.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (signature,))
    if not cur.fetchone()[0]:
        return None
    cur.execute(sql.SQL("SELECT water.{}(%s)").format(sql.Identifier(function)), (requested,))
    return cur.fetchone()[0]


def prepare(cur: Any, settings: Settings, window_minutes: int | None = None) -> MaintenanceReport:
    """Create partitions ahead and set the lab-match window, inside the caller's transaction.

    A caller other than the owner (a server's role) gets at most the days ahead
    ``db migrate`` recorded and may not set the window: the report says so
    when its own settings ask for something else.
    """
    minutes = window_minutes or lab_match_minutes(settings.params_path)
    ahead = settings.log_partitions_ahead_days
    cur.execute("SELECT water.ensure_inference_partitions(%s)", (ahead,))
    created = [r[0] for r in cur.fetchall()]
    report = MaintenanceReport(
        created=created,
        ahead_days=_granted(cur, "allowed_partitions_ahead", ahead),
        requested_ahead=ahead,
    )
    cur.execute("SELECT has_function_privilege('water.set_lab_match_window(integer)', 'EXECUTE')")
    if cur.fetchone()[0]:
        cur.execute("SELECT water.set_lab_match_window(%s)", (minutes,))
        report.window_minutes, report.window_changed = minutes, bool(cur.fetchone()[0])
    else:
        cur.execute("SELECT window_minutes FROM water.lab_match_config")
        row = cur.fetchone()
        report.window_minutes, report.requested_window = (row[0] if row else None), minutes
    return report


def rematch_seconds(settings: Settings) -> float:
    """How far back maintenance matches lab rows again: twice its interval (a run skipped or late)."""
    return 2 * settings.log_maintenance_seconds


def record_limits(cur: Any, settings: Settings) -> None:
    """Record the days ahead and the rematch's reach as what any caller but the owner gets (``db migrate``)."""
    cur.execute(
        "UPDATE water.log_limits SET partitions_ahead_days = %s, rematch_seconds = %s, "
        "set_at = now()",
        (settings.log_partitions_ahead_days, rematch_seconds(settings)),
    )


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
                report.retention_days = _granted(
                    cur, "allowed_retention_days", settings.log_retention_days
                )
                report.requested_days = settings.log_retention_days
                # twice the interval: a run that was skipped or late leaves no lab row unmatched
                cur.execute(
                    "SELECT water.rematch_lab_samples(now() - make_interval(secs => %s))",
                    (rematch_seconds(settings),),
                )
        except psycopg2.errors.LockNotAvailable:
            return MaintenanceReport(
                skipped=f"the log stayed locked past {settings.log_maintenance_lock_timeout_seconds} s; "
                "retry later"
            )
    for line in report.lines():
        log.info("log maintenance: %s", line)
    for line in report.lines()[3:]:  # what the owner's limits changed of this run's request
        log.warning("log maintenance: %s", line)
    return report
