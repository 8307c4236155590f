"""gunicorn settings for `potability serve`; bind and workers come from the command line."""

import os

from potability.config import get_settings

# sync workers, one request at a time each: measured on 2 cores (bench/serve.py), they beat gthread
# on the tail (p99 6.4 ms vs 10.9-14.8 ms at 8 connections) with the same throughput. Put a reverse
# proxy in front for slow clients. (threads > 1 would silently turn "sync" into "gthread".)
worker_class = get_settings().worker_class  # POTABILITY_WORKER_CLASS, checked at start
threads = get_settings().threads  # POTABILITY_THREADS
graceful_timeout = 20
timeout = 60
keepalive = 5
# every answer is logged to Postgres; an access log per request would double the I/O
accesslog = None
preload_app = False  # each worker builds its app (model session, log thread) after the fork


def when_ready(server):
    """Start the page renderer beside the workers: page and stats never render on a sensor's worker.

    With POTABILITY_PAGE_BIND, also listen there and start the page listener on that socket: open
    traffic then has a port, a process and a CPU share of its own. The master holds the socket, so
    connections wait in its backlog while a dead listener is started again.
    """
    from potability.config import get_settings
    from potability.serve.renderer import Supervisor

    settings = get_settings()
    if settings.page_bind:
        from potability.serve.page_listener import listen, supervise

        server.page_socket = listen(settings.page_bind)  # a RuntimeError stops the server, named
        server.page_listener = supervise(server.page_socket, settings)
        server.page_listener.start()
        server.log.info("page listener at %s", settings.page_bind)
    server.page_renderer = Supervisor(restart_seconds=settings.page_refresh_seconds)
    server.page_renderer.start()


def on_exit(server):
    for child in ("page_listener", "page_renderer"):
        supervisor = getattr(server, child, None)
        if supervisor is not None:
            supervisor.stop()


def worker_exit(server, worker):
    """Flush the worker's inference queue on graceful shutdown: nothing answered is lost."""
    from potability.serve import shutdown

    app = getattr(worker, "wsgi", None)
    if app is not None and hasattr(app, "extensions"):
        shutdown(app)


def child_exit(server, worker):
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


# no runtime control socket: nothing to manage the server by but signals
control_socket_disable = True


def post_fork(server, worker):
    """Our modules log through `logging`; under gunicorn send INFO and up to stderr."""
    import logging

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s"
    )
