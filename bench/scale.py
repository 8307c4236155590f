"""Scale benchmark: the quality page, its stats and the sensors' predict with millions of logged answers.

Issue 13: a utility logs ~2 M answers a week; with 2 M rows the page took
seconds and sensors waited behind page loads on the same sync workers. Now
the page and stats are rendered by a renderer process beside the workers into
a cache the workers answer from, and each client address has a rate limit on
them; this script measures what that buys at volume.

Steps, all against a scratch database (``scale_bench`` on the workspace's
Postgres, dropped and recreated; or ``--database-url``), with the registry
kept at the workspace's MLflow database and the deployed champion served:

1. migrate the scratch database, create a sensor token;
2. start ``potability serve``; predict throughput with wrk (1 row, 8
   connections) on an empty inference table; stop it;
3. fill ``water.water_inferences`` with N rows (``generate_series``: 7 days,
   20 sensors, features drawn around the real data set's means and spreads)
   and ``water.water_potability`` with lab rows matched in sensor and time;
   VACUUM ANALYZE; table and index size;
4. start the server again and wait for the renderer's first copy; then for
   ``/`` and each ``/v1/stats/{name}``: warm (the median of repeats, answered
   from the cache), what the renderer took to render it (its ``Server-Timing``),
   and right after an expiry with no fresh copy (the entry's file removed, so
   a worker renders it itself: the worst case, when the renderer is dead);
5. sensors: wrk on ``/v1/predict`` alone, then again while ``--page-clients``
   clients load ``/`` in a loop, each from its own loopback address
   (127.0.0.10, .11, ...), so the per-client rate limit treats them as the
   separate browsers they stand for: first on the API port (a one-port
   install), then on the page listener's port (``--page-port``, issue 13:
   open traffic in a process of its own), then through nginx from
   ``potability proxy-config`` (issue 21: sensors and page clients both
   through it, as in a fleet; its micro-cache and limit_req take the page
   traffic). The page clients run in a child
   process (no GIL shared with the probe). In every run, alone included, a
   probe sensor posts ``--probe-per-second`` times a second and times each
   answer, since wrk drops requests still in flight when its run ends.
   Each run records the load average (the cores may be shared).

``--keep`` keeps the filled database; ``--reuse`` measures it again (steps 4-5).

Prints a table and writes ``bench/results/scale.json``.

Usage: python bench/scale.py [--rows 10000000]   (after `make run`, or `dvc repro` + `potability deploy`)
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    ROW,
    deployed_champion,
    free_port,
    machine,
    nginx,
    small_champion,
    start,
    stop,
    wait_http,
    write_result,
    wrk,
)
from potability import db, migrator  # noqa: E402
from potability.config import Settings, get_settings  # noqa: E402
from potability.mart import WaterMart  # noqa: E402
from potability.schema import FEATURE_COLUMNS, FEATURE_NAMES  # noqa: E402
from potability.synth import POTABLE_SHARE, REAL_STATS  # noqa: E402

SCRATCH_DB = "scale_bench"
PANELS = ("model", "live", "agreement", "drift")
MB = 1024 * 1024


def _normal(i: int) -> str:
    """SQL for one draw around bound parameters mean_i / std_i, clipped to low_i / high_i (Box-Muller)."""
    return (
        f"least(greatest(%(mean_{i})s + %(std_{i})s * sqrt(-2 * ln(1 - random())) * cos(2 * pi() * random()), "
        f"%(low_{i})s), %(high_{i})s)"
    )


def _feature_params() -> dict:
    params = {}
    for i, name in enumerate(FEATURE_NAMES):
        s = REAL_STATS[name]
        params.update(
            {
                f"mean_{i}": s.mean,
                f"std_{i}": (s.std_not_potable + s.std_potable) / 2,
                f"low_{i}": s.low,
                f"high_{i}": s.high,
            }
        )
    return params


_FEATURES_SQL = ", ".join(_normal(i) for i in range(len(FEATURE_COLUMNS)))
_COLUMNS_SQL = ", ".join(FEATURE_COLUMNS)
# Answers evenly spread over the window, in time order (as a live table fills), sensors round-robin.
INFERENCES_SQL = (
    f"INSERT INTO water.water_inferences (inference_id, received_at, sensor_id, model_version, {_COLUMNS_SQL}, "  # noqa: S608
    "probability, potable, threshold) "
    "SELECT gen_random_uuid(), %(start)s + (g * %(step)s) * interval '1 second', "
    "'scale-sensor-' || lpad((g %% %(sensors)s)::text, 2, '0'), %(model_version)s, "
    f"{_FEATURES_SQL}, p, p >= %(threshold)s, %(threshold)s "
    "FROM (SELECT g, random() AS p FROM generate_series(%(first)s, %(last)s) AS g) AS s"
)
# Lab samples at random times in the window from the same sensors, so the agreement panel finds matches.
LAB_SQL = (
    f"INSERT INTO water.water_potability (sample_id, sensor_id, {_COLUMNS_SQL}, potability, collected_at, added_by) "  # noqa: S608
    "SELECT 'scale-' || g, 'scale-sensor-' || lpad((g %% %(sensors)s)::text, 2, '0'), "
    f"{_FEATURES_SQL}, (random() < %(potable_share)s)::int, "
    "%(start)s + (random() * %(span)s) * interval '1 second', 'bench:scale' "
    "FROM generate_series(1, %(lab_rows)s) AS g"
)


def fill(url: str, args: argparse.Namespace, model_version: str) -> dict:
    """Insert ``args.rows`` answers and ``args.lab_rows`` lab samples; return timings and sizes."""
    end = datetime.now(UTC)
    span = args.days * 86400.0
    params = {
        **_feature_params(),
        "start": end - timedelta(days=args.days),
        "span": span,
        "step": span / max(args.rows, 1),
        "sensors": args.sensors,
        "model_version": model_version,
        "threshold": args.threshold,
        "potable_share": POTABLE_SHARE,
        "lab_rows": args.lab_rows,
    }
    conn = db.connect(url=url)
    conn.autocommit = True
    started = time.perf_counter()
    with conn.cursor() as cur:
        # the empty-table wrk run's rows, and what the rollups counted of them
        cur.execute(
            "TRUNCATE water.water_inferences, water.inference_hourly, "
            "water.feature_histogram_hourly, water.lab_matches"
        )
        # a partition per day of the window, or its rows would all land in the default one
        cur.execute(
            "SELECT count(*) FROM water.ensure_inference_partitions(1, %s)", (int(args.days) + 1,)
        )
        for first in range(0, args.rows, args.chunk):
            last = min(first + args.chunk, args.rows) - 1
            cur.execute(INFERENCES_SQL, {**params, "first": first, "last": last})
            print(
                f"  filled {last + 1:,} / {args.rows:,} answers ({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
        inferences_s = time.perf_counter() - started
        # a bulk INSERT is not the log writer: its rows are rolled up by a recount (migration 007)
        cur.execute("SELECT water.recompute_rollups()")
        rollups_s = time.perf_counter() - started - inferences_s
        cur.execute(LAB_SQL, params)
        lab_s = time.perf_counter() - started - inferences_s - rollups_s
        cur.execute("VACUUM ANALYZE water.water_inferences")
        cur.execute("VACUUM ANALYZE water.water_potability")
    conn.close()
    sizes = table_sizes(url)
    return {
        **sizes,
        "fill_s": round(inferences_s, 1),
        "rollups_s": round(rollups_s, 1),
        "lab_fill_s": round(lab_s, 1),
        "rows_per_s": round(sizes["rows"] / inferences_s) if inferences_s else None,
    }


def table_sizes(url: str) -> dict:
    """Rows of the inference log and lab table, and the log's table and index size (total, per million)."""
    conn = db.connect(url=url)
    with conn.cursor() as cur:
        # a partitioned table holds no rows itself: sum over its partitions
        cur.execute(
            "SELECT sum(pg_table_size(relid))::bigint, sum(pg_indexes_size(relid))::bigint, "
            "(SELECT count(*) FROM water.water_inferences), (SELECT count(*) FROM water.water_potability) "
            "FROM pg_partition_tree('water.water_inferences')"
        )
        table, indexes, count, lab_rows = cur.fetchone()
    conn.close()
    millions = count / 1e6 if count else float("nan")
    return {
        "rows": count,
        "lab_rows": lab_rows,
        "table_mb": round(table / MB, 1),
        "indexes_mb": round(indexes / MB, 1),
        "table_mb_per_million": round(table / MB / millions, 1),
        "indexes_mb_per_million": round(indexes / MB / millions, 1),
    }


