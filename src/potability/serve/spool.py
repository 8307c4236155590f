"""The inference log's segments waiting on disk for Postgres, and their one record format.

A worker's journal (``serve/journal.py``) writes each answered request as one
record, ``<crc32 hex> <json>\\n``, the request column by column (an
``AnsweredBatch``, its arrays as raw doubles). A segment becomes a spool file
(``spool-<pid>-<n>.jsonl`` in the log's directory) by a rename (a live
worker first cuts off the head it already stored, so only the rest is kept):
when its worker's writer finds Postgres down, or when its worker died with
records not yet stored. JSON never holds a raw newline, so the newline ends a
record and the crc proves it whole: a record cut short by a crash or a flipped
byte is found, never replayed.

Replay claims a file by renaming it (so two workers never replay the same
file), stores its requests (``InferenceStore.write``: idempotent on the log's
key, so a replay after a crash never doubles a row nor its rollups), then
deletes it. A torn or corrupt record is skipped and counted; the rest of the
file is replayed and the file is quarantined. A file whose name does not parse
is quarantined too: it never blocks the files after it.

Only rows Postgres rejects *as data* are quarantined (``data_error``: a data
exception or a broken constraint, SQLSTATE classes 22 and 23, or a record
that cannot be encoded): a chunk that fails so is tried again one row at a
time, the good rows are stored and the refused ones written to a file of their
own in ``quarantine/``, counted. A row that names a reading logged already
with other measurements (``ConflictingRows``: two answers were given for one
reading, the second where the worker could not see the first, e.g. another
worker's while Postgres was down) is no duplicate to drop: the first answer
stands, and the row is kept in ``quarantine/`` in a file of conflicts of its
own (``*.conflicts.*``), counted and logged by sensor, time and inference id.
Any other error (Postgres down, a read-only
standby after a failover, a missing privilege or function) says nothing about
the rows: the file stays where it was for the next replay, and the replay
stops. ``requeue()`` (``potability log requeue``) moves quarantined files back
once the cause is fixed.

The log's files (journals, spool files and quarantine together) are capped on
disk (``max_bytes``): ``room()`` is what is left, and a worker refuses to
answer (``LogUnavailable``) rather than answer what it has no room to log.
"""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from potability.inference_store import AnsweredBatch, ConflictingRows

log = logging.getLogger(__name__)
SUFFIX = ".jsonl"
CLAIMED = ".replaying-"
QUARANTINE = "quarantine"
CONFLICTS = ".conflicts."  # in the name of a quarantined file of conflicting rows
NAME = re.compile(r"^spool-\d+-\d+\.jsonl$")
JOURNAL_SUBDIR = "journal"  # the workers' open segments (serve/journal.py)
CLAIMED_NAME = re.compile(r"^(spool-\d+-\d+\.jsonl)\.replaying-(\d+)$")


# a record starts with its row count, so depth() counts rows without parsing JSON
_REQUEST_ROWS = re.compile(rb'^[0-9a-f]{8} \{"rows":(\d+),[^\n]*\n', re.MULTILINE)


def encode(record: AnsweredBatch) -> bytes:
    """One request's record (its arrays as raw doubles: no object per value)."""
    payload = orjson.dumps(
        {
            "rows": len(record),
            "inference_ids": list(record.inference_ids),
            "received_at": record.received_at,
            "sensor_id": record.sensor_id,
            "model_version": record.model_version,
            "features": _f8(record.features),
            "probabilities": _f8(record.probabilities),
            "threshold": record.threshold,
            "logged_at": None if record.logged_at is None else list(record.logged_at),
        }
    )
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def _f8(values: np.ndarray) -> str:
    """An array as base64 of its little-endian doubles: exact, NaN kept, 3x faster than numbers."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f8").tobytes()).decode("ascii")


def _from_f8(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f8").astype(np.float64)


def _request(data: dict[str, Any]) -> AnsweredBatch:
    """A request record back into the batch the store writes (null features back to NaN)."""
    n = data["rows"]
    return AnsweredBatch(
        inference_ids=data["inference_ids"],
        received_at=datetime.fromisoformat(data["received_at"]),
        sensor_id=data["sensor_id"],
        model_version=data["model_version"],
        features=_from_f8(data["features"]).reshape(n, -1),
        probabilities=_from_f8(data["probabilities"]),
        threshold=data["threshold"],
        logged_at=data["logged_at"],
    )


def decode_lines(blob: bytes) -> tuple[list[AnsweredBatch], int]:
    """Return the intact records of a segment and how many were torn or corrupt."""
    records, bad = [], 0
    lines = blob.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        lines[-1] = b""  # no final newline: the last record was torn mid-write
    for line in lines:
        try:
            crc, payload = line.split(b" ", 1)
            if int(crc, 16) != zlib.crc32(payload):
                raise ValueError("checksum")
            records.append(_request(orjson.loads(payload)))
        except (ValueError, KeyError, TypeError, AttributeError):
            bad += 1
    return records, bad


def rows_in(blob: bytes) -> int:
    """Answers in a segment's bytes: ``rows`` of each whole line (a torn last record is not one)."""
    return sum(int(n) for n in _REQUEST_ROWS.findall(blob))


