"""Every answered prediction lands in ``water.water_inferences``: batched, off the request path.

One durable path. A request's answers (one ``AnsweredBatch``: columns, not a
tuple per row) are appended to the worker's journal (``serve/journal.py``)
before they are answered; the in-memory queue holds the same records, so the
writer thread need not read them back. The writer ships them by COPY every
``log_flush_seconds`` (or at ``log_batch_rows``) and releases them from the
journal once stored. When Postgres refuses them, the journal's segments are
sealed into the spool (a rename: the same file, the same format) and dropped
from memory; they are replayed from there once Postgres is back, and so are
the journals of dead workers, adopted on start and with every replay check.
The writer probes Postgres every ``spool_replay_seconds`` whatever error it
gave.

``submit`` refuses a request (``LogUnavailable``, a 503 to the client) when
the queue is full or when the journal cannot take it (disk full, directory
gone, the log's disk cap ``spool_max_bytes`` reached): an answer is only given
once its record is on disk. ``close()`` (gunicorn's worker_exit) flushes what
is left.

A sensor's reading is logged under its own key (``sensor/readings.py``), and
the server refuses a resend with other measurements (a 409, ``serve/api.py``)
by looking the key up in Postgres: which cannot see what this worker answered
and has not stored yet (queued, or spooled while Postgres is down). So
``submit`` also checks the readings this worker answered and Postgres does not
have from it yet (``ReadingConflict``), in the submit lock: two requests never
both pass. What still slips through (another worker's answer while Postgres is
down; a flush between the lookup and ``submit``) is refused when it is stored
(``ConflictingRows``), and the spool's replay keeps it in quarantine.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from potability.config import Settings
from potability.errors import MartError
from potability.inference_store import AnsweredBatch, ConflictingRows, InferenceStore
from potability.schema import FEATURE_COLUMNS
from potability.serve.journal import Journal, JournalUnavailable
from potability.serve.spool import Spool, encode

log = logging.getLogger(__name__)
# one replay pass holds the writer this long at most; the rest waits for the next pass
REPLAY_BUDGET_SECONDS = 1.0
# the smallest record a request makes (one answer): readiness wants room for one more
ONE_ROW_BYTES = len(
    encode(
        AnsweredBatch(
            ["00000000-0000-0000-0000-000000000000"],
            datetime.now(UTC),
            "",
            "",
            np.zeros((1, len(FEATURE_COLUMNS))),
            np.zeros(1),
            0.5,
        )
    )
)


class LogUnavailable(Exception):
    """The request cannot be journalled (queue full, disk full or capped): it is not answered."""


class ReadingConflict(Exception):
    """Row ``index`` names a reading this worker answered with other measurements, not stored yet."""

    def __init__(self, index: int):
        super().__init__(f"row {index} names a reading answered with other measurements")
        self.index = index


Key = tuple[str, int]  # a row's key in the log: inference id, received_at in microseconds


def reading_keys(batch: AnsweredBatch) -> list[Key]:
    """The log's key of each row of a batch that carries readings (none for one that does not)."""
    if batch.logged_at is None:  # fresh ids and the server's clock: never sent again
        return []
    ids = (str(i).lower() for i in batch.inference_ids)
    return list(zip(ids, batch.microseconds().tolist(), strict=True))


