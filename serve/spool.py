"""An fsync'd disk spool for inference rows that could not reach Postgres.

One file per failed batch: ``<crc32 hex> <json>\\n`` per row. Replay claims a
file by renaming it (so two workers never replay the same file), inserts the
rows (idempotent on ``inference_id``, so a replay after a crash never
doubles), then deletes it. A torn or corrupt record is skipped and counted;
the rest of the file is kept.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
SUFFIX = ".jsonl"
CLAIMED = ".replaying-"


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
    def __init__(self, directory: Path):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def append(self, rows: list[dict[str, Any]]) -> Path:
        """Write rows durably (file and directory fsynced) before the caller forgets them."""
        path = self.directory / f"spool-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(encode(r) for r in rows))
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

    def depth(self) -> int:
        """Rows waiting on disk (counted by lines; cheap enough for a gauge)."""
        total = 0
        for path in self.files():
            try:
                total += path.read_bytes().count(b"\n")
            except FileNotFoundError:
                continue
        return total

    def replay(self, write: Callable[[list[dict[str, Any]]], int]) -> tuple[int, int]:
        """Send every spooled file through ``write``; return (rows written, torn records skipped).

        Stops at the first failure (the database is still down), leaving the file for later.
        """
        self._reclaim_orphans()
        written = skipped = 0
        for path in self.files():
            claimed = path.with_name(path.name + CLAIMED + str(os.getpid()))
            try:
                os.rename(path, claimed)
            except FileNotFoundError:
                continue  # another worker took it
            rows, bad = decode_lines(claimed.read_bytes())
            try:
                written += write(rows) if rows else 0
            except Exception:
                os.rename(claimed, path)
                raise
            if bad:
                log.warning(
                    "spool %s: skipped %d torn or corrupt record(s), kept %d",
                    path.name,
                    bad,
                    len(rows),
                )
            skipped += bad
            claimed.unlink()
        return written, skipped

    def _reclaim_orphans(self) -> None:
        """A file claimed by a worker that died mid-replay goes back to the queue."""
        for path in self.directory.glob(f"*{CLAIMED}*"):
            pid = int(path.name.rsplit("-", 1)[-1])
            if not _alive(pid):
                os.rename(path, path.with_name(path.name.split(CLAIMED)[0]))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