def data_error(exc: BaseException) -> bool:
    """Whether ``exc`` is about the rows themselves, so trying them again can never succeed.

    Postgres' data exceptions (SQLSTATE class 22: a NUL in text, a value out of
    range) and integrity violations (class 23: a check, not-null or foreign
    key), a record that cannot be encoded at all (a malformed id), and a row
    whose reading is logged with other measurements (``ConflictingRows``).
    Everything else (a lost connection, a read-only standby, a missing
    privilege or function) is about the database, and the rows wait.
    """
    code = getattr(exc, "pgcode", None)
    if isinstance(code, str):
        return code[:2] in ("22", "23")
    return isinstance(exc, ValueError | TypeError)


def _rows_of(record: AnsweredBatch) -> list[AnsweredBatch]:
    """A request record as one record per row (a refused chunk is tried again row by row)."""
    if len(record) == 1:
        return [record]
    return [record.take(np.arange(len(record)) == i) for i in range(len(record))]


def _chunks(records: list[AnsweredBatch], chunk_rows: int) -> list[list[AnsweredBatch]]:
    """Consecutive records, about ``chunk_rows`` answers each (a request is never split)."""
    chunks: list[list[AnsweredBatch]] = []
    rows = chunk_rows
    for record in records:
        size = len(record)
        if rows + size > chunk_rows and rows:
            chunks.append([])
            rows = 0
        chunks[-1].append(record)
        rows += size
    return chunks


