"""Every answered prediction lands in ``water.water_inferences``: batched, off the request path.

Requests only append their answers (one ``AnsweredBatch`` each: columns, not
a tuple per row) to a bounded in-memory queue. A writer thread flushes it by
COPY every ``log_flush_seconds`` (or at ``log_batch_rows``). When Postgres is
down the batch goes to the fsync'd spool and is replayed once it is back;
the writer probes Postgres every ``spool_replay_seconds`` whatever error it
gave. ``submit`` refuses rows (``LogUnavailable``, a 503 to the client) when
the queue is full, or when Postgres is down and the spool has no room: an
answer is only given once its row can reach Postgres or the disk. ``close()``
(gunicorn's worker_exit) flushes what is left.

A worker killed outright (SIGKILL: no ``close()``) would lose its queue, so
``submit`` first writes the request to the worker's journal
(``serve/journal.py``); the writer releases it once stored, and the journals of
dead workers are adopted into the spool on start and with every replay check.
A request that cannot be journalled (disk full) is refused like the others.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from potability.config import Settings
from potability.errors import MartError
from potability.inference_store import AnsweredBatch, InferenceStore
from potability.serve.journal import Journal, JournalUnavailable
from potability.serve.spool import Spool, SpoolFull

log = logging.getLogger(__name__)
# a spooled row on disk (crc + JSON of 16 columns: ~510 B), for room estimates
SPOOL_ROW_BYTES = 560
# one replay pass holds the writer this long at most; the rest waits for the next pass
REPLAY_BUDGET_SECONDS = 1.0


class LogUnavailable(Exception):
    """The row cannot be queued with room to reach Postgres or the spool."""


class InferenceLog:
    def __init__(self, store: InferenceStore, spool: Spool, flush_seconds: float, batch_rows: int,
                 replay_seconds: float, on_depth: Callable[[int], None] | None = None,
                 max_queue_rows: int = 50_000, journal: Journal | None = None):  # fmt: skip
        self._store, self.spool, self.journal = store, spool, journal
        self._flush_seconds, self._batch_rows, self._replay_seconds = (
            flush_seconds,
            batch_rows,
            replay_seconds,
        )
        self.max_queue_rows = max_queue_rows
        self._queue: collections.deque[AnsweredBatch] = collections.deque()
        self._queued_rows = 0  # rows in the queue (it holds whole requests)
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._on_depth = on_depth
        self._spooled = spool.depth()
        self._spool_room: int | None = spool.room()
        self._last_replay = 0.0
        self._last_adopt: float | None = (
            None  # None: adopt dead workers' journals at the next flush
        )
        self._last_probe = 0.0
        self.db_ok = True
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._wake.set()  # the first flush at once: it adopts the journals of dead workers
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def submit(self, batch: AnsweredBatch) -> None:
        """Queue one request's answers, or raise ``LogUnavailable`` if they could not be kept."""
        with self._submit_lock:
            queued = self._queued_rows + len(batch)
            if queued > self.max_queue_rows:
                raise LogUnavailable(
                    f"the inference log is full ({self._queued_rows} rows waiting in memory)"
                )
            if not self.db_ok and not self._spool_has_room(queued):
                raise LogUnavailable(
                    "Postgres is down and the spool is full: an answer could not be logged"
                )
            if self.journal is not None:
                try:
                    self.journal.append(batch)
                except JournalUnavailable as exc:
                    raise LogUnavailable(str(exc)) from None
            self._queue.append(batch)
            self._queued_rows = queued
        if queued >= self._batch_rows:
            self._wake.set()

    def _spool_has_room(self, rows: int) -> bool:
        room = self._spool_room
        return room is None or rows * SPOOL_ROW_BYTES <= room

    @property
    def accepting(self) -> bool:
        """Whether a new answer would be logged (readiness)."""
        if self._queued_rows >= self.max_queue_rows:
            return False
        return self.db_ok or self._spool_has_room(self._queued_rows + 1)

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
            except Exception as exc:  # e.g. the spool is full: keep the writer alive, try again
                self.last_error = f"{type(exc).__name__}: {exc}"
                if not failing:  # once per episode, not every flush
                    log.warning("inference log: flush failed (%s); retrying every %.1f s", exc,
                                self._flush_seconds)  # fmt: skip
                failing = True

    def flush(self) -> None:
        """Write everything queued (to Postgres, else to the spool); replay the spool when due."""
        with self._flush_lock:
            try:
                self._adopt_orphans()
                if self._spooled and time.monotonic() - self._last_replay >= self._replay_seconds:
                    self._replay()  # also the probe that notices Postgres is back
                while self._queue:
                    chunk = self._take()
                    try:
                        self._write(chunk)
                    except BaseException:
                        # the spool failed too (full?): put the requests back, oldest first
                        with self._submit_lock:
                            self._queue.extendleft(reversed(chunk))
                            self._queued_rows += sum(map(len, chunk))
                        raise
                    if self.journal is not None:  # stored: their journal records are not needed
                        self.journal.release(len(chunk))
            finally:
                self._spool_room = self.spool.room()
                if self._on_depth:
                    self._on_depth(self._queued_rows)

    def _take(self) -> list[AnsweredBatch]:
        """Whole requests from the queue's head, up to ``batch_rows`` rows (at least one request)."""
        chunk, rows = [], 0
        with self._submit_lock:
            while self._queue and (not chunk or rows + len(self._queue[0]) <= self._batch_rows):
                batch = self._queue.popleft()
                chunk.append(batch)
                rows += len(batch)
            self._queued_rows -= rows
        return chunk

    def _adopt_orphans(self) -> None:
        """Move dead workers' journals into the spool (on start, then every replay interval)."""
        now = time.monotonic()
        if self.journal is None or (
            self._last_adopt is not None and now - self._last_adopt < self._replay_seconds
        ):
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

    def _write(self, chunk: list[AnsweredBatch]) -> None:
        now = time.monotonic()
        if self.db_ok or now - self._last_probe >= self._replay_seconds:
            self._last_probe = now
            try:
                self._store.write(chunk, fresh=True)
                if not self.db_ok:
                    log.info("inference log: Postgres is back")
                self.db_ok, self.last_error = True, None
                return
            except MartError as exc:
                if self.db_ok:
                    log.warning("inference log: %s; spooling to %s until it is back", exc,
                                self.spool.directory)  # fmt: skip
                self.db_ok, self.last_error = False, str(exc)
            except Exception as exc:  # never lose an answered row to an error we did not foresee
                log.exception(
                    "inference log: unexpected error writing to Postgres; spooling the batch"
                )
                self.db_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
        try:
            rows = [row for batch in chunk for row in batch.rows()]
            self.spool.append(rows)
        except SpoolFull:
            self._spool_room = 0
            raise
        self._spooled += len(rows)

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
        except Exception as exc:
            log.exception("inference log: spool replay failed")
            self.db_ok, self.last_error = False, f"{type(exc).__name__}: {exc}"
            self._spooled = self.spool.depth()
            return
        if not self.db_ok or written:
            log.info("inference log: Postgres is back; replayed %d spooled row(s)", written)
        self.db_ok, self.last_error = True, None
        self._spooled = self.spool.depth()
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
        if self.journal is not None:
            self.journal.close()


def open_log(
    store: InferenceStore,
    directory: Path,
    settings: Settings,
    on_depth: Callable[[int], None] | None = None,
    on_quarantine: Callable[[str], None] | None = None,
) -> InferenceLog:
    """The worker's inference log, with its durable files under ``directory`` (the one path the
    server's app factory takes to build it)."""
    spool = Spool(directory, settings.spool_max_bytes, on_quarantine)
    journal = (
        Journal(spool, settings.log_journal_fsync, settings.log_journal_segment_bytes)
        if settings.log_journal
        else None
    )
    return InferenceLog(
        store,
        spool,
        settings.log_flush_seconds,
        settings.log_batch_rows,
        settings.spool_replay_seconds,
        on_depth=on_depth,
        max_queue_rows=settings.log_queue_max_rows,
        journal=journal,
    )
