"""A per-client token bucket on the open page and stats, shared by every worker of the server.

The client is the remote address (X-Forwarded-For's last hop only when
``trust_forwarded_for`` says a proxy sets it). Buckets live in a small
memory-mapped file in the page cache's directory, under an ``flock``, so a
client gets the configured rate from the server as a whole, not once per
worker. A fixed table: a client hashes to a slot and probes a few after it;
when all are taken, the one idle longest is reused (its bucket had refilled,
so nothing is lost). Authenticated API routes never pass through here.
"""

from __future__ import annotations

import fcntl
import hashlib
import math
import mmap
import os
import struct
import threading
import time
from pathlib import Path

from flask import Flask, request

from potability.config import Settings
from potability.serve import context
from potability.serve.errors import ApiError

# a slot: client hash (0 = free), tokens left, last update (monotonic, system-wide)
SLOT = struct.Struct("<Qdd")
PROBES = 8  # slots a client may land in: collisions stay rare without a real hash table
LIMITED_ENDPOINTS = frozenset({"page.page", "page.stats", "static"})


class RateLimiter:
    @classmethod
    def from_settings(cls, settings: Settings) -> RateLimiter:
        """The limiter every process of one server shares (its map under the run directory)."""
        return cls(
            settings.ratelimit_path,
            settings.page_rate_per_second,
            settings.page_rate_burst,
            settings.page_rate_clients,
        )

    def __init__(self, path: Path, per_second: float, burst: int, clients: int):
        if per_second <= 0 or burst < 1 or clients < PROBES:
            raise ValueError(
                f"rate limit: per_second={per_second} must be > 0, burst={burst} >= 1, "
                f"clients={clients} >= {PROBES}"
            )
        self.per_second, self.burst, self.clients = per_second, burst, clients
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        size = clients * SLOT.size
        if os.fstat(self._fd).st_size < size:
            # every worker asks for the same size: a race changes nothing
            os.ftruncate(self._fd, size)
        self._map = mmap.mmap(self._fd, size)
        self._lock = threading.Lock()  # flock does not exclude threads sharing one descriptor

    def take(self, client: str) -> float:
        """Spend one token of ``client``'s bucket: 0 when allowed, else seconds until one is back."""
        key = (
            int.from_bytes(hashlib.blake2b(client.encode(), digest_size=8).digest(), "little") or 1
        )
        now = time.monotonic()
        with self._lock:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                offset, tokens, stamp = self._find(key, now)
                if stamp > now:  # a table from before a reboot: start this client afresh
                    tokens, stamp = float(self.burst), now
                tokens = min(float(self.burst), tokens + (now - stamp) * self.per_second)
                allowed = tokens >= 1.0
                if allowed:
                    tokens -= 1.0
                SLOT.pack_into(self._map, offset, key, tokens, now)
            finally:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        return 0.0 if allowed else (1.0 - tokens) / self.per_second

    def _find(self, key: int, now: float) -> tuple[int, float, float]:
        """The slot of ``key`` (offset, tokens, stamp); a free or the longest-idle slot for a new one."""
        start = key % self.clients
        oldest: tuple[float, int] | None = None
        for i in range(PROBES):
            offset = ((start + i) % self.clients) * SLOT.size
            owner, tokens, stamp = SLOT.unpack_from(self._map, offset)
            if owner == key:
                return offset, tokens, stamp
            if owner == 0:
                return offset, float(self.burst), now
            if oldest is None or stamp < oldest[0]:
                oldest = (stamp, offset)
        assert oldest is not None
        return oldest[1], float(self.burst), now

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)


def client_address(trust_forwarded_for: bool) -> str:
    """Who is asking: the peer address, or the proxy's record of it when we are told to trust that."""
    if trust_forwarded_for:
        forwarded = request.headers.get("X-Forwarded-For", "")
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return request.remote_addr or "unknown"


def init_app(app: Flask, limiter: RateLimiter) -> None:
    """Check the bucket before any open page, stats or static request; 429 with Retry-After past it."""
    app.extensions[context.RATELIMIT] = limiter

    @app.before_request
    def limit_open_reads():
        if request.endpoint not in LIMITED_ENDPOINTS:
            return None
        wait = limiter.take(client_address(context.settings().trust_forwarded_for))
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limiter.burst} requests at once or {limiter.per_second:g} per second "
                f"from this address on the open page and stats; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )
        return None