class Spool:
    def __init__(
        self,
        directory: Path,
        max_bytes: int | None = None,
        on_quarantine: Callable[[Path, str], None] | None = None,
    ):
        self.directory = directory
        self.max_bytes = max_bytes
        self.quarantined = 0  # files this process moved aside
        self.conflicts = 0  # rows this process kept aside as conflicts
        self._on_quarantine = on_quarantine
        self._rows_of: dict[tuple[str, int, int], int] = {}  # depth()'s count of each file
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / QUARANTINE

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"spool-*{SUFFIX}"))

    def size(self) -> int:
        """Bytes of spool files on disk (waiting or being replayed)."""
        return disk_bytes(self.directory, "spool-*")

    def used(self) -> int:
        """Bytes of the log's files under the cap: spool files, every worker's journal, quarantine."""
        return (
            self.size()
            + disk_bytes(self.directory / JOURNAL_SUBDIR, "journal-*")
            + disk_bytes(self.quarantine_dir, "*")
        )

    def room(self) -> int | None:
        """Bytes left under the cap (None: no cap)."""
        return None if self.max_bytes is None else max(0, self.max_bytes - self.used())

    def depth(self) -> int:
        """Rows waiting in spool files, every process's (counted from the records' row counts).

        A spool file never changes once it has its name, so each is read once (known by name,
        size and mtime): cheap enough to measure at every ``/metrics`` scrape.
        """
        counted: dict[tuple[str, int, int], int] = {}
        for path in self.files():
            try:
                stat = path.stat()
                key = (path.name, stat.st_size, stat.st_mtime_ns)
                rows = self._rows_of.get(key)
                counted[key] = rows_in(path.read_bytes()) if rows is None else rows
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue  # replayed or quarantined as we counted
        self._rows_of = counted  # one assignment: the writer and a scrape may both count
        return sum(counted.values())

    def replay(
        self,
        write: Callable[[list[AnsweredBatch]], int],
        chunk_rows: int = 5000,
        budget_seconds: float | None = None,
    ) -> tuple[int, int]:
        """Send spooled files through ``write``; return (rows written, torn records skipped).

        Each file goes in chunks of about ``chunk_rows`` answers (a request record is
        never split). Rows refused as data (``data_error``) are quarantined, the
        rest stored; any other error stops the replay and is raised, the file
        left for later. With ``budget_seconds`` it returns after that long,
        leaving the rest for the next call.
        """
        self._reclaim_orphans()
        started = time.monotonic()
        written = skipped = 0
        for path in self.files():
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                break
            if not NAME.match(path.name):
                self.quarantine(path, "the file name does not parse")
                continue
            claimed = path.with_name(path.name + CLAIMED + str(os.getpid()))
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            try:
                records, bad = decode_lines(claimed.read_bytes())
            except OSError as exc:
                self.quarantine(claimed, f"unreadable: {exc}")
                continue
            refused: list[tuple[AnsweredBatch, Exception]] = []
            try:
                for chunk in _chunks(records, chunk_rows):
                    written += self._write_chunk(write, chunk, refused)
            except Exception:
                os.rename(claimed, path)  # not the rows' fault: they wait for the next replay
                raise
            if refused:
                self._quarantine_rows(path.name, refused)
            skipped += bad
            if bad:  # files are renamed into place whole: a bad record is damage worth keeping
                self.quarantine(
                    claimed,
                    f"{bad} torn or corrupt record(s); its {len(records)} good record(s) replayed",
                )
            else:
                claimed.unlink()
        return written, skipped

    @staticmethod
    def _write_chunk(
        write: Callable[[list[AnsweredBatch]], int],
        chunk: list[AnsweredBatch],
        refused: list[tuple[AnsweredBatch, Exception]],
    ) -> int:
        """Store a chunk; refused as data, store it one row at a time and collect the refused rows."""
        try:
            return write(chunk)
        except Exception as exc:
            if not data_error(exc):
                raise
        written = 0
        for record in chunk:
            for row in _rows_of(record):
                try:
                    written += write([row])
                except Exception as exc:
                    if not data_error(exc):
                        raise
                    refused.append((row, exc))
        return written

    def _quarantine_rows(self, name: str, refused: list[tuple[AnsweredBatch, Exception]]) -> None:
        """Keep the refused rows in quarantine files of their own (spool format): conflicts apart."""
        conflicts = [(row, exc) for row, exc in refused if isinstance(exc, ConflictingRows)]
        if conflicts:
            self.conflicts += len(conflicts)
            self._set_aside(
                name,
                CONFLICTS,
                conflicts,
                "name a reading logged already with other measurements (the first answer stands)",
                [str(exc).split(": ", 1)[-1] for _, exc in conflicts],
            )
        refusals = [(row, exc) for row, exc in refused if not isinstance(exc, ConflictingRows)]
        if refusals:
            self._set_aside(
                name,
                ".rows.",
                refusals,
                "refused by Postgres as data",
                sorted({f"{type(exc).__name__}: {str(exc).strip()}" for _, exc in refusals}),
            )

    def _set_aside(
        self,
        name: str,
        kind: str,
        rows: list[tuple[AnsweredBatch, Exception]],
        what: str,
        why: list[str],
    ) -> None:
        """Write spool file ``name``'s rows to a new file in ``quarantine/`` (fsynced), log and count it."""
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{name}{kind}{time.time_ns()}"
        with open(target, "wb") as fh:
            fh.write(b"".join(encode(row) for row, _ in rows))
            fh.flush()
            os.fsync(fh.fileno())
        log.error(
            "spool: %d row(s) of %s %s, quarantined as %s: %s",
            len(rows),
            name,
            what,
            target,
            "; ".join(why[:3]),
        )
        self._quarantined(target, why[0])

    def _quarantined(self, target: Path, reason: str) -> None:
        self.quarantined += 1
        if self._on_quarantine:
            self._on_quarantine(target, reason)

    def requeue(self) -> int:
        """Move every quarantined file back into the spool, to be replayed; return how many.

        For after the cause is fixed (a constraint relaxed, a file repaired):
        rows refused again go back to quarantine.
        """
        moved = 0
        for path in sorted(self.quarantine_dir.glob("*")) if self.quarantine_dir.is_dir() else []:
            target = self.directory / f"spool-{os.getpid()}-{time.time_ns()}.jsonl"
            try:
                os.rename(path, target)
            except FileNotFoundError:
                continue
            moved += 1
            log.info("spool: %s requeued as %s", path.name, target.name)
        return moved

    def quarantine(self, path: Path, reason: str) -> None:
        """Move a file that cannot be replayed aside, so it never blocks the others."""
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{path.name.split(CLAIMED)[0]}.{time.time_ns()}"
        try:
            shutil.move(str(path), target)
        except FileNotFoundError:
            return  # another worker moved it first
        log.error("spool: quarantined %s as %s: %s", path.name, target, reason)
        self._quarantined(target, reason)

    def _reclaim_orphans(self) -> None:
        """A file claimed by a worker that died mid-replay goes back to the queue."""
        for path in self.directory.glob(f"*{CLAIMED}*"):
            match = CLAIMED_NAME.match(path.name)
            if match is None:
                self.quarantine(path, "the claimed file's name does not parse")
            elif not pid_alive(int(match.group(2))):
                try:
                    os.rename(path, path.with_name(match.group(1)))
                except FileNotFoundError:
                    continue


def disk_bytes(directory: Path, pattern: str) -> int:
    """Bytes in the files of ``directory`` matching ``pattern``; a file that went meanwhile counts 0."""
    total = 0
    for path in directory.glob(pattern):
        try:
            total += path.stat().st_size
        except FileNotFoundError:
            continue  # replayed, released or adopted by another worker as we counted
    return total


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists now (one of another user's counts: EPERM).

    A claimed spool file (by a replaying worker) and a journal segment (by its
    worker) name their owner by pid, and leave a live owner's file alone. A pid
    is reused once its process is gone, so True may mean a stranger that got the
    number: the file then waits (never replayed twice at once; it is taken when that
    process ends too), and the journal tells this process's own files from those of
    an earlier process with the same pid by name (``serve/journal.py``).
    """
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
