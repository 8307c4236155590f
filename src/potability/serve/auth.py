"""Bearer tokens from ``water.api_tokens`` (sha256), cached briefly; roles enforced per endpoint.

A cached token is re-checked after ``token_cache_seconds``, so a revocation
takes effect within seconds. When Postgres is down a *sensor* token verified
within the last ``token_stale_seconds`` keeps working (stale-if-error), so
sensors keep getting answers during an outage; lab and admin actions need the
database, and a token never seen gets a 503 ``database_unavailable``.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

from flask import g, request

from potability.errors import MartError
from potability.mart import TokenInfo, WaterMart
from potability.serve import context
from potability.serve.errors import ApiError
from potability.serve.ratelimit import client_address

log = logging.getLogger(__name__)


class TokenCache:
    def __init__(self, mart: WaterMart, ttl_seconds: float, stale_seconds: float):
        self._mart, self._ttl, self._stale = mart, ttl_seconds, stale_seconds
        # token -> (owner, fresh until, verified at), monotonic seconds
        self._entries: dict[str, tuple[TokenInfo, float, float]] = {}
        self._lock = threading.Lock()

    def lookup(self, token: str) -> TokenInfo | None:
        now = time.monotonic()
        with self._lock:
            cached = self._entries.get(token)
        if cached and cached[1] > now:
            return cached[0]
        try:
            info = self._mart.lookup_token(token)
        except MartError:  # the mart maps a lost connection, whatever psycopg2 calls it
            if cached and cached[0].role == "sensor" and now - cached[2] <= self._stale:
                return cached[0]  # Postgres is down: keep serving a sensor we verified lately
            raise ApiError(
                503, "database_unavailable", "cannot verify the token: the database is unavailable"
            ) from None
        with self._lock:
            if info is None:
                self._entries.pop(token, None)
            else:
                self._entries[token] = (info, now + self._ttl, now)
        return info


def refused(status: int, why: str, message: str, field: str | None = "Authorization") -> ApiError:
    """A failed login, logged with the client's address and why, never the token it sent."""
    client = client_address(context.settings().trust_forwarded_for)
    log.warning("auth: %d for %s %s from %s: %s", status, request.method, request.path, client, why)
    code = "unauthorized" if status == 401 else "forbidden"
    return ApiError(status, code, message, field=field)


def require(*roles: str):
    """Allow the view only for a valid bearer token whose role is in ``roles``; sets ``g.token``."""

    def decorator(view):
        @functools.wraps(view)
        def wrapped(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise refused(401, "no bearer token", "send 'Authorization: Bearer <token>'")
            info = context.part(context.TOKENS).lookup(token.strip())
            if info is None:
                raise refused(401, "unknown or revoked token", "unknown or revoked token")
            if info.role not in roles:
                raise refused(
                    403,
                    f"token {info.name!r} is a {info.role} token",
                    f"a {info.role} token cannot do this; needs {' or '.join(roles)}",
                    field=None,
                )
            g.token = info
            return view(*args, **kwargs)

        return wrapped

    return decorator
