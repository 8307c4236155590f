"""The served model: the version the MLflow alias ``champion`` names, loaded once, swapped atomically.

A watcher polls the alias (``POST /admin/reload`` does it at once). A new
version is downloaded into a local cache, checked fully (sha256 against its
manifest: every file's sha256, the manifest's own against the registry tag;
features, a probe) and only then swapped in; a bad one is refused and the old
model keeps serving. When Postgres or the
artifact store is down the cached model keeps serving, and a server restarted
during an outage starts from the cache. A server host needs only the database
and the registry's address (a tracking server's URL), never a checkout of the
repository nor the disk the pipeline wrote its artifacts to.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path

from potability import artifacts, tracking
from potability.artifacts import ArtifactError, ServedModel

log = logging.getLogger(__name__)
CURRENT_FILE = "champion.json"  # in the cache: which cached version was served last


class RegistryUnavailable(ArtifactError):
    """The registry (Postgres) or the artifact store cannot be read right now."""


class ModelHolder:
    def __init__(
        self,
        registered_model: str,
        alias: str,
        cache_dir: Path,
        poll_seconds: float,
        tracking_uri: Callable[[], str],
        connect_timeout: float = 3.0,
        on_swap: Callable[[ServedModel | None, ServedModel], None] | None = None,
    ):
        self.registered_model = registered_model
        self.alias = alias
        self.cache_dir = cache_dir
        self.current: ServedModel | None = None
        self.last_error: str | None = None
        # "registry" once the registry named the served version; "cache" while the server serves
        # what it cached before a restart because the registry could not be read
        self.source: str | None = None
        self._poll = poll_seconds
        self._tracking_uri = tracking_uri
        self._connect_timeout = connect_timeout
        self._on_swap = on_swap
        self._client = None
        self._refused: dict[
            str, str
        ] = {}  # registry version -> why (not downloaded again every poll)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- loading ----------------------------------------------------------------
    def start(self) -> None:
        """Load the champion from the registry, else the last cached version (outage at start)."""
        try:
            self.reload()
        except RegistryUnavailable as exc:
            log.warning("registry unavailable at start (%s); trying the local cache", exc)
            try:
                self._swap(self._load_cached())
                self.source, self.last_error = (
                    "cache",
                    str(exc),
                )  # /readyz says why, until a poll heals
                log.warning(
                    "serving cached version %s until the registry is back", self.current.version
                )
            except ArtifactError as cache_exc:
                log.warning("no usable cached model either: %s", cache_exc)
        except ArtifactError as exc:
            log.warning("starting without a model (readyz is false until one loads): %s", exc)

    def reload(self, force: bool = True) -> ServedModel:
        """Serve the version the alias names now; raise ArtifactError (old model kept) if it is unusable.

        The watcher passes ``force=False``: a version already refused is not
        downloaded again every poll (an admin reload retries it).
        """
        with self._lock:
            found = self._ask_registry()
            if found is None:
                raise self._refuse(
                    ArtifactError(
                        f"no version of {self.registered_model} has the alias {self.alias!r} yet: "
                        "run `potability deploy`"
                    )
                )
            current = self.current
            if current is not None and current.meta.get("registered_version") == found.version:
                self.last_error = None
                self.source = "registry"
                return current
            if not force and found.version in self._refused:
                raise ArtifactError(self._refused[found.version])
            try:
                candidate = self._fetch(found)
            except RegistryUnavailable as exc:
                raise self._refuse(exc) from None
            except ArtifactError as exc:
                self._refused[found.version] = str(exc)
                raise self._refuse(exc) from None
            self._swap(candidate)
            self.source = "registry"
            return candidate

    def _ask_registry(self) -> tracking.RegisteredVersion | None:
        try:
            if self._client is None:
                import mlflow

                uri = self._tracking_uri()
                _check_reachable(uri, self._connect_timeout)
                self._client = mlflow.MlflowClient(tracking_uri=uri)
            return tracking.version_for_alias(self.registered_model, self.alias, self._client)
        except Exception as exc:  # MLflow, SQLAlchemy and psycopg2 each raise their own types
            self._client = None  # a fresh client (and connection pool) on the next try
            raise self._refuse(
                RegistryUnavailable(f"cannot read the registry: {_first_line(exc)}")
            ) from None

    def _fetch(self, found: tracking.RegisteredVersion) -> ServedModel:
        """The version from the local cache if it is there and intact, else from the artifact store."""
        from potability.tracking import fetch_version

        directory = self.cache_dir / f"v{found.version}"
        if (directory / artifacts.META_FILE).exists():
            try:
                cached = artifacts.load_model_dir(directory)
                if cached.meta["manifest_sha256"] == found.tags.get(tracking.MANIFEST_TAG):
                    return ServedModel(
                        cached.model, {**cached.meta, "registered_version": found.version}
                    )
            except ArtifactError as exc:
                log.warning(
                    "cached version %s is unusable (%s); downloading it again", found.version, exc
                )
        try:
            return fetch_version(found, directory, self._client)
        except ArtifactError:
            raise
        except Exception as exc:  # the artifact store is down or the files are gone
            raise RegistryUnavailable(
                f"cannot download version {found.version}: {_first_line(exc)}"
            ) from None

    def _load_cached(self) -> ServedModel:
        pointer = self.cache_dir / CURRENT_FILE
        try:
            recorded = json.loads(pointer.read_text(encoding="utf-8"))
            version, manifest = recorded["registered_version"], recorded["manifest_sha256"]
        except (FileNotFoundError, KeyError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{pointer}: no cached champion ({exc})") from exc
        cached = artifacts.load_model_dir(self.cache_dir / f"v{version}")
        if cached.meta["manifest_sha256"] != manifest:  # checked against the registry when loaded
            raise ArtifactError(f"cached version {version}: its manifest changed since it served")
        return ServedModel(cached.model, {**cached.meta, "registered_version": version})

    def _swap(self, candidate: ServedModel) -> None:
        old = self.current
        self.current = candidate  # one reference assignment: requests see old or new, never a mix
        self.last_error = None
        artifacts.write_json_atomic(
            self.cache_dir / CURRENT_FILE,
            {
                "registered_version": candidate.meta["registered_version"],
                "model_version": candidate.version,
                "manifest_sha256": candidate.meta["manifest_sha256"],
            },
        )
        if old is None or old.version != candidate.version:
            log.info(
                "serving %s version %s: %s (%s, threshold %.3f)",
                self.registered_model,
                candidate.meta["registered_version"],
                candidate.version,
                candidate.meta.get("kind"),
                candidate.threshold,
            )
        if self._on_swap:
            self._on_swap(old, candidate)

    def _refuse(self, exc: ArtifactError) -> ArtifactError:
        if str(exc) != self.last_error:  # log a lasting outage once, not every poll
            serving = self.current.version if self.current else "nothing"
            log.error("model reload refused: %s; still serving %s", exc, serving)
        self.last_error = str(exc)
        return exc

    def history(self) -> list[dict]:
        """Every promotion decision shipped with the served version (its history.json)."""
        current = self.current
        if current is None:
            return []
        return artifacts.read_history(self.cache_dir / f"v{current.meta['registered_version']}")

    # -- watching ---------------------------------------------------------------
    def start_watching(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="champion-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _watch(self) -> None:
        while not self._stop.wait(self._poll):
            try:
                self.reload(force=False)
            except ArtifactError:
                pass  # logged once in _refuse(); the old model keeps serving


def _check_reachable(uri: str, timeout: float) -> None:
    """Fail within ``timeout`` when the registry is down.

    MLflow's SQL store retries its first connection for minutes, and its REST
    client retries a tracking server with back-off as long; a server starting
    (or polling) during an outage must fall back to its cache at once. A
    tracking server is asked its ``/health``; its later calls retry once
    (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, unless set): the next poll is the retry.
    """
    if uri.lower().startswith(("http://", "https://")):
        import os
        import urllib.request

        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as answer:  # noqa: S310 (http(s) checked above)
            answer.read()
        return
    if not uri.startswith(("postgresql", "postgres")):
        return
    import psycopg2

    dsn = uri.replace("postgresql+psycopg2://", "postgresql://", 1)
    psycopg2.connect(dsn, connect_timeout=max(1, int(timeout))).close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else repr(exc)
