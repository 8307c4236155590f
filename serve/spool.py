"""An fsync'd disk spool for inference rows that could not reach Postgres.

One file per failed batch: ``<crc32 hex> <json>\\n`` per row. Replay claims a
file by renaming it (so two workers never replay the same file), inserts the
rows (idempotent on ``inference_id``, so a replay after a crash never
doubles), then deletes it. A torn or corrupt record is skipped and counted;
the rest of the file is replayed and the file is quarantined. A file that cannot be replayed for any reason but
the database being down (a name that does not parse, unreadable, rows Postgres
refuses) is moved aside to ``quarantine/``, logged and counted: it never blocks
the files after it. The spool's size on disk is capped (``max_bytes``); a full
spool refuses rows with ``SpoolFull`` so the server can refuse to answer rather
than answer unlogged.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from potability.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
SUFFIX = ".jsonl"
CLAIMED = ".replaying-"
QUARANTINE = "quarantine"
NAME = re.compile(r"^spool-\d+-\d+\.jsonl$")
CLAIMED_NAME = re.compile(r"^(spool-\d+-\d+\.jsonl)\.replaying-(\d+)$")


class SpoolFull(OSError):
    """The spool reached its disk cap: rows cannot be kept until Postgres is back."""


def encode(row: dict[str, Any]) -> bytes:
    payload = json.dumps(row, separators=(",", ":"), default=str).encode("utf-8")
    return b"%08x " % zlib.crc32(payload) + payload + b"\n"


def decode_lines(blob: bytes) -> tuple[list[dict[str, Any]], int]:
    """Return the intact rows of a spool file and how many records were torn or corrupt."""
    rows, bad = [], 0
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
            rows.append(json.loads(payload))
        except ValueError:
            bad += 1
    return rows, bad


class Spool:
    def __init__(self, directory: Path, max_bytes: int | None = None,
                 on_quarantine: Callable[[Path, str], None] | None = None):  # fmt: skip
        self.directory = directory
        self.max_bytes = max_bytes
        self.quarantined = 0  # files this process moved aside
        self._on_quarantine = on_quarantine
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def quarantine_dir(self) -> Path:
        return self.directory / QUARANTINE

    def append(self, rows: list[dict[str, Any]]) -> Path:
        """Write rows durably (file and directory fsynced) before the caller forgets them.

        Raises ``SpoolFull`` when the rows would take the spool past ``max_bytes``.
        """
        blob = b"".join(encode(r) for r in rows)
        if self.max_bytes is not None and self.size() + len(blob) > self.max_bytes:
            raise SpoolFull(
                f"spool {self.directory} is full ({self.size()} of {self.max_bytes} bytes)"
            )
        path = self.directory / f"spool-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(blob)
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return path

    def files(self) -> list[Path]:
        return sorted(self.directory.glob(f"spool-*{SUFFIX}"))

    def size(self) -> int:
        """Bytes the spool holds on disk (files waiting or being replayed)."""
        total = 0
        for path in self.directory.glob("spool-*"):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def room(self) -> int | None:
        """Bytes left under the cap (None: no cap)."""
        return None if self.max_bytes is None else max(0, self.max_bytes - self.size())

    def depth(self) -> int:
        """Rows waiting on disk (counted by lines; cheap enough for a gauge)."""
        total = 0
        for path in self.files():
            try:
                total += path.read_bytes().count(b"\n")
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
        return total

    def replay(
        self,
        write: Callable[[list[dict[str, Any]]], int],
        chunk_rows: int = 5000,
        budget_seconds: float | None = None,
    ) -> tuple[int, int]:
        """Send spooled files through ``write``; return (rows written, torn records skipped).

        Each file goes in chunks of ``chunk_rows``. ``DatabaseUnavailable`` stops
        the replay (the file stays for later); any other failure quarantines
        that file and goes on with the next. With ``budget_seconds`` it returns
        after that long, leaving the rest for the next call.
        """
        self._reclaim_orphans()
        started = time.monotonic()
        written = skipped = 0
        for path in self.files():
            if budget_seconds is not None and time.monotonic() - started > budget_seconds:
                break
            if not NAME.match(path.name):
                self._quarantine(path, "the file name does not parse")
                continue
            claimed = path.with_name(path.name + CLAIMED + str(os.getpid()))
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            try:
                rows, bad = decode_lines(claimed.read_bytes())
                for i in range(0, len(rows), chunk_rows):
                    written += write(rows[i : i + chunk_rows])
            except DatabaseUnavailable:
                os.rename(claimed, path)
                raise
            except Exception as exc:
                self._quarantine(claimed, f"{type(exc).__name__}: {exc}")
                continue
            skipped += bad
            if bad:  # files are renamed into place whole: a bad record is damage worth keeping
                self._quarantine(
                    claimed,
                    f"{bad} torn or corrupt record(s); its {len(rows)} good row(s) replayed",
                )
            else:
                claimed.unlink()
        return written, skipped

    def _quarantine(self, path: Path, reason: str) -> None:
        """Move a file that cannot be replayed aside, so it never blocks the others."""
        self.quarantine_dir.mkdir(exist_ok=True)
        target = self.quarantine_dir / f"{path.name.split(CLAIMED)[0]}.{time.time_ns()}"
        try:
            shutil.move(str(path), target)
        except FileNotFoundError:
            return  # another worker moved it first
        self.quarantined += 1
        log.error("spool: quarantined %s as %s: %s", path.name, target, reason)
        if self._on_quarantine:
            self._on_quarantine(target, reason)

    def _reclaim_orphans(self) -> None:
        """A file claimed by a worker that died mid-replay goes back to the queue."""
        for path in self.directory.glob(f"*{CLAIMED}*"):
            match = CLAIMED_NAME.match(path.name)
            if match is None:
                self._quarantine(path, "the claimed file's name does not parse")
            elif not _alive(int(match.group(2))):
                try:
                    os.rename(path, path.with_name(match.group(1)))
                except FileNotFoundError:
                    continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
