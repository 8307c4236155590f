"""Serving benchmark: our gunicorn + ONNX server vs `mlflow models serve`, same model, same requests.

Takes the deployed champion (the MLflow alias our server follows) and its
sklearn twin (the workspace's skops candidate of the same kind), saves that twin as an MLflow model and
serves it with ``mlflow models serve``; starts ``potability serve`` with
inference logging on (rows go to Postgres); drives both with wrk on loopback
with one row, 100-row and 1,000-row batches at several concurrencies. Times
raw ONNX Runtime (``InferenceSession.run`` on the served model.onnx, in this
process, no HTTP) on the same 1,000 rows, the floor a 1,000-row request is
measured against. Prints a table and writes ``bench/results/serve.json``.

Usage: python bench/serve.py [--seconds 10]   (after `make run`, or `dvc repro` + `potability deploy`)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import deployed_champion, free_port, machine, start, stop, wait_http, write_result, wrk  # noqa: E402
from potability import artifacts  # noqa: E402
from potability.config import get_settings  # noqa: E402
from potability.mart import WaterMart  # noqa: E402
from potability.schema import FEATURE_NAMES  # noqa: E402

ROW = {"ph": 7.08, "Hardness": 196.4, "Solids": 22006.0, "Chloramines": 7.12, "Sulfate": 333.8,
       "Conductivity": 426.2, "Organic_carbon": 14.3, "Trihalomethanes": 66.4, "Turbidity": 3.97}  # fmt: skip
SCENARIOS = [("1 row", 1, 1), ("1 row", 1, 8), ("1 row", 1, 32), ("100-row batch", 100, 8),
             ("1,000-row batch", 1000, 1)]  # fmt: skip
RAW_ROWS = 1000  # the batch that is compared with raw ONNX Runtime
RAW_REPEATS = 300


def bodies(rows: int) -> tuple[str, str]:
    ours = json.dumps(ROW if rows == 1 else {"samples": [ROW] * rows})
    peer = json.dumps(
        {
            "dataframe_split": {
                "columns": list(FEATURE_NAMES),
                "data": [[ROW[n] for n in FEATURE_NAMES]] * rows,
            }
        }
    )
    return ours, peer


def cpu_seconds(roots: list[int]) -> float:
    """CPU time (user + system) used so far by these processes and all their children.

    A child that exited (a Postgres backend whose connection closed) is counted
    in its parent's ``children_*`` times, so the total never goes back.

    On a machine shared with other jobs, wall-clock throughput measures the
    scheduler as much as the server; CPU per request does not.
    """
    import psutil

    total = 0.0
    for root in roots:
        try:
            tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for proc in tree:
            try:
                times = proc.cpu_times()  # children_*: those already exited and reaped
                total += times.user + times.system + times.children_user + times.children_system
            except psutil.NoSuchProcess:
                continue
    return total


def postmaster_pid(settings) -> int | None:
    """The embedded Postgres that logs our answers (None with an external DATABASE_URL)."""
    if settings.database_url:
        return None
    try:
        return int((settings.pgdata / "postmaster.pid").read_text().split()[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None


def measured(url: str, body: str, connections: int, seconds: int, roots: list[int],
             token: str | None = None) -> dict:  # fmt: skip
    """A wrk run, plus the CPU milliseconds the server (and its database) spent per request."""
    before = cpu_seconds(roots)
    result = wrk(url, body, connections, seconds, token)
    spent = cpu_seconds(roots) - before
    result["cpu_ms_per_request"] = round(1000 * spent / max(result["requests"], 1), 3)
    return result


def _timed(call, repeats: int) -> dict:
    """p50 and min of ``repeats`` calls, after 20 warm-up calls."""
    import time

    for _ in range(20):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    times.sort()
    return {"p50_ms": round(times[len(times) // 2] * 1000, 3), "min_ms": round(times[0] * 1000, 3)}


def raw_onnx(model_path: Path, rows: int, repeats: int) -> dict:
    """Time ``InferenceSession.run`` on ``rows`` copies of ROW: the served model, no HTTP, no logging.

    Same session options as the server (one intra-op thread), float32 input.
    Also the floor any JSON service has on top: the same request body parsed
    with orjson into that matrix, then run (``parse_and_run``); a request's
    ratio to it says what HTTP, validation, answers and logging add.
    """
    import numpy as np
    import onnxruntime as ort
    import orjson

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    matrix = np.array([[ROW[n] for n in FEATURE_NAMES]] * rows, dtype=np.float32)
    body = bodies(rows)[0].encode()

    def parse_and_run() -> None:
        samples = orjson.loads(body)["samples"]
        features = np.array([[s[n] for n in FEATURE_NAMES] for s in samples], dtype=np.float32)
        session.run(None, {name: features})

    run = _timed(lambda: session.run(None, {name: matrix}), repeats)
    return {"rows": rows, "repeats": repeats, **run, "body_bytes": len(body),
            "parse_and_run": _timed(parse_and_run, repeats)}  # fmt: skip


def save_mlflow_model(kind_dir: Path, out: Path) -> None:
    import mlflow.sklearn
    import pandas as pd
    import skops.io as sio

    model = artifacts.load_candidate(kind_dir)
    mlflow.sklearn.save_model(
        model, out, serialization_format="skops",
        skops_trusted_types=sio.get_untrusted_types(data=sio.dumps(model)),
        input_example=pd.DataFrame([ROW], columns=list(FEATURE_NAMES)),
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--seconds", type=int, default=10, help="wrk duration per scenario and server"
    )
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    settings = get_settings()
    champion = deployed_champion(settings)
    kind = champion.tags["kind"]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    work = Path(tempfile.mkdtemp(prefix="potability-bench-"))
    token = WaterMart().create_token("bench-sensor", "sensor")
    save_mlflow_model(settings.root / "models/candidates" / kind, work / "mlflow-model")
    ours_port, peer_port = free_port(), free_port()
    ours = start([sys.executable, "-m", "potability.cli", "serve", "--host", "127.0.0.1", "--port", str(ours_port),
                  "--workers", str(args.workers)], env, work / "ours.log")  # fmt: skip
    peer = start([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", str(work / "mlflow-model"), "--env-manager",
                  "local", "-h", "127.0.0.1", "-p", str(peer_port), "-w", str(args.workers)], env, work / "mlflow.log")  # fmt: skip
    runs = []
    # ours = the server and the Postgres it logs every answer to; mlflow logs nothing
    our_roots = [ours.pid] + [pid for pid in [postmaster_pid(settings)] if pid]
    try:
        wait_http(f"http://127.0.0.1:{ours_port}/readyz")
        wait_http(f"http://127.0.0.1:{peer_port}/ping")
        for label, rows, connections in SCENARIOS:
            our_body, peer_body = bodies(rows)
            url = f"http://127.0.0.1:{ours_port}/v1/predict"
            result_ours = measured(url, our_body, connections, args.seconds, our_roots, token)
            url = f"http://127.0.0.1:{peer_port}/invocations"
            result_peer = measured(url, peer_body, connections, args.seconds, [peer.pid])
            for r in (result_ours, result_peer):
                r["rows_per_s"] = round(r["rps"] * rows, 1)
            ratio = (
                round(result_ours["rps"] / result_peer["rps"], 1) if result_peer["rps"] else None
            )
            # what the throughput ratio would be with the cores to themselves
            cpu_ratio = round(
                result_peer["cpu_ms_per_request"] / max(result_ours["cpu_ms_per_request"], 1e-9), 1
            )
            runs.append(
                {
                    "scenario": f"{label}, {connections} connections",
                    "ours": result_ours,
                    "mlflow": result_peer,
                    "ratio": ratio,
                    "cpu_ratio": cpu_ratio,
                }
            )
            print(f"{label:>16}  c={connections:<3} ours {result_ours['rps']:>8} req/s p50 {result_ours['p50_ms']:>6} ms "
                  f"p99 {result_ours['p99_ms']:>6} ms | mlflow {result_peer['rps']:>7} req/s p50 {result_peer['p50_ms']:>7} ms "
                  f"p99 {result_peer['p99_ms']:>7} ms | ratio {ratio} | CPU ms/request ours "
                  f"{result_ours['cpu_ms_per_request']} mlflow {result_peer['cpu_ms_per_request']} "
                  f"(ratio {cpu_ratio})", flush=True)  # fmt: skip
        model_path = settings.model_cache_dir / f"v{champion.version}" / artifacts.MODEL_FILE
        raw = raw_onnx(model_path, RAW_ROWS, RAW_REPEATS)  # servers idle: the cores are the bench's
        batch = next(r for r in runs if r["scenario"].startswith("1,000-row batch"))
        raw["ours_p50_over_raw"] = round(batch["ours"]["p50_ms"] / raw["p50_ms"], 2)
        floor = raw["parse_and_run"]["p50_ms"]
        raw["ours_p50_over_parse_and_run"] = round(batch["ours"]["p50_ms"] / floor, 2)
        print(f"raw ONNX Runtime, {RAW_ROWS} rows: p50 {raw['p50_ms']} ms (min {raw['min_ms']} ms); "
              f"our 1,000-row request p50 {batch['ours']['p50_ms']} ms = {raw['ours_p50_over_raw']}x raw; "
              f"parsing the same {raw['body_bytes']:,}-byte body and running: p50 {floor} ms, "
              f"ours = {raw['ours_p50_over_parse_and_run']}x that", flush=True)  # fmt: skip
    finally:
        stop(ours)
        stop(peer)
        WaterMart().revoke_tokens("bench-sensor")
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": machine(), "model": {"version": champion.model_version, "kind": kind},
              "inference_logging": True, "seconds_per_run": args.seconds, "runs": runs,
              "raw_onnx": raw}  # fmt: skip
    print(f"wrote {write_result('serve', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
