"""nginx in front of the serving hosts: the ``nginx.conf`` that ``potability proxy-config`` prints.

gunicorn's sync workers answer one request at a time and must sit behind a
buffering proxy: a client that sends its headers a byte a second would
otherwise hold a worker that a sensor is waiting for. nginx does that as its
everyday job, so the fleet's front is nginx, configured here:

- requests and answers are buffered: a request reaches a worker only once it
  is whole, an answer leaves the worker at once; slow clients are dropped
  after ``POTABILITY_PROXY_CLIENT_TIMEOUT_SECONDS``;
- ``limit_conn`` per client address, ``limit_req`` on the open page and its
  JSON (the page's own rate, ``POTABILITY_PAGE_RATE_PER_SECOND``/``_BURST``:
  a request over the rate waits its turn, one past the burst is 429, so a
  client reloading in a loop is paced instead of spinning on refusals),
  and a micro-cache for ``/``, ``/model``, ``/v1/stats/*`` and ``/static/``
  that honours the page cache's ``Cache-Control``, so page traffic rarely
  reaches Python; the page may get a listen address of its own;
- passive health checks (``max_fails=1``) and ``proxy_next_upstream``: a
  request a dead or unready host (502/503/504) did not answer goes to the
  next, POST included. That is safe for ``/v1/predict`` with reading ids
  (``potability.sensor.readings``): a retried reading is logged once.

The text is pure (``render``); :func:`check` turns command-line values into
:class:`ProxyOptions`, refusing bad ones with a message naming the flag.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

from potability.config import Settings


class ProxyConfigError(ValueError):
    """A flag of ``proxy-config`` has a value we refuse; the message names it."""


@dataclass(frozen=True)
class ProxyOptions:
    """What ``proxy-config`` was asked for, checked."""

    upstreams: tuple[str, ...]
    listen: str
    page_listen: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    prefix: Path | None = None  # None: paths relative to nginx's -p directory


_ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.\-]*):(\d{1,5})")


def _address(flag: str, value: str) -> str:
    match = _ADDRESS.fullmatch(value)
    if not match or not 0 < int(match.group(2)) < 65536:
        raise ProxyConfigError(f"{flag} {value!r}: expected host:port, like 10.0.0.5:8000")
    return value


def check(
    upstreams: list[str] | None,
    listen: str,
    page_listen: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    prefix: str | None = None,
) -> ProxyOptions:
    """Check the flags' values; raise ProxyConfigError naming the first bad one."""
    if not upstreams:
        raise ProxyConfigError(
            "--upstream: at least one serving host is required (--upstream HOST:PORT, repeatable)"
        )
    checked = tuple(_address("--upstream", u) for u in upstreams)
    if len(set(checked)) != len(checked):
        raise ProxyConfigError("--upstream: the same host:port is given twice")
    listen = _address("--listen", listen)
    if page_listen is not None:
        page_listen = _address("--page-listen", page_listen)
        if page_listen == listen:
            raise ProxyConfigError(f"--page-listen {page_listen}: the same address as --listen")
    if (tls_cert is None) != (tls_key is None):
        missing = "--tls-key" if tls_key is None else "--tls-cert"
        raise ProxyConfigError(f"{missing}: TLS needs both --tls-cert and --tls-key")
    files = {}
    for flag, value in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
        if value is not None:
            path = Path(value).resolve()
            if not path.is_file():
                raise ProxyConfigError(f"{flag} {value}: no such file")
            files[flag] = path
    root = None
    if prefix is not None:
        root = Path(prefix).resolve()
        if not root.is_dir():
            raise ProxyConfigError(f"--prefix {prefix}: no such directory")
    return ProxyOptions(
        checked, listen, page_listen, files.get("--tls-cert"), files.get("--tls-key"), root
    )


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _s(seconds: float) -> str:
    """Whole seconds, rounded up: what fail_timeout and proxy_cache_valid accept."""
    return f"{max(1, math.ceil(seconds))}s"


def _rate(per_second: float) -> str:
    return f"{per_second:g}r/s" if float(per_second).is_integer() else f"{per_second * 60:.0f}r/m"


