"""The page listener: the open page and stats on a port of their own, so they never take a sensor's worker.

On one port, every open request (a cached page, even a 429) takes one of the
sync workers sensors need, and waits with them in one accept queue: 16 clients
reloading the page in a loop tripled the sensors' p99 (bench/scale.py). With
``POTABILITY_PAGE_BIND`` (or ``potability serve --page-port``), the gunicorn
master also listens there and hands that socket to this process, which it
starts and restarts like the renderer (``potability.serve.renderer.Supervisor``). It is
niced (``POTABILITY_PAGE_LISTENER_NICE``) and by default in Linux's idle
scheduling class (``POTABILITY_PAGE_LISTENER_IDLE``: it runs on CPU time no
sensor worker wants; measured, a nice of 10 alone left the sensors' p99 ~2x
worse under 16 looping page clients), answers at most
``POTABILITY_PAGE_LISTENER_CONNECTIONS`` connections at once (the rest wait in
the port's backlog, which the master keeps open across a restart, so a
restart loses no connection), drops a silent client after
``POTABILITY_PAGE_LISTENER_TIMEOUT_SECONDS``, and closes every connection
after its answer, so a looping client cannot hold a thread between requests.

It serves the same Flask app as the workers (same page cache, same headers,
the same per-client buckets, shared with the API port), limited to the open
endpoints: ``/``, ``/model``, ``/v1/stats/{name}``, ``/static/*`` and
``/healthz``; anything else is 404, so no sensor traffic lands here. The API
port keeps answering the open endpoints as before (one-port installs).

Run by the master only (it needs the socket): ``python -m potability.serve.page_listener --fd N``.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from flask import Flask, request
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler

from potability.config import Settings, get_settings
from potability.serve.errors import ApiError
from potability.serve.ratelimit import LIMITED_ENDPOINTS

log = logging.getLogger(__name__)

OPEN_ENDPOINTS = LIMITED_ENDPOINTS | {"ops.healthz"}
CHILD_FD = 3  # the number the listening socket gets in the child (posix_spawn's dup2)


def listen(bind: str) -> socket.socket:
    """Open the page port (``host:port``, IPv6 hosts in brackets); a clear error names the setting."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, int(port)), family=family)
    except OSError as exc:
        # gunicorn prints a RuntimeError from a hook as "Error: ..." and exits 1
        raise RuntimeError(
            f"POTABILITY_PAGE_BIND={bind}: cannot listen there: {exc.strerror or exc}"
        ) from None


def supervise(sock: socket.socket, settings: Settings):
    """A Supervisor that runs this module on ``sock`` (dup'ed to fd 3 in the child only)."""
    from potability.serve.renderer import Supervisor

    target = CHILD_FD if sock.fileno() != CHILD_FD else CHILD_FD + 1
    return Supervisor(
        settings.page_listener_restart_seconds,
        module=__name__,
        args=("--fd", str(target)),
        file_actions=[(os.POSIX_SPAWN_DUP2, sock.fileno(), target)],
    )


def create_page_app() -> Flask:
    """The workers' app, answering only the open endpoints; it follows the champion for its fallback renders."""
    from potability.serve import create_page_app, ops, ratelimit

    settings = get_settings()
    app = create_page_app(settings)  # takes no sensor traffic: no inference log, no maintenance
    ratelimit.init_app(app, ratelimit.RateLimiter.from_settings(settings))
    app.register_blueprint(ops.bp)  # for /healthz; open_only refuses its other endpoints

    def open_only():
        if request.endpoint not in OPEN_ENDPOINTS:
            raise ApiError(
                404,
                "not_found",
                "this port serves only the open page, its stats and static files; "
                "the API is on the server's main port",
            )
        return None

    # before the rate limit: a stray API call is refused without spending a page token
    app.before_request_funcs.setdefault(None, []).insert(0, open_only)
    return app


