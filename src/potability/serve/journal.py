"""A worker's write-ahead journal: an answered request is on disk before its answer leaves.

The inference log's writer flushes its in-memory queue every
``log_flush_seconds``; a worker killed in between (the OOM killer, ``kill -9``,
gunicorn's worker timeout) would take the queued rows with it. So ``submit``
first appends the request to this worker's journal file
(``<spool>/journal/journal-<pid>-<n>.jsonl``, the spool's record format,
``serve/spool.py``): a plain ``write()`` into the page cache, which outlives
the process. Only a machine crash (power, kernel) can lose page-cache data;
``fsync=True`` (``POTABILITY_LOG_JOURNAL_FSYNC``) covers that too, at the
price measured in docs/performance.md ("The journal").

Records are released in the order they were written, once the writer has
committed them to Postgres or the spool (the queue is first in, first out, so
the writer releases a count). A file whose records are all committed is
truncated (the one being written) or deleted (an older one); a file past
``segment_bytes`` is closed and a new one started, so a busy worker's journal
is bounded by what its queue holds plus one segment.

A journal whose process is gone (its pid not alive, or this process's pid but
not its file: an earlier process had the pid) is an orphan: ``adopt_orphans``,
called by every live worker's writer on start and then every
``spool_replay_seconds``, moves it into the spool, whose replay stores its
records (idempotent on the log's key: rows that did reach Postgres before the
kill are not stored twice), quarantines a file with a torn record after
replaying its good ones, and keeps it while Postgres is down.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from potability.inference_store import AnsweredBatch
from potability.serve.spool import Spool, disk_bytes, encode, pid_alive

log = logging.getLogger(__name__)
SUBDIR = "journal"
NAME = re.compile(r"^journal-(\d+)-(\d+)\.jsonl$")
PROBE = ".probe-"  # readiness's test file (never a journal's name: adopt_orphans leaves it)
# the segments this process's journals write: any other file with this pid is an earlier process's
_LIVE: set[str] = set()


class JournalUnavailable(OSError):
    """A request could not be journalled (disk full, directory gone): it must not be answered."""


@dataclass
class _Segment:
    path: Path
    pending: int = 0  # records written, not yet released


class Journal:
    def __init__(self, spool: Spool, fsync: bool = False, segment_bytes: int = 16_000_000):
        self.spool = spool
        self.directory = spool.directory / SUBDIR
        self.fsync = fsync
        self.segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._segments: list[_Segment] = []  # oldest first; the last one is open for appends
        self._fd: int | None = None
        self._size = 0  # bytes in the open segment
        self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def pending(self) -> int:
        """Requests journalled and not yet committed by the writer."""
        return sum(s.pending for s in self._segments)

    def append(self, batch: AnsweredBatch) -> None:
        """Write one request's record before it is answered; ``JournalUnavailable`` if it cannot be.

        The caller holds the log's submit lock, so records are in queue order.
        A failed write is cut off again, so the next record starts clean.
        """
        blob = encode(batch)
        with self._lock:
            try:
                fd = self._open()
                written = 0
                while written < len(blob):
                    written += os.write(fd, blob[written:])
                if self.fsync:
                    os.fdatasync(fd)
            except OSError as exc:
                self._undo()
                raise JournalUnavailable(
                    f"the journal {self.directory} cannot be written: {exc}"
                ) from exc
            self._size += len(blob)
            self._segments[-1].pending += 1

    def size(self) -> int:
        """Bytes in the journal directory's files: every worker's, and orphans not yet adopted."""
        return disk_bytes(self.directory, "journal-*")

    def check(self) -> str | None:
        """Why a request could not be journalled now, or None if it could (readiness).

        A refused append fails only its own request, and a worker the load balancer has
        taken out gets none to find out it healed: so this writes for itself, a byte into
        a new file in the directory (what a new segment needs: the directory, room on
        the disk). A directory removed is made again. The open segment must still be at
        its path too: once the directory was removed, moved or replaced, appends would
        land in a file no one can adopt after a kill, so it is dropped, and the next
        append starts a segment where it can be found (refused until it can).
        """
        with self._lock:
            if self._fd is not None and self._moved():
                gone = self._segments[-1].path
                log.warning("journal: %s left its path; the next request starts a new file", gone)
                os.close(self._fd)
                self._fd = None
        probe = self.directory / f"{PROBE}{os.getpid()}-{threading.get_ident()}"
        try:
            self.directory.mkdir(exist_ok=True)
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.write(fd, b"\n")
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
        except OSError as exc:
            return f"the journal {self.directory} cannot be written: {exc}"
        return None

    def _moved(self) -> bool:
        """Whether the open segment is no longer the file at its path (removed, or its directory moved)."""
        try:
            there = os.stat(self._segments[-1].path)
        except OSError:
            return True
        held = os.fstat(self._fd)
        return (there.st_dev, there.st_ino) != (held.st_dev, held.st_ino)

    def _open(self) -> int:
        """The open segment's descriptor: a new segment when there is none or it is full."""
        if self._fd is not None and self._size < self.segment_bytes:
            return self._fd
        if self._fd is not None:  # full: the writer deletes it once its records are released
            os.close(self._fd)
            self._fd = None
        path = self.directory / f"journal-{os.getpid()}-{time.time_ns()}.jsonl"
        _LIVE.add(path.name)  # before the file exists: the writer thread must never adopt it
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o644)
        except OSError:
            _LIVE.discard(path.name)
            raise
        self._segments.append(_Segment(path))
        self._size = 0
        return self._fd

    def _undo(self) -> None:
        """Cut a partly written record off; failing that, leave the segment for a new one."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            os.close(self._fd)
            self._fd = None  # the torn record stays: the spool's replay finds it by its crc

    def release(self, requests: int) -> None:
        """The writer committed the oldest ``requests`` records: free the space they held."""
        with self._lock:
            while self._segments:
                segment = self._segments[0]
                taken = min(requests, segment.pending)
                segment.pending -= taken
                requests -= taken
                if segment.pending:
                    break
                if segment is self._segments[-1] and self._fd is not None:
                    if self._size:  # everything in the open segment is stored: start it over
                        try:
                            os.ftruncate(self._fd, 0)
                            self._size = 0
                        except OSError as exc:  # harmless: a replay of stored rows stores nothing
                            log.warning("journal: could not truncate %s: %s", segment.path, exc)
                    break
                self._forget(self._segments.pop(0))

    def _forget(self, segment: _Segment) -> None:
        _LIVE.discard(segment.path.name)
        segment.path.unlink(missing_ok=True)

    def close(self) -> None:
        """Graceful shutdown: delete the segments whose records are all committed."""
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for segment in self._segments:
                _LIVE.discard(segment.path.name)  # what is still pending is an orphan now
                if not segment.pending:
                    segment.path.unlink(missing_ok=True)
            self._segments = [s for s in self._segments if s.pending]

    def adopt_orphans(self) -> int:
        """Move the journals of dead processes into the spool (its replay stores them); return how many.

        The file is fsynced first: from here on the spool's promise holds.
        Two workers may race for one file: the rename lets one win.
        """
        adopted = 0
        for path in sorted(self.directory.glob("journal-*")):
            match = NAME.match(path.name)
            if match is None:
                self.spool.quarantine(path, "the journal's name does not parse")
                continue
            pid = int(match.group(1))
            if path.name in _LIVE or (pid != os.getpid() and pid_alive(pid)):
                continue
            try:
                if path.stat().st_size == 0:  # everything in it was committed
                    path.unlink()
                    continue
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
                target = self.spool.directory / f"spool-{pid}-{match.group(2)}.jsonl"
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another worker took it
            adopted += 1
            log.warning("journal: process %d died with %s; replaying it from the spool as %s", pid,
                        path.name, target.name)  # fmt: skip
        return adopted
