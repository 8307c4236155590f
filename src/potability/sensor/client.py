"""The sensors' side of ``POST /v1/predict``: typed answers, batches, retries, an optional outbox.

A reading gets its own id and time once, when it is made (``client.reading``),
so however often it is sent the server logs it once and answers with the same
``inference_id`` (potability/sensor/readings.py). That makes every retry safe: ``predict``
sends readings in batches of the server's maximum and tries again, with
exponential back-off and jitter, on a 503 (502/504 from a proxy) or a lost
connection or timeout — never on a 4xx, where sending the same thing again
cannot help. With an ``outbox`` directory, ``enqueue`` keeps readings on disk
until ``flush`` has them answered, so a sensor offline for an hour sends them
when it is back.

Example::

    with PotabilityClient("http://plant:8000", token, outbox="/var/lib/sensor") as client:
        client.enqueue([client.reading({"ph": 7.1, "Turbidity": 3.2})])
        delivery = client.flush()  # answers now, or kept for the next flush
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from potability.config import get_settings
from potability.sensor.readings import Reading, new_reading

log = logging.getLogger(__name__)

# what a try can end in that another try may fix: the server restarting (503, or 502/504 from a
# proxy in front of it while it is away), a cut line, a timeout
RETRY_STATUSES = frozenset({502, 503, 504})
RETRY_EXCEPTIONS = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


@dataclass(frozen=True)
class Answer:
    reading_id: str
    read_at: str
    potable: bool
    probability: float
    threshold: float
    model_version: str
    inference_id: str


class ClientError(Exception):
    """Readings not answered; ``answers`` holds those answered before it happened."""

    def __init__(self, message: str):
        super().__init__(message)
        self.answers: list[Answer] = []


class Refused(ClientError):
    """The server will not take this request as it is: a 4xx, or a server error (never retried).

    ``field`` and ``reading`` name what it refused, when it was one value of one reading.
    """

    def __init__(self, status: int, error: Mapping[str, Any]):
        """``error`` is the body's ``{"code", "message", "field", "index"}`` (potability/serve/errors.py)."""
        self.status, self.code = status, error.get("code", "error")
        self.field, self.index = error.get("field"), error.get("index")
        self.reading: Reading | None = None
        where = f"{self.field}: " if self.field else ""
        super().__init__(f"{status} {self.code}: {where}{error.get('message', '')}")


class Unavailable(ClientError):
    """The server did not answer after every try (down, restarting, or unreachable)."""


@dataclass
class Stats:
    """What the client did, for a sensor's own logs and for tests."""

    requests: int = 0
    retries: int = 0


@dataclass
class Delivery:
    """What one ``flush`` did with the outbox."""

    answers: list[Answer] = field(default_factory=list)
    rejected: list[tuple[Reading, str]] = field(default_factory=list)  # set aside, with why
    pending: int = 0  # still in the outbox
    error: str | None = None  # why it stopped early (server unavailable); None when all sent


