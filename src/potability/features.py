"""Turn lab rows into model inputs, and decide test membership stably."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd

from potability.schema import FEATURE_NAMES, LABEL

_HASH_BUCKETS = 10_000


def feature_matrix(frame: pd.DataFrame) -> np.ndarray:
    """The nine features in model order as float64 (NaN = missing, imputed by the model)."""
    return frame.loc[:, list(FEATURE_NAMES)].to_numpy(dtype=np.float64)


def labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[LABEL].to_numpy(dtype=np.int64)


def in_test_split(sample_ids: pd.Series, share: float, salt: str) -> np.ndarray:
    """True for samples in the test split, decided by a hash of ``sample_id`` alone.

    A sample's membership depends on nothing else, so new rows never move an
    old sample between train and test.
    """
    if not 0.0 < share < 1.0:
        raise ValueError(f"split.test_share must be between 0 and 1, got {share}")

    def bucket(sample_id: str) -> int:
        digest = hashlib.sha256(f"{salt}:{sample_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") % _HASH_BUCKETS

    return np.fromiter(
        (bucket(s) < share * _HASH_BUCKETS for s in sample_ids), dtype=bool, count=len(sample_ids)
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_samples(path: Path) -> pd.DataFrame:
    """Read an exported samples CSV with stable dtypes."""
    return pd.read_csv(path, dtype={"sample_id": str}, keep_default_na=True)


def write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    """Write a CSV byte-for-byte deterministically, replacing the old file in one rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_csv(tmp, index=False, lineterminator="\n")
    tmp.replace(path)
