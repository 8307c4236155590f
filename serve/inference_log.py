"""Every answered prediction lands in ``water.water_inferences``: batched, off the request path.

Requests only append to a bounded in-memory queue. A writer thread flushes it
by COPY every ``log_flush_seconds`` (or at ``log_batch_rows``). When Postgres
is down the batch goes to the fsync'd spool and is replayed once it is back;
the writer probes Postgres every ``spool_replay_seconds`` whatever error it
gave. ``submit`` refuses rows (``LogUnavailable``, a 503 to the client) when
the queue is full, or when Postgres is down and the spool has no room: an
answer is only given once its row can reach Postgres or the disk. ``close()``
(gunicorn's worker_exit) flushes what is left.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable

from potability.errors import MartError
from potability.mart import INFERENCE_COLUMNS, WaterMart
from serve.spool import Spool, SpoolFull

log = logging.getLogger(__name__)
# a spooled row on disk (crc + JSON of 16 columns: ~510 B), for room estimates
SPOOL_ROW_BYTES = 560
# one replay pass holds the writer this long at most; the rest waits for the next pass
REPLAY_BUDGET_SECONDS = 1.0


class LogUnavailable(Exception):
    """The row cannot be queued with room to reach Postgres or the spool."""


class InferenceLog:
    def __init__(self, mart: WaterMart, spool: Spool, flush_seconds: float, batch_rows: int,
                 replay_seconds: float, on_depth: Callable[[int, int], None] | None = None,
                 max_queue_rows: int = 50_000):  # fmt: skip
        self._mart, self.spool = mart, spool
        self._flush_seconds, self._batch_rows, self._replay_seconds = (
            flush_seconds,
            batch_rows,
            replay_seconds,
        )
        self.max_queue_rows = max_queue_rows
        self._queue: collections.deque[tuple] = collections.deque()
        self._submit_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._on_depth = on_depth
        self._spooled = spool.depth()
        self._spool_room: int | None = spool.room()
        self._last_replay = 0.0
        self._last_probe = 0.0
        self.db_ok = True
        self.last_error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def submit(self, rows: list[tuple]) -> None:
        """Queue answered rows, or raise ``LogUnavailable`` if they could not be kept."""
        with self._submit_lock:
            queued = len(self._queue) + len(rows)
            if queued > self.max_queue_rows:
                raise LogUnavailable(
                    f"the inference log is full ({len(self._queue)} rows waiting in memory)"
                )
            if not self.db_ok and not self._spool_has_room(queued):
                raise LogUnavailable(
                    "Postgres is down and the spool is full: an answer could not be logged"
                )
            self._queue.extend(rows)
        if len(self._queue) >= self._batch_rows:
            self._wake.set()

    def _spool_has_room(self, rows: int) -> bool:
        room = self._spool_room
        return room is None or rows * SPOOL_ROW_BYTES <= room

    @property
    def accepting(self) -> bool:
        """Whether a new answer would be logged (readiness)."""
        if len(self._queue) >= self.max_queue_rows:
            return False
        return self.db_ok or self._spool_has_room(len(self._queue) + 1)

    @property
    def queued(self) -> int:
        return len(self._queue)

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
                if self._spooled and time.monotonic() - self._last_replay >= self._replay_seconds:
                    self._replay()  # also the probe that notices Postgres is back
                while self._queue:
                    batch = [
                        self._queue.popleft()
                        for _ in range(min(len(self._queue), self._batch_rows))
                    ]
                    try:
                        self._write(batch)
                    except BaseException:
                        # the spool failed too (full?): put the rows back, oldest first
                        self._queue.extendleft(reversed(batch))
                        raise
            finally:
                self._spool_room = self.spool.room()
                if self._on_depth:
                    self._on_depth(len(self._queue), self._spooled)

    def _write(self, batch: list[tuple]) -> None:
        now = time.monotonic()
        if self.db_ok or now - self._last_probe >= self._replay_seconds:
            self._last_probe = now
            try:
                self._mart.write_inferences(batch, fresh=True)
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
            self.spool.append(
                [
                    row if isinstance(row, dict) else dict(zip(INFERENCE_COLUMNS, row, strict=True))
                    for row in batch
                ]
            )
        except SpoolFull:
            self._spool_room = 0
            raise
        self._spooled += len(batch)

    def _replay(self) -> None:
        self._last_replay = time.monotonic()
        try:
            written, _ = self.spool.replay(
                self._mart.write_inferences,
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