def render(options: ProxyOptions, settings: Settings) -> str:
    """The complete nginx.conf for ``options``, its numbers from ``settings``."""
    where = f"{options.prefix}/" if options.prefix else ""
    tls = options.tls_cert is not None
    scheme_listen = " ssl" if tls else ""
    fail = _s(settings.proxy_fail_timeout_seconds)
    servers = "\n".join(
        f"        server {u} max_fails=1 fail_timeout={fail};" for u in options.upstreams
    )
    tls_lines = (
        f"""
        ssl_certificate {options.tls_cert};
        ssl_certificate_key {options.tls_key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:tls:10m;"""
        if tls
        else ""
    )
    page_locations = _page_locations(settings)
    page_server = ""
    if options.page_listen:
        page_server = f"""
    # the open page on an address of its own: nothing else is reachable there
    server {{
        listen {options.page_listen}{scheme_listen};{tls_lines}
{page_locations}
        location = /healthz {{
            proxy_pass http://potability;
        }}
        location / {{
            default_type application/json;
            return 404 '{{"error": {{"code": "not_found", "message": "this address serves the quality page only", "field": null}}}}';
        }}
    }}
"""
    client = _ms(settings.proxy_client_timeout_seconds)
    body = settings.max_body_bytes
    return f"""# potability proxy-config: nginx in front of {len(options.upstreams)} serving host(s).
# Run as any user: nginx -p DIR -c THIS_FILE  (DIR: where pid, logs, temp files and cache go)
worker_processes auto;
pid {where}nginx.pid;
error_log {where}error.log warn;

events {{
    worker_connections {settings.proxy_worker_connections};
}}

http {{
    access_log {where}access.log combined buffer=64k flush=5s;
    client_body_temp_path {where}client_body_temp;
    proxy_temp_path {where}proxy_temp;
    fastcgi_temp_path {where}fastcgi_temp;
    uwsgi_temp_path {where}uwsgi_temp;
    scgi_temp_path {where}scgi_temp;
    server_tokens off;
    tcp_nodelay on;
    keepalive_timeout 15s;

    # Slow clients wait in nginx, never in a sync worker: a request is passed on only whole,
    # an answer is taken from the worker at once; a client too slow is dropped.
    client_header_timeout {client};
    client_body_timeout {client};
    send_timeout {client};
    client_max_body_size {body};
    client_body_buffer_size {body};
    proxy_request_buffering on;
    proxy_buffering on;
    proxy_buffer_size 16k;
    proxy_buffers 16 16k;

    limit_conn_zone $binary_remote_addr zone=per_client:10m;
    limit_conn per_client {settings.proxy_connections_per_client};
    limit_conn_status 429;
    limit_req_zone $binary_remote_addr zone=open_pages:10m rate={_rate(settings.page_rate_per_second)};
    limit_req_status 429;
    proxy_cache_path {where}cache levels=1:2 keys_zone=pages:10m max_size=64m inactive=10m use_temp_path=off;

    upstream potability {{
{servers}
        keepalive 32;
    }}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $http_host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_connect_timeout {_ms(settings.proxy_connect_timeout_seconds)};
    proxy_send_timeout {_ms(settings.proxy_read_timeout_seconds)};
    proxy_read_timeout {_ms(settings.proxy_read_timeout_seconds)};
    # A host that is down, refuses, or answers 502/503/504 (not ready: no model, log full) costs
    # no request: it goes to the next host, POST included. /v1/predict with reading ids is
    # idempotent (one log row per reading); see docs/operations.md.
    proxy_next_upstream error timeout http_502 http_503 http_504 non_idempotent;
    proxy_next_upstream_tries {len(options.upstreams) + 1};

    server {{
        listen {options.listen}{scheme_listen};{tls_lines}
{page_locations}
        location / {{
            proxy_pass http://potability;
        }}
    }}
{page_server}}}
"""


def _page_locations(settings: Settings) -> str:
    """The open page, its JSON and stylesheet: rate-limited per client, answered from a micro-cache."""
    open_page = f"""
            limit_req zone=open_pages burst={settings.page_rate_burst};
            proxy_cache pages;
            proxy_cache_valid 200 {_s(settings.page_refresh_seconds)};
            proxy_cache_lock on;
            proxy_cache_background_update on;
            proxy_cache_use_stale error timeout updating http_502 http_503 http_504;
            proxy_cache_bypass $http_authorization;
            proxy_no_cache $http_authorization;
            add_header X-Cache-Status $upstream_cache_status;
            proxy_pass http://potability;"""
    return "\n".join(
        f"        location {match} {{{open_page}\n        }}"
        for match in ("= /", "= /model", "^~ /v1/stats/", "^~ /static/")
    )
