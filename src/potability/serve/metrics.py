"""Prometheus metrics; multi-process aware under gunicorn (PROMETHEUS_MULTIPROC_DIR)."""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from potability.serve.spool import CONFLICTS, rows_in

REQUESTS = Counter("potability_requests_total", "HTTP requests answered", ["endpoint", "status"])
LATENCY = Histogram(
    "potability_request_seconds",
    "Time to answer a request",
    ["endpoint"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
PREDICTIONS = Counter("potability_predictions_total", "Answers given, by class", ["answer"])
QUEUE_ROWS = Gauge(
    "potability_inference_queue_rows",
    "Inference rows waiting in memory",
    multiprocess_mode="livesum",
)
# every worker spools into and replays from one directory: counted at each scrape, the latest is right
SPOOL_ROWS = Gauge(
    "potability_inference_spool_rows",
    "Inference rows in journal files spooled on disk (Postgres was down, or their worker died)",
    multiprocess_mode="mostrecent",
)
SPOOL_QUARANTINED = Counter(
    "potability_spool_quarantined_files_total",
    "Spool files moved aside to quarantine/ because they could not be replayed",
)
SPOOL_QUARANTINED_ROWS = Counter(
    "potability_spool_quarantined_rows_total",
    "Answered rows in those files: refused by Postgres as data, or in a damaged file",
)
LOG_CONFLICTS = Counter(
    "potability_log_conflicting_rows_total",
    "Answered rows quarantined because their reading was logged already with other measurements",
)
# set by the worker answering the scrape, from the directory all workers share: the latest is right
JOURNAL_BYTES = Gauge(
    "potability_inference_journal_bytes",
    "Bytes in the workers' open write-ahead journals on disk (not yet stored nor spooled)",
    multiprocess_mode="mostrecent",
)
MODEL_INFO = Gauge(
    "potability_model_info",
    "The model version served (1 = serving)",
    ["version"],
    multiprocess_mode="max",
)


def exposition() -> tuple[bytes, str]:
    """The metrics text of every worker (or of this process when not under gunicorn)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    from prometheus_client import REGISTRY

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def on_model_swap(old, new) -> None:
    if old is not None and old.version != new.version:
        MODEL_INFO.labels(version=old.version).set(0)
    MODEL_INFO.labels(version=new.version).set(1)


def on_log_depth(queued: int) -> None:
    """This worker's queue (summed over the live workers); the spool is counted at scrape time."""
    QUEUE_ROWS.set(queued)


def on_scrape(spooled_rows: int, journal_bytes: int) -> None:
    """What all workers share on disk, measured by the worker answering the scrape (nothing on the request path)."""
    SPOOL_ROWS.set(spooled_rows)
    JOURNAL_BYTES.set(journal_bytes)


def on_quarantine(path, reason) -> None:
    SPOOL_QUARANTINED.inc()
    try:
        rows = rows_in(path.read_bytes())
    except OSError:
        return  # requeued or removed already: the file count stands
    SPOOL_QUARANTINED_ROWS.inc(rows)
    if CONFLICTS in path.name:
        LOG_CONFLICTS.inc(rows)
