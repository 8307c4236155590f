"""Stage split: test membership by a hash of sample_id, so old samples never move."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from potability.config import load_params
from potability.features import in_test_split, read_samples, write_csv_atomic

log = logging.getLogger(__name__)


def split(frame: pd.DataFrame, test_share: float, salt: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return (train, test); each keeps the input's order."""
    test = in_test_split(frame["sample_id"], test_share, salt)
    return frame[~test], frame[test]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=Path, required=True)
    parser.add_argument("--train", type=Path, required=True)
    parser.add_argument("--test", type=Path, required=True)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)["split"]
    train, test = split(read_samples(args.samples), params["test_share"], params["salt"])
    write_csv_atomic(train, args.train)
    write_csv_atomic(test, args.test)
    log.info(
        "split: %d train, %d test (%.1f %% potable in test)",
        len(train),
        len(test),
        100 * test["Potability"].mean() if len(test) else 0.0,
    )


if __name__ == "__main__":
    main()
