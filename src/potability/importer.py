"""Load the real ``water_potability.csv`` (or any file with its columns) into the mart.

Every row is checked with the same rules as the API. Bad rows are rejected with
their line number and reason; good rows still go in. A row without
``sample_id`` gets an id from its content (the validated measurements and
verdict) and how many identical rows came before it in the file, never from its
position: re-importing the file, a reordered copy or a copy with rows appended
adds nothing already stored, so no sample can be in the mart twice (and end up
in both train and test).
"""

from __future__ import annotations

import collections
import csv
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from potability.errors import ValidationError
from potability.mart import InsertReport, WaterMart
from potability.schema import FEATURE_NAMES, LABEL, SAMPLE_FIELDS, FieldError, validate_lab_row

REQUIRED_COLUMNS = (*FEATURE_NAMES, LABEL)


@dataclass
class Rejection:
    line: int  # line in the file, header = 1
    reason: str


@dataclass
class ImportReport:
    inserted: int = 0
    skipped: int = 0  # already stored, identical
    rejected: list[Rejection] = field(default_factory=list)

    def summary(self) -> str:
        return f"inserted {self.inserted}, skipped {self.skipped} (already stored), rejected {len(self.rejected)}"


def stable_sample_id(row: dict, occurrence: int) -> str:
    """An id for a row of a file that has none: its validated content and its occurrence, hashed.

    ``occurrence`` counts the identical rows before it in the file (0 for the
    first), so exact duplicates stay distinct samples, stably under reordering.
    """
    content = [row.get(n) for n in REQUIRED_COLUMNS]
    text = "|".join("" if v is None else repr(float(v)) for v in content)
    digest = hashlib.sha256(f"{text}#{occurrence}".encode()).hexdigest()
    return f"csv-{digest[:20]}"


def read_lab_rows(path: Path) -> tuple[dict[int, dict], list[Rejection]]:
    """Parse and validate a CSV; return the good rows by line number, and the rejections."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ValidationError(f"{path}: the file is empty; expected a header row") from None
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValidationError(
                f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)}",
                field=missing[0],
            )
        unknown = [c for c in header if c not in REQUIRED_COLUMNS and c not in SAMPLE_FIELDS]
        if unknown:
            raise ValidationError(
                f"{path}: unknown column(s) {', '.join(unknown)}", field=unknown[0]
            )
        good: dict[int, dict] = {}
        rejected: list[Rejection] = []
        occurrences: collections.Counter[tuple] = collections.Counter()
        for position, raw in enumerate(reader):
            line = position + 2
            if not any(cell.strip() for cell in raw):
                continue  # a blank line is not a row
            if len(raw) != len(header):
                rejected.append(
                    Rejection(line, f"has {len(raw)} fields, the header has {len(header)}")
                )
                continue
            record = dict(zip(header, raw, strict=True))
            needs_id = not (record.get("sample_id") or "").strip()
            if needs_id:
                record["sample_id"] = "pending"  # replaced below by an id from the content
            try:
                row = validate_lab_row(record)
            except FieldError as exc:
                rejected.append(Rejection(line, f"{exc.field or 'row'}: {exc.message}"))
                continue
            if needs_id:
                key = tuple(row.get(n) for n in REQUIRED_COLUMNS)
                row["sample_id"] = stable_sample_id(row, occurrences[key])
                occurrences[key] += 1
            good[line] = row
        return good, rejected


def import_csv(
    path: Path,
    mart: WaterMart,
    added_by: str,
    chunk_rows: int = 5000,
    on_rows: Callable[[int, int], None] | None = None,
) -> ImportReport:
    """Import a CSV into the mart; see the module docstring for the rules.

    ``on_rows(done, total)`` is called after each stored chunk (the CLI's
    progress bar); the library itself draws nothing.
    """
    by_line, rejected = read_lab_rows(path)
    report = ImportReport(rejected=rejected)
    line_of = {row["sample_id"]: line for line, row in by_line.items()}
    rows = list(by_line.values())
    for i in range(0, len(rows), chunk_rows):
        result: InsertReport = mart.insert_samples(rows[i : i + chunk_rows], added_by=added_by)
        report.inserted += len(result.inserted)
        report.skipped += len(result.duplicates)
        for sid in result.conflicts:
            report.rejected.append(
                Rejection(
                    line_of[sid],
                    f"sample_id {sid!r} is already stored with other values; not overwritten",
                )
            )
        if on_rows is not None:
            on_rows(min(i + chunk_rows, len(rows)), len(rows))
    report.rejected.sort(key=lambda r: r.line)
    return report
