"""Every answered prediction lands in ``water.water_inferences``: batched, off the request path.

Requests only append to an in-memory queue. A writer thread flushes it by COPY
every ``log_flush_seconds`` (or at ``log_batch_rows``). When Postgres is down
the batch goes to the fsync'd spool and is replayed once it is back. ``close()``
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
from serve.spool import Spool

log = logging.getLogger(__name__)


class InferenceLog:
    def __init__(self, mart: WaterMart, spool: Spool, flush_seconds: float, batch_rows: int,
                 replay_seconds: float, on_depth: Callable[[int, int], None] | None = None):  # fmt: skip
        self._mart, self.spool = mart, spool
        self._flush_seconds, self._batch_rows, self._replay_seconds = (
            flush_seconds,
            batch_rows,
            replay_seconds,
        )
        self._queue: collections.deque[tuple] = collections.deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flush_lock = threading.Lock()
        self._on_depth = on_depth
        self._spooled = spool.depth()
        self._last_replay = 0.0
        self.db_ok = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="inference-log", daemon=True)
        self._thread.start()

    def submit(self, rows: list[tuple]) -> None:
        self._queue.extend(rows)  # deque.extend is atomic under the GIL: no lock on the hot path
        if len(self._queue) >= self._batch_rows:
            self._wake.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def spooled(self) -> int:
        return self._spooled

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # e.g. the spool disk is full: keep the writer alive and try again
                log.exception(
                    "inference log: flush failed; retrying in %.1f s", self._flush_seconds
                )

    def flush(self) -> None:
        """Write everything queued (to Postgres, else to the spool); replay the spool when due."""
        with self._flush_lock:
            while self._queue:
                batch = [
                    self._queue.popleft() for _ in range(min(len(self._queue), self._batch_rows))
                ]
                try:
                    self._write(batch)
                except BaseException:
                    # the spool failed too (disk full?): put the rows back, oldest first
                    self._queue.extendleft(reversed(batch))
                    raise
            if self._spooled and time.monotonic() - self._last_replay >= self._replay_seconds:
                self._replay()  # also the probe that notices Postgres is back
            if self._on_depth:
                self._on_depth(len(self._queue), self._spooled)

    def _write(self, batch: list[tuple]) -> None:
        if self.db_ok:
            try:
                self._mart.write_inferences(batch, fresh=True)
                return
            except MartError as exc:
                log.warning(
                    "inference log: %s; spooling to %s until it is back", exc, self.spool.directory
                )
                self.db_ok = False
            except Exception:  # never lose an answered row to an error we did not foresee
                log.exception(
                    "inference log: unexpected error writing to Postgres; spooling the batch"
                )
                self.db_ok = False
        self.spool.append(
            [
                row if isinstance(row, dict) else dict(zip(INFERENCE_COLUMNS, row, strict=True))
                for row in batch
            ]
        )
        self._spooled += len(batch)

    def _replay(self) -> None:
        self._last_replay = time.monotonic()
        try:
            written, skipped = self.spool.replay(self._mart.write_inferences)
        except Exception:  # still down (or a replay error): the file stays for the next try
            self.db_ok = False
            self._spooled = self.spool.depth()
            return
        if not self.db_ok or written:
            log.info("inference log: Postgres is back; replayed %d spooled row(s)", written)
        self.db_ok = True
        self._spooled = self.spool.depth()

    def close(self) -> None:
        """Stop the writer and flush the queue (graceful shutdown loses nothing)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()
