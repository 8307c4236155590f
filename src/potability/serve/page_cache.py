"""The open page and stats, kept rendered on disk so that answering them never holds a sensor's worker.

A renderer process (``serve/renderer.py``) writes every entry (the page, each
``/v1/stats`` panel) every ``page_refresh_seconds``; workers answer from here in
well under a millisecond. One file per entry: a JSON header line (status,
content type, render time, ETag), then the body. Each file is written beside
its final name and renamed over it, so a reader sees the old copy or the new
one, never half of either. A worker keeps the copy it read last and reads the
file again only when its inode, mtime or size changed.

A worker renders an entry itself only when it is missing or older than
``page_stale_seconds`` (the renderer is dead or stuck), and only one process
renders at a time (an ``flock``): the others answer the stale copy meanwhile,
or, when there is no copy at all yet, a 503 with ``Retry-After``. A render
that meets a database error (``RenderFailed``) leaves the stale copy in place
and answers it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from potability.artifacts import write_bytes_atomic

LOCK_NAME = ".render.lock"


@dataclass(frozen=True)
class Entry:
    """One rendered answer, as it goes on the wire."""

    body: bytes
    content_type: str
    status: int
    rendered_at: float  # wall clock (time.time), so every process agrees on an entry's age
    render_ms: float

    @cached_property
    def etag(self) -> str:
        """Hashed once per copy a worker reads, not once per request."""
        return hashlib.sha256(self.body).hexdigest()[:32]

    def age(self) -> float:
        return max(0.0, time.time() - self.rendered_at)

    def to_bytes(self) -> bytes:
        header = {
            "status": self.status,
            "content_type": self.content_type,
            "rendered_at": self.rendered_at,
            "render_ms": self.render_ms,
        }
        return json.dumps(header).encode() + b"\n" + self.body

    @classmethod
    def from_bytes(cls, raw: bytes) -> Entry:
        header, _, body = raw.partition(b"\n")
        meta = json.loads(header)
        return cls(
            body, meta["content_type"], meta["status"], meta["rendered_at"], meta["render_ms"]
        )


def rendered(render: Callable[[], tuple[bytes, str, int]]) -> Entry:
    """Run ``render`` (body, content type, status) and stamp the result with when and how long."""
    wall, started = time.time(), time.perf_counter()
    body, content_type, status = render()
    return Entry(body, content_type, status, wall, round((time.perf_counter() - started) * 1000, 1))


class RenderBusy(Exception):
    """Another process is rendering and there is no copy to answer meanwhile."""


class RenderFailed(Exception):
    """A render met an error (the database down or past its statement timeout); ``entry`` says so.

    A worker's fallback then answers the copy it has (stale-if-error), and
    answers ``entry`` only when there is none.
    """

    def __init__(self, entry: Entry):
        super().__init__("render failed")
        self.entry = entry


class PageCache:
    def __init__(self, directory: Path, stale_seconds: float):
        self.directory, self.stale_seconds = directory, stale_seconds
        directory.mkdir(parents=True, exist_ok=True)
        self._seen: dict[str, tuple[tuple[int, int, int], Entry]] = {}
        self._lock = threading.Lock()  # flock does not exclude threads sharing one open file

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.entry"

    def read(self, key: str) -> Entry | None:
        """The entry as last written by any process, or None; rereads the file only when it changed."""
        path = self._path(key)
        try:
            st = path.stat()
        except FileNotFoundError:
            self._seen.pop(key, None)
            return None
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen.get(key)
        if seen and seen[0] == stamp:
            return seen[1]
        try:
            entry = Entry.from_bytes(path.read_bytes())
        except FileNotFoundError:
            # replaced between stat and read: the next request sees the new one
            return seen[1] if seen else None
        self._seen[key] = (stamp, entry)
        return entry

    def write(self, key: str, entry: Entry) -> None:
        """Replace the entry atomically (a cache: no fsync, a crash only loses a refresh)."""
        write_bytes_atomic(self._path(key), entry.to_bytes())

    @contextmanager
    def render_lock(self, wait: bool) -> Iterator[bool]:
        """Hold the one render slot of this cache; yields False when ``wait`` is off and it is taken."""
        with self._lock if wait else _try(self._lock) as got_thread:
            if not got_thread:
                yield False
                return
            with open(self.directory / LOCK_NAME, "a+b") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)

    def get(self, key: str, render: Callable[[], Entry]) -> Entry:
        """The cached entry; rendered here only when missing or stale and no one else is rendering."""
        entry = self.read(key)
        if entry is not None and entry.age() <= self.stale_seconds:
            return entry
        with self.render_lock(wait=False) as mine:
            if not mine:
                if entry is None:
                    raise RenderBusy(key)
                return entry
            again = self.read(key)  # written while we waited for the lock?
            if again is not None and again.age() <= self.stale_seconds:
                return again
            try:
                fresh = render()
            except RenderFailed as failed:
                if entry is not None:
                    return entry  # stale-if-error: the last good copy beats an error page
                fresh = failed.entry
            self.write(key, fresh)
            return fresh


@contextmanager
def _try(lock: threading.Lock) -> Iterator[bool]:
    got = lock.acquire(blocking=False)
    try:
        yield got
    finally:
        if got:
            lock.release()
