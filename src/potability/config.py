"""One settings object (environment) and one params loader (experiment).

Secrets and connection strings come only from the environment; reproducible
experiment numbers come only from ``params.yaml``. Paths are anchored at the
project root, which is the working directory (as for ``dvc`` and ``git``) unless
``POTABILITY_ROOT`` says otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ValueError(f"environment variable {name}={raw!r} is not a number") from exc


def _env_int(name: str, default: int) -> int:
    return int(_env_float(name, default))


def _env_path(name: str, default: Path, root: Path) -> Path:
    raw = os.environ.get(name)
    path = Path(raw) if raw else default
    return path if path.is_absolute() else root / path


@dataclass(frozen=True)
class Settings:
    """Everything that differs between machines, read once from the environment."""

    root: Path = field(
        default_factory=lambda: Path(os.environ.get("POTABILITY_ROOT") or Path.cwd()).resolve()
    )

    @cached_property
    def database_url(self) -> str | None:
        return os.environ.get("DATABASE_URL") or None

    @cached_property
    def workspace(self) -> Path:
        """Where machine-local state lives (embedded Postgres, MLflow artifacts): the DVC workspace.

        A queued ``dvc exp run`` works in a copy under ``.dvc/tmp/exps/``; its
        stages must reach the workspace's database, not start an empty one.
        """
        parts = self.root.parts
        for i in range(len(parts) - 2):
            if parts[i : i + 3] == (".dvc", "tmp", "exps"):
                return Path(*parts[:i])
        return self.root

    @cached_property
    def pgdata(self) -> Path:
        return _env_path("POTABILITY_PGDATA", Path(".pgdata"), self.workspace)

    @cached_property
    def mlflow_tracking_uri(self) -> str | None:
        """An explicit tracking store; unset means the ``mlflow`` database beside ours."""
        return os.environ.get("MLFLOW_TRACKING_URI") or None

    @cached_property
    def mlflow_artifacts(self) -> Path:
        return _env_path("POTABILITY_MLFLOW_ARTIFACTS", Path("mlartifacts"), self.workspace)

    @cached_property
    def dask_scheduler_address(self) -> str | None:
        return os.environ.get("DASK_SCHEDULER_ADDRESS") or None

    # The registry: what `potability deploy` ships to and what every server follows.
    @cached_property
    def registered_model(self) -> str:
        return os.environ.get("POTABILITY_REGISTERED_MODEL") or "water-potability"

    @cached_property
    def champion_alias(self) -> str:
        return os.environ.get("POTABILITY_CHAMPION_ALIAS") or "champion"

    @cached_property
    def promoted_dir(self) -> Path:
        """The pipeline's decision (a DVC output): what `potability deploy` ships by default."""
        return _env_path("POTABILITY_PROMOTED_DIR", Path("models/promoted"), self.root)

    @cached_property
    def model_cache_dir(self) -> Path:
        """Where a server keeps the versions it loaded, to start from during a registry outage."""
        return _env_path("POTABILITY_MODEL_CACHE", Path(".model-cache"), self.root)

    @cached_property
    def spool_dir(self) -> Path:
        return _env_path("POTABILITY_SPOOL_DIR", Path(".spool"), self.root)

    @cached_property
    def params_path(self) -> Path:
        return _env_path("POTABILITY_PARAMS", Path("params.yaml"), self.root)

    # Server tuning: operational numbers, not experiment numbers.
    @cached_property
    def max_batch(self) -> int:
        return _env_int("POTABILITY_MAX_BATCH", 1000)

    @cached_property
    def max_body_bytes(self) -> int:
        return _env_int("POTABILITY_MAX_BODY_BYTES", 1_000_000)

    @cached_property
    def reading_max_skew_seconds(self) -> float:
        """How far a sensor's ``read_at`` may lie after the server's clock before it is refused (400)."""
        return _env_float("POTABILITY_READING_MAX_SKEW_SECONDS", 300.0)

    @cached_property
    def token_cache_seconds(self) -> float:
        return _env_float("POTABILITY_TOKEN_CACHE_SECONDS", 5.0)

    @cached_property
    def log_flush_seconds(self) -> float:
        return _env_float("POTABILITY_LOG_FLUSH_SECONDS", 0.2)

    @cached_property
    def log_batch_rows(self) -> int:
        return _env_int("POTABILITY_LOG_BATCH_ROWS", 500)

    @cached_property
    def spool_replay_seconds(self) -> float:
        return _env_float("POTABILITY_SPOOL_REPLAY_SECONDS", 2.0)

    @cached_property
    def spool_max_bytes(self) -> int:
        """The spool's disk cap: past it, with Postgres down, /v1/predict says 503 (nothing unlogged)."""
        return _env_int("POTABILITY_SPOOL_MAX_BYTES", 1_000_000_000)

    @cached_property
    def log_queue_max_rows(self) -> int:
        """Answered rows a worker may hold in memory before it refuses new ones (503)."""
        return _env_int("POTABILITY_LOG_QUEUE_MAX_ROWS", 50_000)

    @cached_property
    def token_stale_seconds(self) -> float:
        """How long a sensor token verified before keeps working while Postgres is down."""
        return _env_float("POTABILITY_TOKEN_STALE_SECONDS", 600.0)

    @cached_property
    def model_poll_seconds(self) -> float:
        return _env_float("POTABILITY_MODEL_POLL_SECONDS", 5.0)

    @cached_property
    def registry_connect_timeout(self) -> float:
        """How long a server waits for the registry's database before serving its cache."""
        return _env_float("POTABILITY_REGISTRY_CONNECT_TIMEOUT", 3.0)

    # The inference log at volume (issue 13): partitions, retention, maintenance, page reads.
    @cached_property
    def log_retention_days(self) -> int:
        """Whole daily log partitions older than this are dropped (0 = keep forever); rollups stay."""
        return _env_int("POTABILITY_LOG_RETENTION_DAYS", 0)

    @cached_property
    def log_partitions_ahead_days(self) -> int:
        """Daily log partitions created ahead of today, so a day never starts in the default one."""
        return _env_int("POTABILITY_LOG_PARTITIONS_AHEAD_DAYS", 7)

    @cached_property
    def log_maintenance_seconds(self) -> float:
        """How often a server runs log maintenance (partitions ahead, retention, model edges)."""
        return _env_float("POTABILITY_LOG_MAINTENANCE_SECONDS", 3600.0)

    @cached_property
    def log_maintenance_lock_timeout_seconds(self) -> float:
        """How long maintenance waits for the log's lock: it retries next time, writers never wait long."""
        return _env_float("POTABILITY_LOG_MAINTENANCE_LOCK_TIMEOUT_SECONDS", 5.0)

    @cached_property
    def rollups_pool_size(self) -> int:
        """Connections a server keeps for the page's rollup reads (its own, never the log writer's)."""
        return _env_int("POTABILITY_ROLLUPS_POOL_SIZE", 2)

    @cached_property
    def page_requires_token(self) -> bool:
        return os.environ.get("POTABILITY_PAGE_REQUIRES_TOKEN", "0").lower() in {"1", "true", "yes"}

    # The retrain flow talks to a running server when one is configured.
    @cached_property
    def server_url(self) -> str | None:
        return os.environ.get("POTABILITY_SERVER_URL") or None

    @cached_property
    def admin_token(self) -> str | None:
        return os.environ.get("POTABILITY_ADMIN_TOKEN") or None

    # The sensors' client (potability.client, `potability predict`): how hard it tries.
    @cached_property
    def client_timeout_seconds(self) -> float:
        """How long the client waits for one answer before it counts the try as failed."""
        return _env_float("POTABILITY_CLIENT_TIMEOUT_SECONDS", 10.0)

    @cached_property
    def client_retries(self) -> int:
        """Tries after the first on a 503 or a lost connection (a restart takes seconds)."""
        return _env_int("POTABILITY_CLIENT_RETRIES", 8)

    @cached_property
    def client_backoff_seconds(self) -> float:
        """The first wait between tries; it doubles each time, with jitter."""
        return _env_float("POTABILITY_CLIENT_BACKOFF_SECONDS", 0.5)

    @cached_property
    def client_max_backoff_seconds(self) -> float:
        return _env_float("POTABILITY_CLIENT_MAX_BACKOFF_SECONDS", 30.0)

    @cached_property
    def admin_token_block(self) -> str:
        """The Prefect Secret block holding the admin token when POTABILITY_ADMIN_TOKEN is unset."""
        return os.environ.get("POTABILITY_ADMIN_TOKEN_BLOCK") or "potability-admin-token"

    @cached_property
    def retrain_cron(self) -> str:
        return os.environ.get("POTABILITY_RETRAIN_CRON", "0 3 * * *")

    @cached_property
    def reload_timeout_seconds(self) -> float:
        return _env_float("POTABILITY_RELOAD_TIMEOUT_SECONDS", 10.0)


def load_params(path: Path) -> dict[str, Any]:
    """Read the experiment parameters file."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


def get_settings() -> Settings:
    """Return settings for the current environment and working directory."""
    return Settings()
