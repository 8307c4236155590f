"""One settings object (environment) and one params loader (experiment).

Secrets, connection strings and operational numbers come only from the
environment, or from a ``.env`` file in the project root (the environment wins);
reproducible experiment numbers come only from ``params.yaml``. Paths are
anchored at the project root, which is the working directory (as for ``dvc`` and
``git``) unless ``POTABILITY_ROOT`` says otherwise.

Every knob is a typed field of :class:`Settings`, read and checked once when the
object is built: a bad value stops a command or a server at start with the
variable's name and what is wrong, never hours later in a request or at 03:00.
The settings table in docs/settings.md is generated from this class (``python -m
potability.config``) and a test keeps the two equal.
"""

from __future__ import annotations

import os
import re
import sys
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any

import annotated_types
import yaml
from pydantic import AfterValidator, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SettingsError(ValueError):
    """A setting has a value we refuse; the message names each variable and what is wrong."""


class Kind:
    """How the settings table names a field's type when the Python type says too little."""

    def __init__(self, text: str):
        self.text = text


def _url(schemes: tuple[str, ...], example: str):
    """A validator for an optional URL whose scheme must be one of ``schemes``."""

    def check(value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme.split("+", 1)[0] not in schemes:
            raise ValueError(f"expected a URL like {example}")
        return value

    return AfterValidator(check)


def _cron(value: str) -> str:
    # Five fields, minute to weekday; Prefect checks the rest when it schedules.
    if len(value.split()) != 5 or not re.fullmatch(r"[0-9*/,\-A-Za-z ]+", value):
        raise ValueError("expected a cron line of 5 fields, like '0 3 * * *'")
    return value


def _text(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be blank")
    return value


def _bind(value: str | None) -> str | None:
    """A listening address, host:port (a name, an IPv4 address or a bracketed IPv6 one)."""
    if value is None:
        return None
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(\d{1,5})", value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ValueError("expected host:port to listen on, like 0.0.0.0:8001")
    return value


def _host_port(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"[a-z]+://\S+|[^\s:/]+:\d+", value):
        raise ValueError("expected host:port, like tcp://10.0.0.5:8786")
    return value


PostgresUrl = Annotated[
    str | None,
    _url(("postgresql", "postgres"), "postgresql://user:password@host:5432/db"),
    Kind("PostgreSQL URL"),
]
TrackingUri = Annotated[
    str | None,
    _url(
        ("postgresql", "postgres", "http", "https", "file", "sqlite", "databricks"),
        "postgresql+psycopg2://host/mlflow or http://host:5000",
    ),
    Kind("MLflow tracking URI"),
]
HttpUrl = Annotated[str | None, _url(("http", "https"), "http://host:8000"), Kind("http(s) URL")]
Name = Annotated[str, AfterValidator(_text), Kind("text")]
Cron = Annotated[str, AfterValidator(_cron), Kind("cron (5 fields, UTC)")]
Seconds = Annotated[float, annotated_types.Gt(0), Kind("seconds > 0")]
SecondsOrZero = Annotated[float, annotated_types.Ge(0), Kind("seconds ≥ 0")]
Count = Annotated[int, annotated_types.Gt(0), Kind("integer > 0")]
CountOrZero = Annotated[int, annotated_types.Ge(0), Kind("integer ≥ 0")]


def workspace_of(root: Path) -> Path:
    """The DVC workspace a root belongs to: itself, or the one a queued ``dvc exp run`` copied.

    A queued experiment works in a copy under ``.dvc/tmp/exps/``; its stages
    must reach the workspace's database, not start an empty one.
    """
    parts = root.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return root


def _env(name: str, **kw: Any):
    """A field read from environment variable ``name`` (and from ``.env``)."""
    return Field(validation_alias=name, **kw)


class Settings(BaseSettings):
    """Everything that differs between machines, read and checked once from the environment."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="ignore",  # a .env may hold other tools' variables
        env_ignore_empty=True,  # VAR= means "unset", as it always did here
        populate_by_name=True,  # Settings(root=...) in tests and tools
        use_attribute_docstrings=True,  # docstrings below: the meaning column of docs/settings.md
        env_file_encoding="utf-8",
    )

    # Where things are. Relative paths are taken from the root (or its workspace).
    root: Path = _env("POTABILITY_ROOT", default_factory=Path.cwd)
    """Project root: `dvc.yaml`, `params.yaml`, `models/` (default: the working directory; not read from `.env`, which lives there)."""
    database_url: PostgresUrl = _env("DATABASE_URL", default=None, repr=False)
    """Postgres for the mart and MLflow; unset: an embedded pgserver under `POTABILITY_PGDATA`."""
    pgdata: Path = _env("POTABILITY_PGDATA", default=Path(".pgdata"))
    """Data directory of the embedded Postgres (relative: under the DVC workspace)."""
    db_roles_file: Path = _env("POTABILITY_DB_ROLES_FILE", default=Path(".db-roles.json"))
    """The passwords of the server and pipeline database roles (mode 0600; generated by `potability db migrate`; relative: under the DVC workspace)."""
    mlflow_tracking_uri: TrackingUri = _env("MLFLOW_TRACKING_URI", default=None, repr=False)
    """An explicit MLflow tracking store; unset: the `mlflow` database beside ours."""
    mlflow_artifacts: Annotated[str, AfterValidator(_text), Kind("path or URI")] = _env(
        "POTABILITY_MLFLOW_ARTIFACTS", default="mlartifacts"
    )
    """Where an embedded tracking store (a database or file URI) puts artifacts: a directory (relative: under the DVC workspace) or a URI such as `s3://bucket/path`; with an `http(s)` tracking server, the server decides and this is not read."""
    dask_scheduler_address: Annotated[str | None, AfterValidator(_host_port), Kind("host:port")] = (
        _env("DASK_SCHEDULER_ADDRESS", default=None)
    )
    """A Dask scheduler for grid search; unset: the local cores."""

    # The registry: what `potability deploy` ships to and what every server follows.
    registered_model: Name = _env("POTABILITY_REGISTERED_MODEL", default="water-potability")
    """The MLflow registered model that deploys go to and servers follow."""
    champion_alias: Name = _env("POTABILITY_CHAMPION_ALIAS", default="champion")
    """The registry alias that names the served version."""
    promoted_dir: Path = _env("POTABILITY_PROMOTED_DIR", default=Path("models/promoted"))
    """The pipeline's decision (a DVC output): what `potability deploy` ships by default."""
    model_cache_dir: Path = _env("POTABILITY_MODEL_CACHE", default=Path(".model-cache"))
    """Where a server keeps the versions it loaded, to start from during a registry outage."""
    spool_dir: Path = _env("POTABILITY_SPOOL_DIR", default=Path(".spool"))
    """The inference log's own files: answered rows on disk until Postgres has them."""
    run_dir: Path = _env("POTABILITY_RUN_DIR", default=Path(".run"))
    """A server's state for one run, emptied at each start: `prometheus/`, `page-cache/`, `ratelimit`."""
    params_path: Path = _env("POTABILITY_PARAMS", default=Path("params.yaml"))
    """The experiment parameters file (the quality page reads its `page` section)."""

    # Server tuning: operational numbers, not experiment numbers.
    max_batch: Count = _env("POTABILITY_MAX_BATCH", default=1000)
    """Most samples in one `/v1/predict` or `/v1/samples` body."""
    max_body_bytes: Count = _env("POTABILITY_MAX_BODY_BYTES", default=1_000_000)
    """Largest request body; larger is 413."""
    token_cache_seconds: SecondsOrZero = _env("POTABILITY_TOKEN_CACHE_SECONDS", default=5.0)
    """How long a verified token is trusted without asking Postgres (0: ask every request)."""
    log_flush_seconds: Seconds = _env("POTABILITY_LOG_FLUSH_SECONDS", default=0.2)
    """Longest an answered row waits before its batch is written to Postgres."""
    log_batch_rows: Count = _env("POTABILITY_LOG_BATCH_ROWS", default=5000)
    """Answered rows written to Postgres in one batch."""
    spool_replay_seconds: Seconds = _env("POTABILITY_SPOOL_REPLAY_SECONDS", default=2.0)
    """How often journal files waiting for Postgres (spooled: it was down, or their worker died) are retried."""
    spool_max_bytes: Count = _env("POTABILITY_SPOOL_MAX_BYTES", default=1_000_000_000)
    """The inference log's disk cap (journals, spooled and quarantined files): past it `/v1/predict` says 503 (nothing unlogged)."""
    log_queue_max_rows: Count = _env("POTABILITY_LOG_QUEUE_MAX_ROWS", default=50_000)
    """Answered rows a worker may hold in memory before it refuses new ones (503)."""
    log_spooled_readings_kept: Count = _env("POTABILITY_LOG_SPOOLED_READINGS_KEPT", default=50_000)
    """Readings a worker spooled (Postgres down) and remembers for the 409 on a changed resend (~400 bytes each); past it the oldest are forgotten and a changed resend of one is kept aside at replay."""
    log_journal_fsync: bool = _env("POTABILITY_LOG_JOURNAL_FSYNC", default=False)
    """Also fsync the journal before answering: it then survives a machine crash, not only a killed worker."""
    log_journal_segment_bytes: Count = _env(
        "POTABILITY_LOG_JOURNAL_SEGMENT_BYTES", default=16_000_000
    )
    """Size at which a worker's journal file is closed and a new one begun (each deleted once its rows are stored, or spooled while Postgres is down)."""
    db_connect_timeout_seconds: Seconds = _env("POTABILITY_DB_CONNECT_TIMEOUT_SECONDS", default=5.0)
    """How long any connection to Postgres may take to open before the database counts as down."""
    db_statement_timeout_seconds: Seconds = _env(
        "POTABILITY_DB_STATEMENT_TIMEOUT_SECONDS", default=10.0
    )
    """Longest statement on a server's connections (log, tokens, page reads): past it Postgres cancels it and the server answers as in an outage (cached tokens, the page's last copy)."""
    db_keepalives_idle_seconds: Count = _env("POTABILITY_DB_KEEPALIVES_IDLE_SECONDS", default=10)
    """Idle seconds before TCP keepalives probe a Postgres connection (a blackholed host is found, not waited on)."""
    db_keepalives_interval_seconds: Count = _env(
        "POTABILITY_DB_KEEPALIVES_INTERVAL_SECONDS", default=5
    )
    """Seconds between TCP keepalive probes."""
    db_keepalives_count: Count = _env("POTABILITY_DB_KEEPALIVES_COUNT", default=3)
    """Unanswered keepalive probes after which the connection counts as lost."""
    token_stale_seconds: SecondsOrZero = _env("POTABILITY_TOKEN_STALE_SECONDS", default=600.0)
    """How long a sensor token verified before keeps working while Postgres is down."""
    model_poll_seconds: Seconds = _env("POTABILITY_MODEL_POLL_SECONDS", default=5.0)
    """How often a server asks the registry which version the alias names."""
    registry_connect_timeout: Seconds = _env("POTABILITY_REGISTRY_CONNECT_TIMEOUT", default=3.0)
    """How long a server waits for the registry's database before serving its cache."""
    page_requires_token: bool = _env("POTABILITY_PAGE_REQUIRES_TOKEN", default=False)
    """Whether the quality page at `/` asks for a token."""

    # The open page is served from a cache a renderer process refreshes, never rendered per request.
    page_refresh_seconds: Seconds = _env("POTABILITY_PAGE_REFRESH_SECONDS", default=15.0)
    """How often the renderer re-renders the page and stats; also their Cache-Control max-age."""
    page_stale_seconds: Seconds = _env("POTABILITY_PAGE_STALE_SECONDS", default=120.0)
    """How old a cached page may get before a worker renders it itself (the renderer is dead or stuck)."""
    page_renderer_nice: CountOrZero = _env("POTABILITY_PAGE_RENDERER_NICE", default=10)
    """The renderer's niceness increment: the CPU goes to the sensor workers first."""
    page_rate_per_second: Seconds = _env("POTABILITY_PAGE_RATE_PER_SECOND", default=2.0)
    """Open page/stats requests a client (one remote address) may make per second, sustained."""
    page_rate_burst: Count = _env("POTABILITY_PAGE_RATE_BURST", default=30)
    """Open page/stats requests a client may make at once before the sustained rate applies."""
    page_rate_clients: Count = _env("POTABILITY_PAGE_RATE_CLIENTS", default=4096)
    """Client buckets the rate limit keeps (shared by all workers); the longest idle is reused."""
    trust_forwarded_for: bool = _env("POTABILITY_TRUST_FORWARDED_FOR", default=False)
    """Take the client from X-Forwarded-For (its last hop): only behind a proxy that sets it."""
    # Open traffic on a port of its own (potability/serve/page_listener.py): it never takes a sensor's worker.
    page_bind: Annotated[str | None, AfterValidator(_bind), Kind("host:port")] = _env(
        "POTABILITY_PAGE_BIND", default=None
    )
    """Where a page listener serves `/`, `/model`, `/v1/stats` and `/static` apart from the sensors; unset: none."""
    page_listener_connections: Count = _env("POTABILITY_PAGE_LISTENER_CONNECTIONS", default=8)
    """Connections the page listener answers at once; the rest wait in the port's backlog."""
    page_listener_per_second: CountOrZero = _env("POTABILITY_PAGE_LISTENER_PER_SECOND", default=100)
    """Most connections the page listener takes from its backlog a second, 429s included (0: no cap): a CPU bound whatever the clients do."""
    page_listener_timeout_seconds: Seconds = _env(
        "POTABILITY_PAGE_LISTENER_TIMEOUT_SECONDS", default=10.0
    )
    """How long the page listener waits on a silent client before it drops the connection."""
    page_listener_nice: CountOrZero = _env("POTABILITY_PAGE_LISTENER_NICE", default=10)
    """The page listener's niceness increment: under load the CPU goes to the sensor workers first."""
    page_listener_idle: bool = _env("POTABILITY_PAGE_LISTENER_IDLE", default=True)
    """Run the page listener in Linux's idle scheduling class: only CPU no sensor worker wants (0: niced only)."""
    page_listener_restart_seconds: Seconds = _env(
        "POTABILITY_PAGE_LISTENER_RESTART_SECONDS", default=1.0
    )
    """How long the master waits before starting a page listener again after it died."""
    worker_class: Annotated[str, AfterValidator(_text), Kind("gunicorn worker class")] = _env(
        "POTABILITY_WORKER_CLASS", default="sync"
    )
    """gunicorn's worker class for `potability serve` (sync measured best on 2 cores)."""
    threads: Count = _env("POTABILITY_THREADS", default=1)
    """Threads per gunicorn worker (more than 1 turns sync into gthread)."""

    # nginx in front of the fleet (`potability proxy-config`, potability/proxy.py).
    proxy_client_timeout_seconds: Seconds = _env(
        "POTABILITY_PROXY_CLIENT_TIMEOUT_SECONDS", default=10.0
    )
    """How long nginx waits on a client sending its request (headers, body) or taking its answer before it drops it."""
    proxy_connections_per_client: Count = _env(
        "POTABILITY_PROXY_CONNECTIONS_PER_CLIENT", default=64
    )
    """Requests nginx serves at once for one client address (`limit_conn`); past it: 429."""
    proxy_connect_timeout_seconds: Seconds = _env(
        "POTABILITY_PROXY_CONNECT_TIMEOUT_SECONDS", default=1.0
    )
    """How long nginx tries to connect to a serving host before it tries the next one."""
    proxy_read_timeout_seconds: Seconds = _env(
        "POTABILITY_PROXY_READ_TIMEOUT_SECONDS", default=30.0
    )
    """How long nginx waits for a serving host's answer before it tries the next one."""
    proxy_fail_timeout_seconds: Seconds = _env(
        "POTABILITY_PROXY_FAIL_TIMEOUT_SECONDS", default=10.0
    )
    """How long nginx leaves a serving host out after a failed try (`max_fails=1 fail_timeout`)."""
    proxy_worker_connections: Count = _env("POTABILITY_PROXY_WORKER_CONNECTIONS", default=1024)
    """Connections each nginx worker holds at once, clients and serving hosts together (within the open-file limit)."""

    reading_max_skew_seconds: Seconds = _env("POTABILITY_READING_MAX_SKEW_SECONDS", default=300.0)
    """How far a sensor's `read_at` may lie after the server's clock before it is refused (400)."""
    reading_max_age_seconds: Seconds = _env("POTABILITY_READING_MAX_AGE_SECONDS", default=604_800.0)
    """How far a sensor's `read_at` may lie before the server's clock (400 past it): an outbox's week, no backdating the page's history."""

    # The inference log at volume (issue 13): partitions, retention, maintenance, page reads.
    log_retention_days: CountOrZero = _env("POTABILITY_LOG_RETENTION_DAYS", default=0)
    """Whole daily log partitions older than this are dropped (0 = keep forever); rollups stay. The value `potability db migrate` runs with is recorded in the database: a server's role keeps at least that many days, whatever its own says (a server's 0 takes that value)."""
    log_partitions_ahead_days: Count = _env("POTABILITY_LOG_PARTITIONS_AHEAD_DAYS", default=7)
    """Daily log partitions created ahead of today, so a day never starts in the default one. The value of `potability db migrate` is recorded: a server's role creates at most that many."""
    log_maintenance_seconds: Seconds = _env("POTABILITY_LOG_MAINTENANCE_SECONDS", default=3600.0)
    """How often a server runs log maintenance (partitions ahead, retention, model edges). Twice the value of `potability db migrate` is how far back a server's role matches lab rows again."""
    log_maintenance_lock_timeout_seconds: Seconds = _env(
        "POTABILITY_LOG_MAINTENANCE_LOCK_TIMEOUT_SECONDS", default=5.0
    )
    """How long maintenance waits for the log's lock: it retries next time, writers never wait long."""
    rollups_pool_size: Count = _env("POTABILITY_ROLLUPS_POOL_SIZE", default=2)
    """Connections a server keeps for the page's rollup reads (its own, never the log writer's)."""

    # The sensors' client (potability.sensor.client, `potability predict`): how hard it tries.
    client_timeout_seconds: Seconds = _env("POTABILITY_CLIENT_TIMEOUT_SECONDS", default=10.0)
    """How long the client waits for one answer before it counts the try as failed."""
    client_retries: CountOrZero = _env("POTABILITY_CLIENT_RETRIES", default=8)
    """Tries after the first on a 503 or a lost connection (a restart takes seconds)."""
    client_backoff_seconds: Seconds = _env("POTABILITY_CLIENT_BACKOFF_SECONDS", default=0.5)
    """The first wait between tries; it doubles each time, with jitter."""
    client_max_backoff_seconds: Seconds = _env(
        "POTABILITY_CLIENT_MAX_BACKOFF_SECONDS", default=30.0
    )
    """The longest wait between tries."""

    # The retrain flow talks to a running server when one is configured.
    server_url: HttpUrl = _env("POTABILITY_SERVER_URL", default=None)
    """A running server the retrain flow asks to reload after a deploy."""
    admin_token: str | None = _env("POTABILITY_ADMIN_TOKEN", default=None, repr=False)
    """The admin token for that reload (a secret: never printed)."""
    admin_token_block: Name = _env("POTABILITY_ADMIN_TOKEN_BLOCK", default="potability-admin-token")
    """The Prefect Secret block holding the admin token when `POTABILITY_ADMIN_TOKEN` is unset."""
    deploy_database_url: PostgresUrl = _env(
        "POTABILITY_DEPLOY_DATABASE_URL", default=None, repr=False
    )
    """The owner's database URL for a scheduled retrain's deploy step (register, move the alias, record the deployment), while the rest of the run connects as the pipeline role's `DATABASE_URL` (set in the Secret block by `potability flow deploy`); unset: a local retrain finds the pipeline role's URL from `DATABASE_URL` and the roles file."""
    deploy_mlflow_tracking_uri: TrackingUri = _env(
        "POTABILITY_DEPLOY_MLFLOW_TRACKING_URI", default=None, repr=False
    )
    """The owner's MLflow tracking URI for that deploy step (set with `POTABILITY_DEPLOY_DATABASE_URL`); unset: `MLFLOW_TRACKING_URI` when it is a tracking server (`http(s)://`), else the MLflow database beside `POTABILITY_DEPLOY_DATABASE_URL`."""
    run_secrets_block: str | None = _env("POTABILITY_RUN_SECRETS_BLOCK", default=None)
    """The Prefect Secret block whose credentials a deployed retrain run adds to its environment (set by `potability flow deploy`); unset: none."""
    retrain_cron: Cron = _env("POTABILITY_RETRAIN_CRON", default="0 3 * * *")
    """When `potability retrain --serve` runs the flow."""
    reload_timeout_seconds: Seconds = _env("POTABILITY_RELOAD_TIMEOUT_SECONDS", default=10.0)
    """How long the flow waits for the server's reload answer."""

    # Lineage: every retrain is a commit on a branch of its own, its data on a shared DVC remote.
    git_remote: Name = _env("POTABILITY_GIT_REMOTE", default="origin")
    """The git remote the retrain branch is pushed to and `reproduce` clones from (when the root has it)."""
    git_url: str | None = _env("POTABILITY_GIT_URL", default=None)
    """The repository the retrain clones (a URL or a local path); unset: the root's `POTABILITY_GIT_REMOTE`, else the root itself."""
    source_branch: str | None = _env("POTABILITY_SOURCE_BRANCH", default=None)
    """The branch whose code the retrain runs; unset: the cloned repository's HEAD branch."""
    retrain_branch: Name = _env("POTABILITY_RETRAIN_BRANCH", default="retrain")
    """The branch each retrain commits its `dvc.lock`, params and metrics on (never the researchers')."""
    retrain_workspace: Path = _env("POTABILITY_RETRAIN_WORKSPACE", default=Path(".retrain"))
    """The retrain's own clone (relative: under the root); `.` runs in the root itself, a clone made for it (the Prefect pull step's)."""
    dvc_remote: str | None = _env("POTABILITY_DVC_REMOTE", default=None)
    """The DVC remote (URL or path) retrains push to and `reproduce` pulls from; unset: the root's default remote."""
    commit_author: Name = _env("POTABILITY_COMMIT_AUTHOR", default="potability retrain")
    """The author and committer name of retrain commits, whatever the host's git config."""
    commit_email: Name = _env("POTABILITY_COMMIT_EMAIL", default="retrain@potability.invalid")
    """The author and committer e-mail of retrain commits."""
    reproduce_tolerance: Annotated[float, annotated_types.Gt(0), Kind("number > 0")] = _env(
        "POTABILITY_REPRODUCE_TOLERANCE", default=1e-9
    )
    """Largest probability (and threshold) difference `potability reproduce` still calls identical."""

    def __init__(self, **values: Any):
        root = Path(values.pop("root", None) or os.environ.get("POTABILITY_ROOT") or Path.cwd())
        try:
            super().__init__(_env_file=root.resolve() / ".env", root=root, **values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc)) from None

    @field_validator("root")
    @classmethod
    def _absolute_root(cls, value: Path) -> Path:
        return value.resolve()

    @field_validator("pgdata", "db_roles_file")
    @classmethod
    def _under_workspace(cls, value: Path, info: ValidationInfo) -> Path:
        root = info.data.get("root")
        return value if value.is_absolute() or root is None else workspace_of(root) / value

    @field_validator("mlflow_artifacts")
    @classmethod
    def _artifacts_under_workspace(cls, value: str, info: ValidationInfo) -> str:
        if "://" in value:  # an object store or file URI, as MLflow takes it
            return value
        root = info.data.get("root")
        path = Path(value)
        return str(path if path.is_absolute() or root is None else workspace_of(root) / path)

    @field_validator(
        "promoted_dir",
        "model_cache_dir",
        "spool_dir",
        "run_dir",
        "params_path",
        "retrain_workspace",
    )
    @classmethod
    def _under_root(cls, value: Path, info: ValidationInfo) -> Path:
        root = info.data.get("root")
        return value if value.is_absolute() or root is None else root / value

    @property
    def metrics_dir(self) -> Path:
        """Prometheus' multi-process files (owned by ``potability.serve.metrics``)."""
        return self.run_dir / "prometheus"

    @property
    def page_cache_dir(self) -> Path:
        """The rendered page and stats (owned by ``potability.serve.page_cache``)."""
        return self.run_dir / "page-cache"

    @property
    def ratelimit_path(self) -> Path:
        """The open pages' shared rate-limit map (owned by ``potability.serve.ratelimit``)."""
        return self.run_dir / "ratelimit"

    @property
    def tracking_server(self) -> bool:
        """Whether MLflow is a tracking server (``http(s)://``), which places artifacts itself."""
        return (self.mlflow_tracking_uri or "").lower().startswith(("http://", "https://"))

    @property
    def mlflow_artifact_uri(self) -> str:
        """The embedded store's artifact location as a URI (a directory becomes ``file://``)."""
        value = self.mlflow_artifacts
        return value if "://" in value else Path(value).as_uri()

    @cached_property
    def workspace(self) -> Path:
        """Where machine-local state lives (embedded Postgres, MLflow artifacts): the DVC workspace."""
        return workspace_of(self.root)


def env_name(name: str) -> str:
    """The environment variable that sets field ``name``."""
    return Settings.model_fields[name].validation_alias


def _explain(exc: ValidationError) -> str:
    """One line per refused value: the variable, the value (never a secret's), what is wrong."""
    by_env = {f.validation_alias: (n, f) for n, f in Settings.model_fields.items()}
    lines = []
    for error in exc.errors():
        key = str(error["loc"][0]) if error["loc"] else "settings"
        name, field = by_env.get(key) or (key, Settings.model_fields.get(key))
        variable = env_name(name) if field is not None else key
        shown = "" if field is None or not field.repr else f"={error['input']!r}"
        lines.append(f"{variable}{shown}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid settings:\n  " + "\n  ".join(lines)


def _type_text(field) -> str:
    for meta in field.metadata:
        if isinstance(meta, Kind):
            return meta.text
    base = field.annotation
    args = [a for a in getattr(base, "__args__", ()) if a is not type(None)]
    base = args[0] if args else base
    return {bool: "boolean (1/0, true/false, yes/no)", Path: "path", str: "text"}.get(
        base, getattr(base, "__name__", str(base))
    )


def _default_text(name: str, field) -> str:
    if field.default_factory is not None:
        return "the working directory" if name == "root" else "computed"
    if field.default is None:
        return "unset"
    if isinstance(field.default, bool):
        return "`1`" if field.default else "`0`"
    if isinstance(field.default, int) and not isinstance(field.default, bool):
        return f"`{field.default:_}`".replace("_", ",")
    return f"`{field.default}`"


def settings_table() -> str:
    """Every knob as docs/settings.md shows it: variable, type, default, meaning (generated)."""
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        meaning = " ".join((field.description or "").split())
        rows.append(
            f"| `{env_name(name)}` | {_type_text(field)} | {_default_text(name, field)} | {meaning} |"
        )
    return "\n".join(rows) + "\n"


def load_params(path: Path) -> dict[str, Any]:
    """Read the experiment parameters file."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh) or {}


class ParamsError(ValueError):
    """params.yaml holds a value we refuse; the message names the parameter and what is wrong."""


def check_train_params(train: dict[str, Any], kinds: tuple[str, ...]) -> None:
    """Refuse, naming the parameter, a ``train`` section the pipeline cannot honour.

    Checked before any fit, so a bad value stops ``dvc repro`` at once and
    nothing is promoted. ``kinds`` are the model kinds the zoo knows
    (``modeling.MODEL_KINDS``: passed in, so servers importing config never
    load scikit-learn).

    Raises:
        ParamsError: one line per refused parameter.
    """
    problems = []

    def number(key: str) -> float | None:
        value = train.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"train.{key}={value!r}: expected a number")
            return None
        return float(value)

    level = number("confidence_level")
    if level is not None and not 0.5 < level < 1:
        problems.append(f"train.confidence_level={level}: must lie strictly between 0.5 and 1")
    floor = number("min_recall")
    if floor is not None and not 0 < floor < 1:
        problems.append(f"train.min_recall={floor}: must lie strictly between 0 and 1")
    positives = train.get("min_positives")
    if isinstance(positives, bool) or not isinstance(positives, int) or positives < 1:
        problems.append(f"train.min_positives={positives!r}: expected an integer >= 1")
    models = train.get("models")
    if not isinstance(models, dict) or not models:
        problems.append(f"train.models={models!r}: expected at least one model kind with its grid")
    else:
        for kind, grid in models.items():
            if kind not in kinds:
                problems.append(
                    f"train.models.{kind}: unknown kind; expected one of {', '.join(kinds)}"
                )
            for name, values in (grid or {}).items():
                if not isinstance(values, list) or not values:
                    problems.append(
                        f"train.models.{kind}.{name}={values!r}: expected a non-empty list"
                    )
    if problems:
        raise ParamsError("invalid params.yaml:\n  " + "\n  ".join(problems))


def get_settings() -> Settings:
    """Return settings for the current environment and working directory.

    Raises:
        SettingsError: a variable has a value we refuse (each one named).
    """
    return Settings()


if __name__ == "__main__":
    sys.stdout.write(settings_table())
