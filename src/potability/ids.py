"""Time-ordered inference ids (UUIDv7, RFC 9562), made a whole batch at a time.

Random (v4) ids land all over the primary-key index, so every insert dirties a
random leaf page; v7 ids start with the Unix time in milliseconds, so new rows
go to the index's right edge. A batch takes one clock reading and one
``os.urandom`` call, and its ids are built with numpy rather than one
``uuid.UUID`` per row (a 1,000-row batch spent more time in ``uuid4`` than in
the model).

Layout (RFC 9562 §5.7, with the fixed-length counter of §6.2 method 1):
48-bit ``unix_ts_ms`` · version 7 · 42-bit counter (``rand_a`` and the top 30
bits of ``rand_b``) · variant ``10`` · 32 random bits. The counter starts at a
random value below 2**41 in each new millisecond and counts up within it, so a
process's ids increase with its clock, within a batch and within a millisecond
(across threads too: the state is behind a lock); other processes differ by
the random start and the 32 random bits. The timestamp is always the batch's
``received_at``, which the row stores too: should the clock step back, the ids
follow it rather than claim a time the answer was not given at.
"""

from __future__ import annotations

import os
import threading
from datetime import UTC, datetime

import numpy as np

_COUNTER_BITS = 42
_COUNTER_LOW_BITS = 30  # the part of the counter that lives in rand_b
_SEED_MAX = 1 << (_COUNTER_BITS - 1)  # a fresh millisecond leaves half the counter to count up in
_lock = threading.Lock()
_last_ms = -1
_next_counter = 0
_DASHES = (8, 12, 16, 20)  # where the 32 hex digits are split: 8-4-4-4-12
_SMALL = 8  # below this many ids, plain ints beat numpy's set-up cost (single-row requests)


def _forget_after_fork() -> None:
    """A forked child (a gunicorn worker) draws its own counter start, never its parent's."""
    global _last_ms, _lock
    _last_ms, _lock = -1, threading.Lock()


os.register_at_fork(after_in_child=_forget_after_fork)


def unix_ms(at: datetime) -> int:
    """Milliseconds since the Unix epoch (an aware ``datetime``; naive means UTC)."""
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _reserve(n: int, ms: int) -> tuple[int, int]:
    """Take ``n`` consecutive counter values in millisecond ``ms``; return (ms, first value).

    Only a counter that would run out (2**41 ids in one millisecond) moves on
    to the next millisecond.
    """
    global _last_ms, _next_counter
    with _lock:
        if ms != _last_ms:
            _last_ms = ms
            _next_counter = int.from_bytes(os.urandom(8), "big") % _SEED_MAX
        if _next_counter + n > 1 << _COUNTER_BITS:
            _last_ms += 1
            _next_counter = 0
        first = _next_counter
        _next_counter += n
        return _last_ms, first


def uuid7_batch(n: int, at: datetime | None = None) -> list[str]:
    """``n`` UUIDv7 strings stamped with ``at`` (default now), increasing in order.

    Args:
        n: how many ids.
        at: the time the batch was received; its millisecond is the ids' timestamp.

    Returns:
        Canonical lower-case strings (``xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx``).
    """
    if n <= 0:
        return []
    ms, first = _reserve(n, unix_ms(at or datetime.now(UTC)))
    if n <= _SMALL:
        return [_format(ms, first + i, r) for i, r in enumerate(_randoms(n))]
    counter = np.arange(first, first + n, dtype=np.uint64)
    random = np.frombuffer(os.urandom(4 * n), dtype=">u4").astype(np.uint64)
    high = (np.uint64(ms) << np.uint64(16)) | np.uint64(0x7000) | (counter >> np.uint64(30))
    low = (
        np.uint64(0x8000_0000_0000_0000)
        | ((counter & np.uint64((1 << _COUNTER_LOW_BITS) - 1)) << np.uint64(32))
        | random
    )
    words = np.empty((n, 2), dtype=">u8")
    words[:, 0], words[:, 1] = high, low
    digits = np.frombuffer(words.tobytes().hex().encode("ascii"), dtype="S1").reshape(n, 32)
    dashed = np.insert(digits, _DASHES, b"-", axis=1)  # 36 one-byte columns
    return np.ascontiguousarray(dashed).view("S36").ravel().astype(str).tolist()


def _randoms(n: int) -> list[int]:
    blob = os.urandom(4 * n)
    return [int.from_bytes(blob[i : i + 4], "big") for i in range(0, 4 * n, 4)]


def _format(ms: int, counter: int, random: int) -> str:
    """One id from its parts, the same bits as the vectorised path."""
    value = (
        ms << 80
        | 0x7 << 76
        | (counter >> _COUNTER_LOW_BITS) << 64
        | 0b10 << 62
        | (counter & ((1 << _COUNTER_LOW_BITS) - 1)) << 32
        | random
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
