"""The served ONNX file as exported (``artifacts.onnx_options``) against skl2onnx's default export.

The same fitted candidate exported twice, both run by ONNX Runtime with the
server's session options (``artifacts.OnnxModel``): one answer and a batch of
100, each timed ``--repeats`` times; prints both, the ratio, and the largest
difference between their probabilities (they must agree). What it guards: a
k-NN exported by default computes its distances in a ``Scan`` over every
training row, which made the vote's single answer ~24 x slower (docs/performance.md).

Usage: python bench/onnx_export.py [--candidate models/candidates/vote] [--repeats 300]
(the candidate comes from ``dvc repro``'s train stage).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import ROW  # noqa: E402
from potability import artifacts  # noqa: E402
from potability.schema import FEATURE_NAMES  # noqa: E402


def default_options(model) -> dict[int, dict[str, str | bool]]:
    """skl2onnx's defaults but the plain-tensor probabilities the server reads."""
    return {id(model.steps[-1][1]): {"zipmap": False}}


def ms_per_call(model: artifacts.OnnxModel, X: np.ndarray, repeats: int) -> float:
    model.predict_proba(X)  # warm up
    started = time.perf_counter()
    for _ in range(repeats):
        model.predict_proba(X)
    return (time.perf_counter() - started) / repeats * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--candidate", type=Path, default=Path("models/candidates/vote"))
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    fitted = artifacts.load_candidate(args.candidate)
    ours = artifacts.OnnxModel(artifacts.to_onnx(fitted))
    peer = artifacts.OnnxModel(artifacts.to_onnx(fitted, default_options(fitted)))
    rng = random.Random(1)
    batch = np.array(
        [[ROW[n] * rng.uniform(0.9, 1.1) for n in FEATURE_NAMES] for _ in range(100)],
        dtype=np.float32,
    )
    differs = float(np.max(np.abs(ours.predict_proba(batch) - peer.predict_proba(batch))))
    print(
        f"candidate {args.candidate}, {args.repeats} repeats, max |p_ours - p_default| = {differs:.2e}"
    )
    for name, X in (("one answer", batch[:1]), ("100 answers", batch)):
        ours_ms = ms_per_call(ours, X, args.repeats)
        peer_ms = ms_per_call(peer, X, args.repeats)
        print(
            f"{name:<12} ours {ours_ms:8.3f} ms   skl2onnx default {peer_ms:8.3f} ms   "
            f"ratio {peer_ms / ours_ms:6.1f} x"
        )
    return 0 if differs < 1e-5 else 1


if __name__ == "__main__":
    sys.exit(main())