class PotabilityClient:
    """A sensor's connection to the potability server.

    Args:
        url: the server's base URL, e.g. ``http://plant:8000``.
        token: a sensor token (its name is the sensor id the answers are logged under).
        outbox: a directory for readings waiting to be answered (``enqueue``/``flush``).
        batch_size: readings per request; default the server's maximum (from /openapi.json).
        timeout: seconds per try; default ``POTABILITY_CLIENT_TIMEOUT_SECONDS`` (10).
        retries: tries after the first; default ``POTABILITY_CLIENT_RETRIES`` (8).
        backoff: the first wait, doubled each try; default ``POTABILITY_CLIENT_BACKOFF_SECONDS`` (0.5).
        max_backoff: the longest wait; default ``POTABILITY_CLIENT_MAX_BACKOFF_SECONDS`` (30).

    Each wait is half its step plus a random part of the other half ("equal
    jitter"): sensors that lost the server together do not all return at once,
    and the defaults wait at least ~46 s in all before giving up.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        outbox: str | Path | None = None,
        batch_size: int | None = None,
        timeout: float | None = None,
        retries: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
    ):
        settings = get_settings()
        self.url = url.rstrip("/")
        self.timeout = settings.client_timeout_seconds if timeout is None else timeout
        self.retries = settings.client_retries if retries is None else retries
        self.backoff = settings.client_backoff_seconds if backoff is None else backoff
        self.max_backoff = (
            settings.client_max_backoff_seconds if max_backoff is None else max_backoff
        )
        self._batch_size = batch_size
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {token}"
        self.stats = Stats()
        self.outbox = None
        if outbox is not None:
            from potability.sensor.outbox import Outbox

            self.outbox = Outbox(Path(outbox))

    def __enter__(self) -> PotabilityClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._session.close()
        if self.outbox is not None:
            self.outbox.close()

    reading = staticmethod(new_reading)

    def predict(self, readings: Iterable[Reading | Mapping[str, Any]]) -> list[Answer]:
        """Send readings now and return their answers in order (plain dicts become new readings).

        Raises ``Refused`` (a 4xx, naming the field and reading) or
        ``Unavailable`` (every try failed); either carries the answers given
        before it.
        """
        batch = [
            r if isinstance(r, Reading) else new_reading(r, index=i) for i, r in enumerate(readings)
        ]
        answers: list[Answer] = []
        try:
            for chunk in self._chunks(batch):
                answers += self._send(chunk)
        except ClientError as exc:
            exc.answers = answers
            raise
        return answers

    def enqueue(self, readings: Iterable[Reading]) -> int:
        """Keep readings in the outbox (on disk, fsync'd) until answered; returns how many are new."""
        return self._require_outbox().add(list(readings))

    def flush(self) -> Delivery:
        """Send what the outbox holds, oldest first; a reading leaves it only once answered.

        A reading the server refuses (a 400 naming it) is set aside in the
        outbox's ``rejected`` table with the reason, not dropped, and the rest
        go on. When the server stays unavailable the rest wait for the next
        flush (``Delivery.error`` says why). A refusal that is not about one
        reading (a revoked token) raises ``Refused``, with the answers so far.
        """
        outbox = self._require_outbox()
        delivery = Delivery()
        try:
            while chunk := outbox.oldest(self.batch_size()):
                try:
                    answers = self._send(chunk)
                except Refused as exc:
                    if exc.reading is None:
                        raise
                    outbox.reject(exc.reading, str(exc))
                    delivery.rejected.append((exc.reading, str(exc)))
                    log.warning("outbox: reading set aside: %s", exc)
                    continue
                outbox.remove([r.reading_id for r in chunk])
                delivery.answers += answers
        except Unavailable as exc:
            delivery.error = str(exc)
        except Refused as exc:
            exc.answers = delivery.answers
            raise
        delivery.pending = len(outbox)
        return delivery

    def batch_size(self) -> int:
        """Readings per request: as given, else the server's maximum (asked once)."""
        if self._batch_size is None:
            document = self._request("GET", "/openapi.json", None)
            self._batch_size = document["components"]["schemas"]["Batch"]["properties"]["samples"][
                "maxItems"
            ]
        return self._batch_size

    # -- internals ---------------------------------------------------------
    def _require_outbox(self):
        if self.outbox is None:
            raise ValueError("this client has no outbox; pass outbox=DIRECTORY")
        return self.outbox

    def _chunks(self, readings: Sequence[Reading]) -> Iterator[Sequence[Reading]]:
        size = self.batch_size() if readings else 1
        for start in range(0, len(readings), size):
            yield readings[start : start + size]

    def _send(self, chunk: Sequence[Reading]) -> list[Answer]:
        try:
            body = self._request("POST", "/v1/predict", {"samples": [r.body() for r in chunk]})
        except Refused as exc:
            if exc.index is not None and 0 <= exc.index < len(chunk):
                exc.reading = chunk[exc.index]
                exc.args = (f"{exc.args[0]} (reading {exc.reading.reading_id!r})",)
            raise
        return [
            Answer(
                r.reading_id,
                r.read_at,
                p["potable"],
                p["probability"],
                p["threshold"],
                p["model_version"],
                p["inference_id"],
            )
            for r, p in zip(chunk, body["predictions"], strict=True)
        ]

    def _request(self, method: str, path: str, body: Any) -> Any:
        """One call with retries on 503 and lost connections; a 4xx raises ``Refused`` at once."""
        for attempt in range(self.retries + 1):
            self.stats.requests += 1
            try:
                response = self._session.request(
                    method, self.url + path, json=body, timeout=self.timeout
                )
            except RETRY_EXCEPTIONS as exc:
                cause = f"{type(exc).__name__}: {exc}"
            else:
                if response.ok:
                    return response.json()
                if response.status_code not in RETRY_STATUSES:
                    raise _refused(response)
                cause = f"{response.status_code}: {_error(response).get('message', response.text[:200])}"
            if attempt == self.retries:
                break
            step = min(self.max_backoff, self.backoff * 2**attempt)
            wait = step / 2 + random.uniform(0, step / 2)
            log.info(
                "%s %s: %s; try %d of %d in %.1f s",
                method,
                path,
                cause,
                attempt + 2,
                self.retries + 1,
                wait,
            )
            self.stats.retries += 1
            time.sleep(wait)
        raise Unavailable(
            f"{method} {self.url}{path}: no answer after {self.retries + 1} tries; last: {cause}"
        )


def _error(response: requests.Response) -> dict[str, Any]:
    try:
        error = response.json().get("error")
    except ValueError:
        return {}
    return error if isinstance(error, dict) else {}


def _refused(response: requests.Response) -> Refused:
    return Refused(response.status_code, _error(response) or {"message": response.text[:200]})