def timed_get(url: str, timeout: float) -> tuple[float, int, float | None]:
    """(milliseconds, status, the render time the server reports for the copy it answered)."""
    started = time.perf_counter()
    r = requests.get(url, timeout=timeout)
    ms = round((time.perf_counter() - started) * 1000, 1)
    timing = r.headers.get("Server-Timing", "")
    render = float(timing.split("dur=")[1]) if "dur=" in timing else None
    return ms, r.status_code, render


def wait_for_cache(base: str, timeout: float) -> float:
    """Seconds until the renderer's first copy of the page is served (503 page_rendering before)."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        if requests.get(base + "/", timeout=timeout).status_code == 200:
            return round(time.perf_counter() - started, 1)
        time.sleep(0.2)
    raise SystemExit(f"no page within {timeout} s: the renderer did not render")


def read_latency(base: str, cache_dir: Path, repeats: int, timeout: float) -> dict:
    """Per path: warm (from the cache), the renderer's render time, and a worker's own render after expiry."""
    paths = [f"/v1/stats/{name}" for name in PANELS] + ["/"]
    out = {}
    for path in paths:
        warm = [timed_get(base + path, timeout) for _ in range(repeats)]
        # the page cache's files: expired, no fresh copy yet
        for entry in cache_dir.glob("*.entry"):
            entry.unlink(missing_ok=True)
        expired_ms, status, _ = timed_get(base + path, timeout)
        out[path] = {
            "warm_ms": round(statistics.median(w[0] for w in warm), 1),
            "warm_max_ms": max(w[0] for w in warm),
            "renderer_ms": warm[-1][2],
            "after_expiry_ms": expired_ms,
            "status": status,
        }
        print(
            f"  {path:<22} warm {out[path]['warm_ms']:>7} ms  renderer {out[path]['renderer_ms']} ms  "
            f"after expiry {expired_ms:>8} ms (status {status})",
            flush=True,
        )
        deadline = time.monotonic() + timeout  # every entry rendered again before the next path
        while (
            len(list(cache_dir.glob("*.entry"))) < len(PANELS) + 1 and time.monotonic() < deadline
        ):
            time.sleep(0.2)
    return out


def page_client(
    base: str, address: str, stop_event: threading.Event, timeout: float, seen: list
) -> None:
    """Load / in a loop from ``address`` (a loopback alias), keep-alive, as one browser reloading would."""
    url = urlsplit(base)
    conn = http.client.HTTPConnection(
        url.hostname, url.port, timeout=timeout, source_address=(address, 0)
    )
    while not stop_event.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            seen.append((response.status, (time.perf_counter() - started) * 1000))
        except (OSError, http.client.HTTPException) as exc:
            seen.append((type(exc).__name__, (time.perf_counter() - started) * 1000))
            conn.close()
            conn = http.client.HTTPConnection(
                url.hostname, url.port, timeout=timeout, source_address=(address, 0)
            )
    conn.close()


def page_clients(base: str, clients: int, nice: int, timeout: float, stop_event, results) -> None:
    """``clients`` looping page clients, each from its own loopback address, in this (child) process.

    A process of their own, so their threads never hold the GIL the sensor probe needs to time its
    answers, and ``nice`` applies to all of them (threads inherit the niceness of their creator).
    """
    if nice:
        os.nice(nice)
    local_stop = threading.Event()
    seen: list[tuple[int | str, float]] = []
    threads = [
        threading.Thread(
            target=page_client,
            args=(base, f"127.0.0.{10 + i}", local_stop, timeout, seen),
            daemon=True,
        )
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    stop_event.wait()
    local_stop.set()
    for t in threads:
        t.join(timeout=timeout + 5)
    results.put(seen)


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages: how much else ran on the cores beside the bench."""
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def sensor_run(
    base: str, token: str, args: argparse.Namespace, page_base: str | None = None
) -> tuple[dict, dict | None]:
    """wrk on /v1/predict beside a paced probe sensor, and (given ``page_base``) looping page clients.

    The probe is one more sensor, reporting ``args.probe_per_second`` times a second (not a ninth
    connection at full speed), in every run alike: wrk forgets requests still unanswered when its
    run ends, a sensor timing each answer does not.
    """
    wrk_done = threading.Event()
    probe: list[float] = []
    probe_failures: list[str] = []

    def sensor_probe() -> None:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token}"
        interval = 1.0 / args.probe_per_second
        next_at = time.perf_counter()
        while not wrk_done.is_set():
            started = time.perf_counter()
            try:
                status = session.post(
                    f"{base}/v1/predict", json=ROW, timeout=args.timeout
                ).status_code
                (
                    probe.append((time.perf_counter() - started) * 1000)
                    if status == 200
                    else probe_failures.append(str(status))
                )
            except requests.RequestException as exc:
                probe_failures.append(type(exc).__name__)
            next_at += interval
            time.sleep(max(0.0, next_at - time.perf_counter()))

    context = multiprocessing.get_context("fork")
    pages_stop, pages_results = context.Event(), context.Queue()
    clients = None
    if page_base:
        clients = context.Process(
            target=page_clients,
            daemon=True,
            args=(
                page_base,
                args.page_clients,
                args.page_client_nice,
                args.timeout,
                pages_stop,
                pages_results,
            ),
        )
        clients.start()
    prober = threading.Thread(target=sensor_probe, daemon=True)
    prober.start()
    seen: list[tuple[int | str, float]] = []
    try:
        sensors = wrk(f"{base}/v1/predict", json.dumps(ROW), args.connections, args.seconds, token)
        sensors["loadavg"] = loadavg()
    finally:
        wrk_done.set()
        pages_stop.set()
        prober.join(timeout=args.timeout + 5)
        if clients is not None:
            seen = pages_results.get(timeout=args.timeout + 10)
            clients.join(timeout=10)
    sensors["probe"] = {
        "answers": len(probe),
        "failures": len(probe_failures),
        "failure_kinds": sorted(set(probe_failures)),
        "p50_ms": round(statistics.median(probe), 1) if probe else None,
        "max_ms": round(max(probe), 1) if probe else None,
    }
    if clients is None:
        return sensors, None
    loads = [ms for status, ms in seen if status == 200]
    statuses: dict[str, int] = {}
    for status, _ in seen:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    pages = {
        "clients": args.page_clients,
        "requests": len(seen),
        "statuses": statuses,
        "per_second": round(len(seen) / args.seconds, 1),
        "loads": len(loads),
        "failures": len([s for s, _ in seen if s not in (200, 429)]),
        "p50_ms": round(statistics.median(loads), 1) if loads else None,
        "max_ms": round(max(loads), 1) if loads else None,
    }
    return sensors, pages


