"""Model quality on real rows: the pipeline's own search and decision on 5 random 80/20 splits.

Each split runs what `dvc repro` runs on the training rows (the zoo's search on
repeated out-of-fold probabilities, the soft vote, the thresholds), chooses the
challenger out of fold exactly as the promote stage does, and only then looks
at the test rows: once, to confirm the challenger (recall floor) and report it
with 95 % intervals. Nothing is chosen on the test rows. For comparison only,
it also prints the gap to the best precision any threshold reaches on the test
rows at the recall the challenger got there (the number honest methods cannot
claim: how much the operating point gives away).

Targets (issue 23): mean test precision >= 0.66, mean test recall in
[0.25, 0.32], every split's recall >= 0.22, none refused for want of recall,
mean gap <= 0.05.

Usage: python bench/quality.py [--csv ../shared/data/water_potability_dev.csv] [--splits 5]
Writes bench/results/quality.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, write_result  # noqa: E402
from potability.config import load_params  # noqa: E402
from potability.pipeline.modeling import (  # noqa: E402
    classification_metrics,
    operating_points,
    precision_at_recall,
    precision_promise,
    search_zoo,
)
from potability.pipeline.promotion import decide  # noqa: E402
from potability.pipeline.stages.train import search_settings  # noqa: E402
from potability.schema import FEATURE_NAMES, LABEL  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV_CSV = ROOT.parent / "shared/data/water_potability_dev.csv"


def one_split(frame: pd.DataFrame, seed: int, params: dict) -> dict:
    """Train on a random 80 % of rows, decide out of fold, confirm once on the other 20 %."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(frame), dtype=bool)
    test[rng.permutation(len(frame))[: round(0.2 * len(frame))]] = True
    X = frame[list(FEATURE_NAMES)].to_numpy(float)
    y = frame[LABEL].to_numpy(int)
    train = params["train"]
    started = time.perf_counter()
    zoo = search_zoo(X[~test], y[~test], train["models"], search_settings(train))
    seconds = time.perf_counter() - started
    candidates = {}
    for kind, c in zoo.items():
        proba = c.model.predict_proba(X[test])[:, 1]
        metrics = classification_metrics(y[test], proba, c.estimate.threshold)
        metrics["operating_points"] = operating_points(y[test], proba, train["operating_recalls"])
        # comparison only: the best precision any threshold reaches at the recall this one got
        metrics.update(
            precision_promise(
                c.estimate.tp,
                c.estimate.answers,
                metrics["confusion"]["tp"],
                metrics["positives"],
                train["confidence_level"],
            )
        )
        metrics["best_p_at_same_recall"] = precision_at_recall(
            y[test], proba, metrics["recall"] - 1e-9
        )
        candidates[kind] = {**metrics, "oof": c.estimate.as_metrics(), "best_params": c.best_params}
    decision = decide(
        candidates,
        None,
        train["min_recall"],
        train["min_positives"],
        level=train["confidence_level"],
    )
    chosen = candidates.get(decision.challenger or "", {})
    return {
        "seed": seed,
        "search_seconds": round(seconds, 1),
        "promoted": decision.promote,
        "kind": decision.challenger,
        "reason": decision.reason,
        "precision": chosen.get("precision"),
        "precision_ci": chosen.get("precision_ci"),
        "recall": chosen.get("recall"),
        "recall_ci": chosen.get("recall_ci"),
        "positives": chosen.get("positives"),
        "oof_precision": chosen.get("oof", {}).get("oof_precision"),
        "oof_recall": chosen.get("oof", {}).get("oof_recall"),
        "precision_lower_bound": chosen.get("precision_lower_bound"),
        "test_picked_p_at_r0.25": chosen.get("operating_points", {}).get("p_at_r0.25"),
        "gap": (
            round(chosen["best_p_at_same_recall"] - chosen["precision"], 4) if chosen else None
        ),
        "candidates": {
            k: {
                "precision": round(m["precision"], 4),
                "recall": round(m["recall"], 4),
                "oof_precision": m["oof"]["oof_precision"],
            }
            for k, m in candidates.items()
        },
    }


def summarise(rows: list[dict]) -> dict:
    """Means over the splits and whether issue 23's targets are met (every split must be promoted)."""
    done = [r for r in rows if r["promoted"]]
    p = np.array([r["precision"] for r in done]) if done else np.array([np.nan])
    rec = np.array([r["recall"] for r in done]) if done else np.array([np.nan])
    gap = np.array([r["gap"] for r in done]) if done else np.array([np.nan])
    met = (
        len(done) == len(rows)
        and p.mean() >= 0.66
        and 0.25 <= rec.mean() <= 0.32
        and rec.min() >= 0.22
        and gap.mean() <= 0.05
    )
    return {
        "splits": len(rows),
        "promoted": len(done),
        "precision_mean": round(float(p.mean()), 4),
        "precision_min": round(float(p.min()), 4),
        "recall_mean": round(float(rec.mean()), 4),
        "recall_min": round(float(rec.min()), 4),
        "gap_mean": round(float(gap.mean()), 4),
        "targets_met": bool(met),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEV_CSV)
    parser.add_argument("--splits", type=int, default=5)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    args = parser.parse_args()
    params = load_params(args.params)
    frame = pd.read_csv(args.csv)
    rows = []
    print(
        f"{len(frame)} rows from {args.csv}; floor {params['train']['min_recall']}, threshold "
        f"aimed at the least out-of-fold recall whose {params['train']['confidence_level']:.0%} "
        "lower bound clears it",
        flush=True,
    )
    print(
        "| split | promoted | test precision (95 % CI) | test recall (95 % CI) | answers | oof precision | oof (aimed) recall | precision lower bound | gap to best at same recall (not used) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for seed in range(args.splits):
        r = one_split(frame, seed, params)
        rows.append(r)
        if r["precision"] is None:
            print(f"| {seed} | none: {r['reason']} | | | | | | | |", flush=True)
            continue
        pci, rci = r["precision_ci"], r["recall_ci"]
        print(
            f"| {seed} | {r['kind'] if r['promoted'] else 'none (' + str(r['kind']) + ' fails the floor)'} "
            f"| {r['precision']:.3f} ({pci[0]:.3f}-{pci[1]:.3f}) | {r['recall']:.3f} ({rci[0]:.3f}-{rci[1]:.3f}) "
            f"| {r['positives']} | {r['oof_precision']:.3f} | {r['oof_recall']:.3f} | {r['precision_lower_bound']:.3f} "
            f"| {r['gap']:.3f} |",
            flush=True,
        )
    summary = summarise(rows)
    print(
        f"promoted on {summary['promoted']}/{summary['splits']} splits; precision mean "
        f"{summary['precision_mean']:.3f} min {summary['precision_min']:.3f}; recall mean "
        f"{summary['recall_mean']:.3f} min {summary['recall_min']:.3f}; gap mean "
        f"{summary['gap_mean']:.3f}; targets met: {summary['targets_met']}"
    )
    write_result(
        "quality", {"machine": machine(), "csv": str(args.csv), "summary": summary, "splits": rows}
    )


if __name__ == "__main__":
    main()
