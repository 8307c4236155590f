"""Training benchmark: full and no-op `dvc repro` with a per-stage profile (interpreter and
import start-up, the train stage alone), the search on local cores vs a Dask LocalCluster,
and how tuning time grows with rows (3k / 30k / 300k).

Runs in a temp copy of the project against its own embedded Postgres, so your
data is untouched. Writes ``bench/results/train.json``.

Usage: python bench/train.py [--rows 3000 30000 300000] [--skip-repro]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import copy_project, machine, write_result  # noqa: E402
from potability import db, migrator  # noqa: E402
from potability.config import load_params  # noqa: E402
from potability.features import feature_matrix, labels  # noqa: E402
from potability.mart import WaterMart  # noqa: E402
from potability.pipeline.modeling import search_zoo  # noqa: E402
from potability.pipeline.stages.train import search_settings  # noqa: E402
from potability.synth import generate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCALING_GRID = {
    "n_estimators": [50],
    "max_depth": [12],
    "min_samples_leaf": [4],
    "max_features": ["sqrt"],
}


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return round(time.perf_counter() - started, 2), result


def bench_repro(work: Path, rows: int) -> dict:
    """Full and no-op `dvc repro` on ``rows`` synthetic lab rows (params.yaml as committed)."""
    pgdata = work / "pg"
    url = db.embedded_server_url(pgdata)
    try:
        migrator.migrate(url=url)
        frame = generate(rows, seed=0)
        WaterMart(url=url).insert_samples(
            [{k: (None if v != v else v) for k, v in r.items()} for r in frame.to_dict("records")],
            added_by="bench",
        )
        project = copy_project(ROOT, work / "repo")
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "POTABILITY_ROOT": str(project),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        full, _ = timed(
            subprocess.run, ["dvc", "repro"], cwd=project, env=env, check=True, capture_output=True
        )
        noop, _ = timed(
            subprocess.run, ["dvc", "repro"], cwd=project, env=env, check=True, capture_output=True
        )
        return {
            "rows": rows,
            "full_seconds": full,
            "noop_seconds": noop,
            "profile": profile(project, env),
        }
    finally:
        db.stop_embedded_server(pgdata)


def profile(project: Path, env: dict) -> dict:
    """Where a full repro's time goes: each stage module's import start-up, and the train stage alone."""
    imports = {}
    for stage in ("export", "split", "eda", "train", "evaluate", "promote"):
        imports[stage], _ = timed(
            subprocess.run,
            [sys.executable, "-c", f"import potability.pipeline.stages.{stage}"],
            cwd=project,
            env=env,
            check=True,
        )
    train, _ = timed(
        subprocess.run,
        ["dvc", "repro", "--force", "--single-item", "train"],
        cwd=project,
        env=env,
        check=True,
        capture_output=True,
    )
    return {"import_seconds": imports, "train_stage_seconds": train}


def tune_rf(X, y, params: dict, grid: dict) -> float:
    settings = search_settings({**params, "n_jobs": -1, "vote": {"members": 0}})
    seconds, _ = timed(search_zoo, X, y, {"rf": grid}, settings)
    return seconds


def bench_dask(params: dict, rows: int) -> dict:
    """The committed random-forest grid on local cores, then on a Dask LocalCluster (2 workers x 1 thread)."""
    import joblib
    from distributed import Client, LocalCluster

    frame = generate(rows, seed=1)
    X, y = feature_matrix(frame), labels(frame)
    grid = params["models"]["rf"]
    local = tune_rf(X, y, params, grid)
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster),
        joblib.parallel_backend("dask"),
    ):
        dask = tune_rf(X, y, params, grid)
    return {
        "rows": rows,
        "grid": grid,
        "local_seconds": local,
        "dask_seconds": dask,
        "ratio_local_over_dask": round(local / dask, 2),
    }


def bench_scaling(params: dict, sizes: list[int]) -> dict:
    points = []
    for rows in sizes:
        frame = generate(rows, seed=2)
        seconds = tune_rf(feature_matrix(frame), labels(frame), params, SCALING_GRID)
        points.append({"rows": rows, "seconds": seconds})
        print(f"  rf tune on {rows:>7} rows: {seconds:>7.1f} s", flush=True)
    exponent = None
    if len(points) >= 2:
        a, b = points[0], points[-1]
        exponent = round(math.log(b["seconds"] / a["seconds"]) / math.log(b["rows"] / a["rows"]), 2)
    return {"grid": SCALING_GRID, "points": points, "growth_exponent": exponent}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[3000, 30000, 300000])
    parser.add_argument("--repro-rows", type=int, default=3300)
    parser.add_argument("--skip-repro", action="store_true")
    args = parser.parse_args()
    params = load_params(ROOT / "params.yaml")["train"]
    result = {"machine": machine()}
    with tempfile.TemporaryDirectory(prefix="potability-bench-train-") as tmp:
        if not args.skip_repro:
            result["dvc_repro"] = bench_repro(Path(tmp), args.repro_rows)
            r = result["dvc_repro"]
            print(
                f"dvc repro on {r['rows']} rows: full {r['full_seconds']} s, no-op {r['noop_seconds']} s; "
                f"train stage alone {r['profile']['train_stage_seconds']} s; import start-up per stage "
                f"{r['profile']['import_seconds']} (load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    result["grid_search"] = bench_dask(params, args.repro_rows)
    g = result["grid_search"]
    print(
        f"rf grid search on {g['rows']} rows: local cores {g['local_seconds']} s, Dask LocalCluster "
        f"{g['dask_seconds']} s (local/dask {g['ratio_local_over_dask']})",
        flush=True,
    )
    result["scaling"] = bench_scaling(params, args.rows)
    print(f"time grows as rows^{result['scaling']['growth_exponent']}")
    print(f"wrote {write_result('train', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