def serve(env: dict, args: argparse.Namespace, log: Path, page_port: int | None = None):
    """Start ``potability serve`` (with a page listener on ``page_port``); (process, API base URL)."""
    port = free_port()
    page = ["--page-port", str(page_port)] if page_port else []
    proc = start(
        [
            sys.executable,
            "-m",
            "potability.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(args.workers),
            *page,
        ],
        env,
        log,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        if page_port:
            wait_http(f"http://127.0.0.1:{page_port}/healthz")
    except TimeoutError:
        stop(proc)
        raise SystemExit(f"server did not come up; see {log}:\n{log.read_text()[-2000:]}") from None
    return proc, f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--rows", type=int, default=10_000_000, help="answers in water.water_inferences"
    )
    parser.add_argument(
        "--lab-rows", type=int, default=20_000, help="lab samples matched to sensors"
    )
    parser.add_argument(
        "--days", type=float, default=7.0, help="the window the answers span, ending now"
    )
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument(
        "--threshold", type=float, default=0.5, help="the answers' decision threshold"
    )
    parser.add_argument("--chunk", type=int, default=1_000_000, help="rows per INSERT statement")
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"fill this database instead (kept); default: a scratch `{SCRATCH_DB}` "
        "on the workspace's Postgres, recreated and dropped",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch database afterwards")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="measure the scratch database a `--keep` run left, as it is: no empty-table run, no fill",
    )
    parser.add_argument(
        "--probe-per-second",
        type=float,
        default=20.0,
        help="requests a second of the probe sensor beside wrk, in every sensor run",
    )
    parser.add_argument(
        "--model",
        choices=("champion", "small"),
        default="champion",
        help="serve the workspace's champion, or the library's small forest from a scratch "
        "registry (the serving path's own cost: the page's share of the sensors' latency)",
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=8, help="wrk connections on /v1/predict")
    parser.add_argument("--seconds", type=int, default=20, help="wrk duration per sensor run")
    parser.add_argument(
        "--page-clients", type=int, default=16, help="clients loading / during a sensor run"
    )
    parser.add_argument(
        "--page-client-nice",
        type=int,
        default=0,
        help="niceness of the page clients' threads (they share the server's cores here; "
        "in production they are browsers elsewhere)",
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="warm requests per page or stats path"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="HTTP timeout for page and stats, s"
    )
    args = parser.parse_args()

    settings = get_settings()
    champion = deployed_champion(settings)
    model_version = champion.model_version or f"registry-{champion.version}"
    server_url = db.database_url(settings)
    # the workspace's registry, before DATABASE_URL points elsewhere
    registry = db.mlflow_tracking_uri(settings)
    if args.reuse:
        url = args.database_url or db.database_on(server_url, SCRATCH_DB)
    else:
        url = args.database_url or db.create_database(server_url, SCRATCH_DB)
    migrator.migrate(url=url)
    mart = WaterMart(url=url)
    token = mart.create_token("scale-bench-sensor", "sensor")
    mart.close()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "DATABASE_URL": url,
        "MLFLOW_TRACKING_URI": registry,
        "POTABILITY_ROOT": str(settings.root),
    }
    work = Path(tempfile.mkdtemp(prefix="potability-scale-"))
    if args.model == "small":
        env.update(small_champion(settings, work, url))
    env["POTABILITY_SPOOL_DIR"] = str(work / "spool")
    env["POTABILITY_RUN_DIR"] = str(work / "run")  # so this script knows where the page cache is
    result: dict = {
        "machine": machine(),
        "model": {"version": champion.model_version, "kind": champion.tags.get("kind")}
        if args.model == "champion"
        else {"version": "bench-small-forest", "kind": "small forest (library)"},
        "args": {k: v for k, v in vars(args).items() if k != "database_url"},
    }
    try:
        if args.reuse:
            result["fill"] = table_sizes(url)
            print(f"reusing {result['fill']}", flush=True)
        else:
            print("predict on an empty inference table", flush=True)
            proc, base = serve(env, args, work / "serve-empty.log")
            try:
                result["predict_empty"], _ = sensor_run(base, token, args)
            finally:
                stop(proc)
            print(f"  {result['predict_empty']}", flush=True)
            print(f"filling {args.rows:,} answers and {args.lab_rows:,} lab rows", flush=True)
            result["fill"] = fill(url, args, model_version)
            print(f"  {result['fill']}", flush=True)
        print(
            "page and stats latency (warm from the cache, the renderer's time, a worker's after expiry)",
            flush=True,
        )
        page_port = free_port()
        page_base = f"http://127.0.0.1:{page_port}"
        proxy = prefix = None
        proc, base = serve(env, args, work / "serve-full.log", page_port)
        try:
            result["first_copy_s"] = wait_for_cache(base, args.timeout)
            result["reads"] = read_latency(
                base,
                Settings(root=settings.root, run_dir=work / "run").page_cache_dir,
                args.repeats,
                args.timeout,
            )
            result["predict_full"], _ = sensor_run(base, token, args)
            print(f"  sensors alone: {result['predict_full']}", flush=True)
            front = free_port()
            proxy, prefix = nginx(int(urlsplit(base).port), front, work)
            front_base = f"http://127.0.0.1:{front}"
            wait_http(front_base + "/healthz")
            # the hop's own cost: sensors through nginx with no page load, the baseline of its run
            result["predict_nginx_alone"], _ = sensor_run(front_base, token, args)
            print(f"  sensors alone through nginx: {result['predict_nginx_alone']}", flush=True)
            # (key, where, sensors' base, page clients' base): nginx carries both, as in a fleet
            for key, where, sensors_on, pages_on in (
                ("page", "the API port", base, base),
                ("page_listener", "the page listener", base, page_base),
                ("nginx", "nginx (sensors and page through it)", front_base, front_base),
            ):
                sensors, pages = sensor_run(sensors_on, token, args, pages_on)
                result[f"predict_with_{key}_load"], result[f"{key}_load"] = sensors, pages
                print(
                    f"  sensors with {args.page_clients} clients on {where}: {sensors}; pages: {pages}",
                    flush=True,
                )
        finally:
            if proxy is not None:
                stop(proxy)
                shutil.rmtree(prefix, ignore_errors=True)
            stop(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.database_url is None and not (args.keep or args.reuse):
            db.drop_database(server_url, SCRATCH_DB)
        else:
            WaterMart(url=url).revoke_tokens("scale-bench-sensor")
    print_table(result)
    print(f"wrote {write_result('scale', result)}")
    return 0


def _sensor_rows(sensors: dict, where: str) -> list[tuple[str, str]]:
    """The table's rows for one sensor run: wrk's percentiles and errors, and the probe sensor's answers."""
    return [
        (
            f"sensor p50 / p99, {where}",
            f"{sensors['p50_ms']} / {sensors['p99_ms']} ms (load average {sensors['loadavg'][0]})",
        ),
        (
            "  failed sensor requests; predict req/s (wrk)",
            f"{sensors['errors']}; {sensors['rps']:,}",
        ),
        (
            "  probe sensor: answers, failures, p50 / max",
            "{answers}, {failures}, {p50_ms} / {max_ms} ms".format(**sensors["probe"]),
        ),
    ]


def _under_load(r: dict, sensors_key: str, pages_key: str, where: str) -> list[tuple[str, str]]:
    """The table's rows for one run of sensors under ``args.page_clients`` page clients."""
    load = r[pages_key]
    return [
        *_sensor_rows(r[sensors_key], f"{load['clients']} page clients {where}"),
        (
            "  page requests (per s), by status",
            f"{load['requests']:,} ({load['per_second']}) {load['statuses']}",
        ),
        ("  page loads answered 200: p50 / max", f"{load['p50_ms']} / {load['max_ms']} ms"),
    ]


def print_table(r: dict) -> None:
    f, reads = r["fill"], r["reads"]
    filled = (
        [
            ("fill time (answers)", f"{f['fill_s']} s ({f['rows_per_s']:,} rows/s)"),
            ("predict req/s, empty table", f"{r['predict_empty']['rps']:,}"),
        ]
        if "predict_empty" in r
        else [("fill", "reused (--reuse): no fill, no empty-table run")]
    )
    rows = [
        ("answers / lab rows", f"{f['rows']:,} / {f['lab_rows']:,}"),
        *filled,
        ("first page copy after server start", f"{r['first_copy_s']} s"),
        *[
            (
                f"GET {p} warm / renderer / after expiry",
                f"{v['warm_ms']:,} / {v['renderer_ms']} / {v['after_expiry_ms']:,} ms",
            )
            for p, v in reads.items()
        ],
        ("predict req/s, full table", f"{r['predict_full']['rps']:,}"),
        *_sensor_rows(r["predict_full"], "no page load"),
        *_under_load(r, "predict_with_page_load", "page_load", "on the API port"),
        *_under_load(
            r, "predict_with_page_listener_load", "page_listener_load", "on the page listener"
        ),
        *(
            _sensor_rows(r["predict_nginx_alone"], "through nginx, no page load")
            if "predict_nginx_alone" in r
            else []
        ),
        *_under_load(r, "predict_with_nginx_load", "nginx_load", "through nginx"),
        (
            "MB per million rows: table / indexes",
            f"{f['table_mb_per_million']} / {f['indexes_mb_per_million']}",
        ),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")


if __name__ == "__main__":
    sys.exit(main())
