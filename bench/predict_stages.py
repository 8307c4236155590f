"""Where a batch predict spends its time, stage by stage, in this process (no HTTP, no Postgres).

Times each step of ``POST /v1/predict`` on the same body, with the stdlib
steps it replaced beside them, so a profile can be repeated after a change.

Usage: python bench/predict_stages.py [--model-dir .model-cache/v1] [--rows 1000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROW  # noqa: E402
from potability import artifacts  # noqa: E402
from potability.ids import uuid7_batch  # noqa: E402
from potability.inference_store import AnsweredBatch, encode  # noqa: E402
from potability.schema import FEATURE_NAMES, fast_feature_matrix  # noqa: E402
from potability.serve.api import answers_of  # noqa: E402
from potability.serve.journal import Journal  # noqa: E402
from potability.serve.spool import Spool  # noqa: E402


def timed(name: str, repeats: int, fn):
    """Run ``fn`` once to warm up, then ``repeats`` times; print the mean and return its result."""
    out = fn()
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    print(f"{name:<30} {(time.perf_counter() - started) / repeats * 1000:8.3f} ms", flush=True)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, default=Path(".model-cache/v1"))
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    served = artifacts.load_model_dir(args.model_dir)
    rng = random.Random(1)
    samples = [{n: ROW[n] * rng.uniform(0.9, 1.1) for n in FEATURE_NAMES} for _ in range(args.rows)]
    body = json.dumps({"samples": samples}).encode()
    n, r = args.rows, args.repeats
    print(f"{n} rows, body {len(body):,} bytes, model {served.version}")
    items = timed("orjson.loads", r, lambda: orjson.loads(body))["samples"]
    timed("  json.loads (before)", r, lambda: json.loads(body, parse_constant=str))
    X = timed("fast_feature_matrix", r, lambda: fast_feature_matrix(items))
    probabilities = timed("ONNX predict_proba", r, lambda: served.model.predict_proba(X))
    now = datetime.now(UTC)
    ids = timed("uuid7_batch", r, lambda: uuid7_batch(n, now))
    timed("  str(uuid4()) per row (before)", r, lambda: [str(uuid.uuid4()) for _ in range(n)])
    batch = AnsweredBatch(ids, now, "bench-sensor", served.version, X, probabilities, 0.5)
    answers = timed("answers_of", r, lambda: answers_of(batch))
    reply = {"model_version": served.version, "predictions": answers}
    timed("orjson.dumps", r, lambda: orjson.dumps(reply))
    timed("  json.dumps (before)", r, lambda: json.dumps(reply))
    timed("binary COPY encode", r, lambda: encode([batch]))
    with tempfile.TemporaryDirectory() as tmp:  # the page cache, as a worker's journal writes
        journal = Journal(Spool(Path(tmp)))
        timed("journal append (no fsync)", r, lambda: journal.append(batch))
        journal.fsync = True  # POTABILITY_LOG_JOURNAL_FSYNC=1: on this machine's disk
        timed("  journal append + fdatasync", min(r, 300), lambda: journal.append(batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
