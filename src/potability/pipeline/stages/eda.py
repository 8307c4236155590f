"""Stage eda: a self-contained HTML report on the exported rows, and whether the recipe should change."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from potability import artifacts
from potability.config import load_params
from potability.features import read_samples, write_csv_atomic
from potability.pipeline import eda

log = logging.getLogger(__name__)


def report(
    samples: Path, out: Path, metrics: Path, plot: Path, params: dict[str, Any]
) -> dict[str, Any]:
    """Write the HTML report, its verdict for ``dvc metrics`` and the label balance for ``dvc plots``."""
    frame = read_samples(samples)
    if "added_at" not in frame:
        raise SystemExit(f"eda: {samples} has no added_at column; rerun the export stage")
    older, newest = eda.newest_rows(frame, params["eda"]["newest_rows"])
    verdict = eda.assess(
        older,
        newest,
        bins=params["page"]["drift_bins"],
        psi_threshold=params["page"]["drift_psi_threshold"],
    )
    balance = eda.label_balance(frame, params["eda"]["balance_slices"])
    page = eda.render(frame, verdict, balance, eda.per_class(frame), eda.figures(frame, balance))
    artifacts.write_bytes_atomic(out, page.encode("utf-8"))
    write_csv_atomic(balance, plot)
    artifacts.write_json_atomic(metrics, verdict)
    log.info(
        "eda: recipe change advised: %s %s", verdict["recipe_change_advised"], verdict["reasons"]
    )
    return verdict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--plot", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report(args.samples, args.out, args.metrics, args.plot, load_params(args.params))


if __name__ == "__main__":
    main()
