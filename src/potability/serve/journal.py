"""A worker's write-ahead journal: the one durable copy of every answered request.

``submit`` appends the request to this worker's open segment
(``<log dir>/journal/journal-<pid>-<n>.jsonl``, the record format of
``serve/spool.py``) before the answer leaves: a plain ``write()`` into the
page cache, which outlives the process. Only a machine crash (power, kernel)
can lose page-cache data; ``fsync=True`` (``POTABILITY_LOG_JOURNAL_FSYNC``)
covers that too, at the price measured in docs/performance.md ("The journal").
A request that cannot be written (disk full, directory gone, the log's disk
cap reached) is refused.

The writer ships the records it holds in memory, which are exactly the
journal's, and releases them in order once Postgres has them (the queue is
first in, first out, so it releases a count). A file whose records are all
stored is truncated (the one being written) or deleted (an older one); a file
past ``segment_bytes`` is closed and a new one started, so a busy worker's
journal is bounded by what its queue holds plus one segment.

The segments are also what stays on disk while Postgres is down: ``seal``
(the writer, when Postgres refuses its batch) cuts off the head of a segment
already stored, fsyncs them and renames them into the spool (``spool-<pid>-<n>.jsonl``), whose replay stores them once Postgres is
back; the writer forgets them from memory. A journal whose process is gone (its
pid not alive, or this process's pid but not its file: an earlier process had
the pid) is an orphan: ``adopt_orphans``, called by every live worker's writer
on start and then every ``spool_replay_seconds``, moves it into the spool the
same way. The replay is idempotent on the log's key (rows that reached Postgres
before the kill or the outage are not stored twice) and quarantines a file with
a torn record after replaying its good ones.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from potability.inference_store import AnsweredBatch
from potability.serve.spool import JOURNAL_SUBDIR, Spool, disk_bytes, encode, pid_alive

log = logging.getLogger(__name__)
SUBDIR = JOURNAL_SUBDIR
NAME = re.compile(r"^journal-(\d+)-(\d+)\.jsonl$")
TAIL = ".tail"  # a segment's unstored tail being rewritten before the segment is sealed
PROBE = ".probe-"  # readiness's test file (never a journal's name: adopt_orphans leaves it)
# the segments this process's journals write: any other file with this pid is an earlier process's
_LIVE: set[str] = set()


class JournalUnavailable(OSError):
    """A request could not be journalled (disk full, directory gone): it must not be answered."""


class JournalFull(JournalUnavailable):
    """The log's files reached their disk cap (``Spool.max_bytes``): a request is not written."""


@dataclass
class _Segment:
    path: Path
    pending: int = 0  # records written, not yet released
    stored: int = 0  # bytes of the released records at its head
    # pending records' bytes
    lengths: collections.deque[int] = field(default_factory=collections.deque)


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
        # under the disk cap, as of refresh_room, less what was written since
        self._room = spool.room()
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
            if self._room is not None and len(blob) > self._room:
                raise JournalFull(
                    f"the inference log's files in {self.spool.directory} reached their cap of "
                    f"{self.spool.max_bytes} bytes: the log is full until Postgres takes them"
                )
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
            self._segments[-1].lengths.append(len(blob))
            if self._room is not None:
                self._room -= len(blob)

    def refresh_room(self) -> None:
        """Measure the room under the disk cap again (the writer, after each flush)."""
        room = self.spool.room()
        with self._lock:
            self._room = room

    def has_room(self, record_bytes: int) -> bool:
        """Whether a record of this size would fit under the disk cap (readiness)."""
        return self._room is None or record_bytes <= self._room

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
                for _ in range(taken):
                    segment.stored += segment.lengths.popleft()
                if segment.pending:
                    break
                if segment is self._segments[-1] and self._fd is not None:
                    if self._size:  # everything in the open segment is stored: start it over
                        try:
                            os.ftruncate(self._fd, 0)
                            self._size = segment.stored = 0
                        except OSError as exc:  # harmless: a replay of stored rows stores nothing
                            log.warning("journal: could not truncate %s: %s", segment.path, exc)
                    break
                self._forget(self._segments.pop(0))

    def _forget(self, segment: _Segment) -> None:
        _LIVE.discard(segment.path.name)
        segment.path.unlink(missing_ok=True)

    def seal(self) -> int:
        """Move this worker's segments into the spool (Postgres refused them); return their records.

        Oldest first, each is fsynced, then renamed; then the directory is fsynced:
        from here on the spool's promise holds and the caller may forget that many
        records (the oldest pending). The next append starts a new segment.
        Records of a sealed file already stored are skipped by its replay
        (idempotent on the log's key). A segment the disk refuses to move stays,
        with those after it, and the error is logged: the caller keeps those.
        """
        moved = 0
        with self._lock:
            try:
                if self._fd is not None:
                    os.fsync(self._fd)
                    os.close(self._fd)
                    self._fd = None
                    self._size = 0
                while self._segments:
                    segment = self._segments[0]
                    if segment.pending:
                        _, pid, n = segment.path.stem.split("-")
                        target = self.spool.directory / f"spool-{pid}-{n}.jsonl"
                        if segment.stored:  # its head is stored: only the rest goes
                            _rewrite_tail(segment.path, segment.stored)
                        _fsync(segment.path)
                        os.rename(segment.path, target)
                    else:  # everything in it is stored (an emptied open segment)
                        segment.path.unlink(missing_ok=True)
                    moved += segment.pending
                    _LIVE.discard(segment.path.name)
                    self._segments.pop(0)
            except OSError as exc:
                log.error(
                    "journal: could not move %s into the spool: %s", self._segments[0].path, exc
                )
        if moved:
            try:
                _fsync(self.spool.directory)
            except OSError as exc:  # the files are moved: the caller must forget them all the same
                log.error("journal: could not fsync %s: %s", self.spool.directory, exc)
        return moved

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
            if path.name.endswith(TAIL):  # a seal cut short: the segment itself is still whole
                stem = NAME.match(path.name.removesuffix(TAIL))
                if stem and not pid_alive(int(stem.group(1))):
                    path.unlink(missing_ok=True)
                continue
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
                _fsync(path)
                target = self.spool.directory / f"spool-{pid}-{match.group(2)}.jsonl"
                os.rename(path, target)
            except FileNotFoundError:
                continue  # another worker took it
            adopted += 1
            log.warning(
                "journal: process %d died with %s; replaying it from the spool as %s",
                pid,
                path.name,
                target.name,
            )
        if adopted:
            _fsync(self.spool.directory)
        return adopted


def _rewrite_tail(path: Path, offset: int) -> None:
    """Leave only the bytes from ``offset`` in ``path`` (a new file renamed over it)."""
    tmp = path.with_name(path.name + TAIL)
    with open(path, "rb") as src, open(tmp, "wb") as dst:
        src.seek(offset)
        dst.write(src.read())
        dst.flush()
        os.fsync(dst.fileno())
    os.rename(tmp, path)


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
