"""What the log writer's store costs per COPY, with and without the rollups (issue 13).

Times ``InferenceStore.write(batches, fresh=True)`` (the server's log writer:
one flush of 100-row requests from ``--sensors`` sensors, all answered now) at
several flush sizes, in a scratch database (``write_bench`` on the
workspace's Postgres, recreated and dropped; or ``--database-url``) that holds
``--lab-rows`` lab samples over the last ``--days`` days from the same
sensors and a registered profile for the model version, as a live log has:

* ``no triggers``: the rollup trigger disabled, the floor (COPY alone);
* ``rollups``: as shipped (whatever ``potability`` is importable: run with
  ``PYTHONPATH=<main's src>`` to measure another commit's code and schema).

Every mode and size runs ``--rounds`` times, interleaved; the round with the
median rows/s is shown. Beside rows/s and ms per statement, ``trigger ms`` is the rollup trigger's own
time per statement (``pg_stat_user_functions``: the scratch database gets
``track_functions = 'pl'``; a ``--database-url`` one shows it only if it has that already).

Usage: python bench/write_rollups.py [--sizes 100 500 5000] [--rows 50000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402
from potability import db, inference_store, migrator, rollups  # noqa: E402
from potability.config import get_settings  # noqa: E402
from potability.ids import uuid7_batch  # noqa: E402
from potability.inference_store import AnsweredBatch, InferenceStore  # noqa: E402
from potability.quality import reference_profile  # noqa: E402
from potability.schema import FEATURE_NAMES  # noqa: E402
from potability.synth import POTABLE_SHARE, generate  # noqa: E402
from scale import LAB_SQL, _feature_params  # noqa: E402

SCRATCH_DB = "write_bench"
VERSION = "bench-v1"
REQUEST_ROWS = 100  # rows per AnsweredBatch: one 100-row request each
TRIGGER = "water_inferences_roll_up"


def requests_for(rows: int, sensors: int, features: np.ndarray, rng) -> list[AnsweredBatch]:
    """One flush of ``rows`` answers: 100-row requests from random sensors, answered now."""
    batches = []
    for start in range(0, rows, REQUEST_ROWS):
        n = min(REQUEST_ROWS, rows - start)
        now = datetime.now(UTC)
        picked = features[rng.integers(0, len(features), n)]
        batches.append(
            AnsweredBatch(
                uuid7_batch(n, now),
                now,
                f"scale-sensor-{rng.integers(sensors):02d}",
                VERSION,
                picked,
                rng.random(n),
                0.5,
            )
        )
    return batches


def trigger_ms(store: InferenceStore, cur) -> tuple[int, float]:
    """Calls of the rollup trigger function by ``store``'s backend so far and their total time (ms).

    A backend reports its function statistics when it goes idle, at most once a second
    unless told to flush: the store's own connection is told so first.
    """
    store._run(lambda c: c.execute("SELECT pg_stat_force_next_flush()"))
    cur.execute(
        "SELECT coalesce(sum(calls), 0)::bigint, coalesce(sum(total_time), 0) FROM pg_stat_user_functions "
        "WHERE schemaname = 'water' AND funcname = 'roll_up_inferences'"
    )
    return cur.fetchone()


def measure(url: str, size: int, statements: int, args, features, rng) -> dict:
    """Rows/s and ms per statement of ``statements`` writes of ``size`` rows; the trigger's share."""
    store = InferenceStore(url=url)
    store.write(requests_for(size, args.sensors, features, rng), fresh=True)  # connect, warm up
    flushes = [requests_for(size, args.sensors, features, rng) for _ in range(statements)]
    conn = db.connect(url=url)
    conn.autocommit = True
    with conn.cursor() as cur:
        calls0, time0 = trigger_ms(store, cur)
        times = []
        for flush in flushes:
            started = time.perf_counter()
            assert store.write(flush, fresh=True) == size
            times.append(time.perf_counter() - started)
        loadavg = os.getloadavg()[0]
        calls1, time1 = trigger_ms(store, cur)
    conn.close()
    store.close()
    total = sum(times)
    calls = calls1 - calls0
    return {
        "rows_per_copy": size,
        "statements": statements,
        "rows_per_s": round(size * statements / total),
        "ms_per_statement": round(total / statements * 1000, 2),
        "median_ms": round(statistics.median(times) * 1000, 2),
        "trigger_ms_per_statement": round((time1 - time0) / calls, 2) if calls else None,
        "loadavg": round(loadavg, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[100, 500, 5000],
        help="rows per COPY (one flush of the log writer)",
    )
    parser.add_argument("--rows", type=int, default=50_000, help="rows written per size and mode")
    parser.add_argument(
        "--rounds", type=int, default=3, help="repeats of every mode and size (median kept)"
    )
    parser.add_argument("--lab-rows", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=7.0, help="the lab rows' window, ending now")
    parser.add_argument("--sensors", type=int, default=20)
    parser.add_argument(
        "--database-url",
        default=None,
        help=f"use this database (kept); default: a scratch `{SCRATCH_DB}`, dropped",
    )
    args = parser.parse_args()

    server_url = db.database_url(get_settings())
    url = args.database_url or db.create_database(server_url, SCRATCH_DB)
    try:
        migrator.migrate(url=url)
        profile = reference_profile(generate(3300, seed=1), 10)
        rollups.register_edges(url, VERSION, profile)
        end = datetime.now(UTC)
        params = {
            **_feature_params(),
            "start": end - timedelta(days=args.days),
            "span": args.days * 86400.0,
            "sensors": args.sensors,
            "potable_share": POTABLE_SHARE,
            "lab_rows": args.lab_rows,
        }
        conn = db.connect(url=url)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(LAB_SQL, params)
            cur.execute("VACUUM ANALYZE water.water_potability")
            if not args.database_url:
                cur.execute(f"ALTER DATABASE {SCRATCH_DB} SET track_functions = 'pl'")
        features = generate(5000, seed=2)[list(FEATURE_NAMES)].to_numpy(dtype=float)
        rng = np.random.default_rng(3)
        print(f"code: {inference_store.__file__}")
        print(
            f"{'mode':<12} {'rows/COPY':>9} {'rows/s':>9} {'ms/stmt':>8} {'median':>8} "
            f"{'trigger ms':>10} {'load':>5}"
        )
        runs: dict[tuple[str, int], list[dict]] = {}
        # modes interleaved, so a burst of load on shared cores hits both
        for _ in range(args.rounds):
            for mode in ("no triggers", "rollups"):
                with conn.cursor() as cur:
                    state = "DISABLE" if mode == "no triggers" else "ENABLE"
                    cur.execute(f"ALTER TABLE water.water_inferences {state} TRIGGER {TRIGGER}")
                for size in args.sizes:
                    r = measure(url, size, max(args.rows // size, 5), args, features, rng)
                    runs.setdefault((mode, size), []).append(r)
        results = []
        for (mode, size), rs in runs.items():  # the median round of each, by rows/s
            r = {
                "mode": mode,
                **sorted(rs, key=lambda r: r["rows_per_s"])[len(rs) // 2],
                "rows_per_s_rounds": [r["rows_per_s"] for r in rs],
            }
            results.append(r)
            print(
                f"{mode:<12} {size:>9,} {r['rows_per_s']:>9,} {r['ms_per_statement']:>8} "
                f"{r['median_ms']:>8} {r['trigger_ms_per_statement']!s:>10} {r['loadavg']:>5}",
                flush=True,
            )
        conn.close()
    finally:
        if not args.database_url:
            db.drop_database(server_url, SCRATCH_DB)
    write_result(
        "write_rollups",
        {
            "machine": machine(),
            "code": inference_store.__file__,
            "lab_rows": args.lab_rows,
            "results": results,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
