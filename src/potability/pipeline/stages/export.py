"""Stage export: every lab row in Postgres -> ``data/raw/samples.csv``, sorted by sample_id.

Identical rows give a byte-identical file, so DVC sees "unchanged" and reruns
nothing downstream. The stage itself always runs (``always_changed``): the
database is a dependency DVC cannot hash.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from potability.features import write_csv_atomic
from potability.mart import WaterMart

log = logging.getLogger(__name__)


def export(mart: WaterMart) -> pd.DataFrame:
    """Every lab row with ``added_at`` (UTC, ISO 8601): the EDA report reads the newest rows by it."""
    frame = mart.samples(with_added_at=True)
    frame["added_at"] = pd.to_datetime(frame["added_at"], utc=True).dt.strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    frame = export(WaterMart())
    if frame.empty:
        raise SystemExit(
            "export: water.water_potability is empty; load rows with `potability seed` or `import-csv`"
        )
    write_csv_atomic(frame, args.out)
    log.info("exported %d lab rows to %s", len(frame), args.out)


if __name__ == "__main__":
    main()