class _Handler(WSGIRequestHandler):
    # one request per connection (as gunicorn's sync workers do): a looping client queues in
    # the backlog like everyone else instead of keeping a thread between its requests
    protocol_version = "HTTP/1.0"
    _dated = False

    def log_request(self, *args, **kwargs) -> None:
        """No access log, as on the API port."""

    def version_string(self) -> str:
        """The Server header names no library versions (gunicorn says only "gunicorn")."""
        return "potability-page"

    def send_response(self, code: int, message: str | None = None) -> None:
        self._dated = False
        super().send_response(code, message)

    def send_header(self, keyword: str, value: str) -> None:
        """One Date header: http.server sends one, and a conditional Flask response carries its own."""
        if keyword.lower() == "date":
            if self._dated:
                return
            self._dated = True
        super().send_header(keyword, value)


class PageServer(BaseWSGIServer):
    """werkzeug's WSGI server on an inherited socket, with a fixed pool of ``connections`` threads."""

    multithread = True

    def __init__(self, fd: int, app: Flask, connections: int, timeout: float, per_second: int = 0):
        with socket.socket(fileno=os.dup(fd)) as probe:
            host, port = probe.getsockname()[:2]
        super().__init__(host, port, app, handler=_Handler, fd=fd)  # werkzeug uses a dup of fd
        os.close(fd)
        self.timeout_seconds = timeout
        self._slots = threading.BoundedSemaphore(connections)
        self._pool = ThreadPoolExecutor(connections, thread_name_prefix="page")
        self._interval = 1.0 / per_second if per_second else 0.0
        self._next_at = time.monotonic()

    def process_request(self, request, client_address) -> None:
        # on serve_forever's thread: with every slot busy it stops accepting, and new
        # connections wait in the kernel's backlog (bounded work, bounded memory)
        self._pace()
        self._slots.acquire()
        self._pool.submit(self._serve_one, request, client_address)

    def _pace(self) -> None:
        """Take at most ``per_second`` connections a second, evenly spaced.

        The idle scheduling class gives open traffic only CPU the sensors leave, but at 8
        connections the sensors leave gaps, and whatever runs in them (the listener, the
        kernel's work for each page connection) still delays the sensor request that arrives
        next. A rate bounds that work whatever the clients do; waiting clients cost nothing.
        """
        if not self._interval:
            return
        now = time.monotonic()
        if self._next_at > now:
            time.sleep(self._next_at - now)
        self._next_at = max(now, self._next_at) + self._interval

    def _serve_one(self, request, client_address) -> None:
        try:
            request.settimeout(self.timeout_seconds)  # a silent client is dropped, not waited on
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._slots.release()

    def close(self) -> None:
        self.shutdown()
        self._pool.shutdown(wait=True)  # answers in flight finish (each bounded by the timeout)
        self.server_close()


def main(argv: list[str] | None = None) -> int:
    from potability.serve import shutdown
    from potability.serve.renderer import start_child

    args = argparse.ArgumentParser(description="the page listener (started by the gunicorn master)")
    args.add_argument("--fd", type=int, required=True, help="the listening socket's descriptor")
    fd = args.parse_args(argv).fd
    settings = get_settings()
    child = start_child(settings.page_listener_nice, idle=settings.page_listener_idle)
    app = create_page_app()
    server = PageServer(
        fd,
        app,
        settings.page_listener_connections,
        settings.page_listener_timeout_seconds,
        settings.page_listener_per_second,
    )
    thread = threading.Thread(target=server.serve_forever, name="page-accept", daemon=True)
    thread.start()
    log.info(
        "page listener up on %s:%s, %d connections at once",
        server.host,
        server.port,
        settings.page_listener_connections,
    )
    try:
        while child.wait(1.0):  # until SIGTERM, or the master is gone
            pass
    finally:
        server.close()
        shutdown(app)
    return 0


if __name__ == "__main__":
    sys.exit(main())
