"""The served model: loaded once, checked fully, swapped atomically, never per request.

A watcher notices a new ``models/production/`` (the pipeline swaps the whole
directory) and reloads; ``POST /admin/reload`` does it at once. A corrupt or
mismatched artifact is refused and the old model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from potability.artifacts import (
    META_FILE,
    MODEL_FILE,
    ArtifactError,
    ProductionModel,
    load_production,
)

log = logging.getLogger(__name__)


class ModelHolder:
    def __init__(self, directory: Path, poll_seconds: float, on_swap=None):
        self.directory = directory
        self.current: ProductionModel | None = None
        self.last_error: str | None = None
        self._poll = poll_seconds
        self._on_swap = on_swap
        self._seen: tuple | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _signature(self) -> tuple | None:
        try:
            return tuple((p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
                         for p in (self.directory / META_FILE, self.directory / MODEL_FILE))  # fmt: skip
        except FileNotFoundError:
            return None

    def reload(self) -> ProductionModel:
        """Load, check and swap in the model on disk; raise ArtifactError and keep the old one if bad."""
        with self._lock:
            signature = self._signature()
            try:
                candidate = load_production(self.directory)
            except ArtifactError as exc:
                self.last_error = str(exc)
                self._seen = signature  # do not retry the same broken files every poll
                serving = self.current.version if self.current else "nothing"
                log.error("model reload refused: %s; still serving %s", exc, serving)
                raise
            old = self.current
            self.current = (
                candidate  # one reference assignment: requests see old or new, never a mix
            )
            self._seen, self.last_error = signature, None
            if old is None or old.version != candidate.version:
                log.info(
                    "serving model %s (%s, threshold %.3f)",
                    candidate.version,
                    candidate.meta.get("kind"),
                    candidate.threshold,
                )
            if self._on_swap:
                self._on_swap(old, candidate)
            return candidate

    def start_watching(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            signature = self._signature()
            if signature is not None and signature != self._seen:
                try:
                    self.reload()
                except ArtifactError:
                    pass  # logged in reload(); the old model keeps serving
