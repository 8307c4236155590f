"""The server's log maintenance: partitions ahead, retention, the served model's bins; hourly.

Every worker runs this thread; a Postgres advisory lock (in
``log_maintenance.maintain``) lets one of them work at a time, on any number of
hosts. A model swap wakes it at once, so a newly served version's answers are
binned for the drift panel even if ``potability deploy`` did not register it.
A failed run is logged and retried at the next interval: maintenance never
takes a sensor's answer down with it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import psycopg2

from potability import log_maintenance, rollups
from potability.artifacts import ServedModel
from potability.config import Settings
from potability.errors import MartError

log = logging.getLogger(__name__)


class Maintenance:
    def __init__(
        self,
        url: str,
        settings: Settings,
        window_minutes: int,
        current_model: Callable[[], ServedModel | None],
        interval_seconds: float,
    ):
        self._url, self._settings, self._window = url, settings, window_minutes
        self._current_model = current_model
        self._interval = interval_seconds
        self._registered: set[str] = set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="log-maintenance", daemon=True)
        self._thread.start()

    def model_changed(self, old: ServedModel | None = None, new: ServedModel | None = None) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run_once(self) -> log_maintenance.MaintenanceReport:
        """Register the served model's bin edges (once per version), then maintain the log."""
        served = self._current_model()
        reference = (served.meta.get("reference") if served else None) or {}
        if served is not None and reference and served.version not in self._registered:
            if rollups.register_edges(self._url, served.version, reference):
                log.info("drift bins of %s registered; its logged answers counted", served.version)
            self._registered.add(served.version)
        return log_maintenance.maintain(self._settings, self._url, self._window)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.run_once()
            except (MartError, psycopg2.Error, ValueError) as exc:
                log.warning("log maintenance failed (retried in %.0f s): %s", self._interval, exc)
            self._wake.wait(self._interval)