class InferenceLog:
    def __init__(
        self,
        store: InferenceStore,
        journal: Journal,
        flush_seconds: float,
        batch_rows: int,
        replay_seconds: float,
        on_depth: Callable[[int], None] | None = None,
        max_queue_rows: int = 50_000,
        spooled_readings_kept: int = 50_000,
    ):
        self._store, self.journal, self.spool = store, journal, journal.spool
        self._flush_seconds = flush_seconds
        self._batch_rows = batch_rows
        self._replay_seconds = replay_seconds
        self.max_queue_rows = max_queue_rows
        # readings this worker spooled, remembered for the 409 until the spool drains; past it
        # the oldest are forgotten: a changed resend of one is then kept aside at replay
        self._spooled_readings_kept = spooled_readings_kept
        # the journal's records not yet stored nor sealed, in its order (whole requests)
        self._queue: collections.deque[AnsweredBatch] = collections.deque()
        self._queued_rows = 0
        # the measurements of each reading answered and not yet stored: queued, or spooled by
        # this worker and not yet replayed (insertion order: the oldest are forgotten first)
        self._queued_readings: dict[Key, np.ndarray] = {}
        self._spooled_readings: dict[Key, np.ndarray] = {}
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._on_depth = on_depth
        self._spooled = self.spool.depth()
        self._last_replay = 0.0
        # None: adopt dead workers' journals at the next flush
        self._last_adopt: float | None = None
        self._last_probe = 0.0
        self.db_ok = True
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._wake.set()  # the first flush at once: it adopts the journals of dead workers
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def submit(self, batch: AnsweredBatch) -> None:
        """Journal one request's answers, or raise if they must not be answered.

        Raises:
            LogUnavailable: they could not be kept (queue full, journal refused).
            ReadingConflict: a reading of theirs is answered, not stored yet, with
                other measurements.
        """
        keys = reading_keys(batch)
        with self._submit_lock:
            self._refuse_changed(keys, batch.features)
            queued = self._queued_rows + len(batch)
            if queued > self.max_queue_rows:
                raise LogUnavailable(
                    f"the inference log is full ({self._queued_rows} rows waiting in memory)"
                )
            try:
                self.journal.append(batch)
            except JournalUnavailable as exc:
                raise LogUnavailable(str(exc)) from None
            self._queue.append(batch)
            self._queued_rows = queued
            for key, row in zip(keys, batch.features[: len(keys)], strict=True):
                self._queued_readings.setdefault(key, row)  # none for a batch without readings
        if queued >= self._batch_rows:
            self._wake.set()

    def _refuse_changed(self, keys: list[Key], features: np.ndarray) -> None:
        """``ReadingConflict`` for the first row whose reading was answered, unstored, with others."""
        for k, key in enumerate(keys):
            answered = self._queued_readings.get(key)
            if answered is None:
                answered = self._spooled_readings.get(key)
            if answered is not None and not np.array_equal(answered, features[k], equal_nan=True):
                raise ReadingConflict(k)

    def _forget_readings(self, keys: list[Key], spooled: bool) -> None:
        """Readings that left the queue: stored (forgotten) or spooled (kept until the spool drains)."""
        for key in keys:
            row = self._queued_readings.pop(key, None)
            if spooled and row is not None:
                self._spooled_readings[key] = row.copy()  # not a view keeping its batch
        while len(self._spooled_readings) > self._spooled_readings_kept:
            del self._spooled_readings[next(iter(self._spooled_readings))]

    @property
    def accepting(self) -> bool:
        """Whether a new answer would be logged (readiness)."""
        return self._queued_rows < self.max_queue_rows and self.journal.has_room(ONE_ROW_BYTES)

    @property
    def queued(self) -> int:
        return self._queued_rows

    @property
    def spooled(self) -> int:
        return self._spooled

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
                failing = False
            except Exception as exc:  # e.g. the disk refused a seal: keep the writer alive
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not failing:  # once per episode, not every flush
                    log.warning(
                        "inference log: flush failed (%s); retrying every %.1f s",
                        exc,
                        self._flush_seconds,
                    )
                failing = True

    def flush(self) -> None:
        """Store what is queued (else seal it into the spool); replay the spool when due."""
        with self._flush_lock:
            try:
                self._adopt_orphans()
                if self._spooled and time.monotonic() - self._last_replay >= self._replay_seconds:
                    self._replay()  # also the probe that notices Postgres is back
                while self._queue:
                    chunk = self._head()
                    if not self._write(chunk):
                        self._seal()
                        break
                    stored = [key for batch in chunk for key in reading_keys(batch)]
                    with self._submit_lock:  # stored: out of memory and out of the journal
                        for _ in chunk:
                            self._queue.popleft()
                        self._queued_rows -= sum(map(len, chunk))
                        self.journal.release(len(chunk))
                        self._forget_readings(stored, spooled=False)
            finally:
                self.journal.refresh_room()
                if self._on_depth:
                    self._on_depth(self._queued_rows)

    def _head(self) -> list[AnsweredBatch]:
        """Whole requests from the queue's head, up to ``batch_rows`` rows (at least one request).

        They stay queued until stored or sealed: only this (the flush lock's) thread takes.
        """
        chunk, rows = [], 0
        with self._submit_lock:
            for batch in self._queue:
                if chunk and rows + len(batch) > self._batch_rows:
                    break
                chunk.append(batch)
                rows += len(batch)
        return chunk

    def _seal(self) -> None:
        """Postgres refused: the journal's segments (every queued record) go to the spool."""
        with self._submit_lock:  # no request is journalled meanwhile: the queue is the journal's
            sealed = [self._queue.popleft() for _ in range(self.journal.seal())]
            self._queued_rows -= sum(map(len, sealed))  # in the spool now: out of memory
            self._forget_readings([k for b in sealed for k in reading_keys(b)], spooled=True)
            left = len(self._queue)
        self._spooled = self.spool.depth()
        if left:  # the disk refused a move: they stay journalled and queued, tried again next flush
            raise OSError(f"{left} journalled request(s) could not be moved into the spool")

    def _adopt_orphans(self) -> None:
        """Move dead workers' journals into the spool (on start, then every replay interval)."""
        now = time.monotonic()
        if self._last_adopt is not None and now - self._last_adopt < self._replay_seconds:
            return
        self._last_adopt = now
        try:
            adopted = self.journal.adopt_orphans()
        except OSError:  # never keep the queue from Postgres: the files wait for the next try
            log.exception("inference log: could not adopt dead workers' journals")
            return
        if adopted:
            self._spooled = self.spool.depth()
            self._last_replay = 0.0  # replay them now

    def _write(self, chunk: list[AnsweredBatch]) -> bool:
        """Store ``chunk`` in Postgres; False when it is down (or not due for a probe yet)."""
        now = time.monotonic()
        if not self.db_ok and now - self._last_probe < self._replay_seconds:
            return False
        self._last_probe = now
        try:
            self._store.write(chunk, fresh=True)
        except ConflictingRows as exc:  # Postgres is fine: the replay keeps those rows aside
            log.error("inference log: %s; the batch goes by the spool, which quarantines them", exc)
            self._last_replay = 0.0
            return False
        except MartError as exc:
            if self.db_ok:
                log.warning(
                    "inference log: %s; spooling to %s until it is back", exc, self.spool.directory
                )
            self.db_ok, self.last_error = False, str(exc)
            return False
        except Exception as exc:  # never lose an answered row to an error we did not foresee
            log.exception("inference log: unexpected error writing to Postgres; spooling the batch")
            self.db_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
            return False
        if not self.db_ok:
            log.info("inference log: Postgres is back")
        self.db_ok, self.last_error = True, None
        return True

    def _replay(self) -> None:
        self._last_replay = time.monotonic()
        try:
            written, _ = self.spool.replay(
                self._store.write,
                chunk_rows=max(self._batch_rows, 1000),
                budget_seconds=REPLAY_BUDGET_SECONDS,
            )
        except MartError as exc:  # still down: the file stays for the next try
            self.db_ok, self.last_error = False, str(exc)
            self._spooled = self.spool.depth()
            return
        except Exception as exc:  # a read-only standby, a missing privilege...: the files wait
            text = f"{type(exc).__name__}: {str(exc).strip()}"
            if text != self.last_error:  # once per cause, not every replay interval
                log.error("inference log: spool replay stopped, the files wait: %s", text)
            self.db_ok, self.last_error = False, text
            self._spooled = self.spool.depth()
            return
        if not self.db_ok or written:
            log.info("inference log: Postgres is back; replayed %d spooled row(s)", written)
        self.db_ok, self.last_error = True, None
        self._spooled = self.spool.depth()
        if not self.spool.size():  # none waiting nor being replayed: all in Postgres or quarantine
            with self._submit_lock:
                self._spooled_readings.clear()
        if self._spooled:
            self._last_replay = 0.0  # more to replay (budget spent, or another worker's new file)
            self._wake.set()

    def close(self) -> None:
        """Stop the writer and flush the queue (graceful shutdown loses nothing)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
        self.journal.close()


def open_log(
    store: InferenceStore,
    directory: Path,
    settings: Settings,
    on_depth: Callable[[int], None] | None = None,
    on_quarantine: Callable[[Path, str], None] | None = None,
) -> InferenceLog:
    """The worker's inference log, with its durable files under ``directory`` (the one path the
    server's app factory takes to build it): ``journal/`` (the workers' open segments),
    ``spool-*`` (segments waiting for Postgres) and ``quarantine/``, nothing else."""
    spool = Spool(directory, settings.spool_max_bytes, on_quarantine)
    journal = Journal(spool, settings.log_journal_fsync, settings.log_journal_segment_bytes)
    return InferenceLog(
        store,
        journal,
        settings.log_flush_seconds,
        settings.log_batch_rows,
        settings.spool_replay_seconds,
        on_depth=on_depth,
        max_queue_rows=settings.log_queue_max_rows,
        spooled_readings_kept=settings.log_spooled_readings_kept,
    )
