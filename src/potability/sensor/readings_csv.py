"""Readings from a CSV in the data set's format, answers back to CSV: `potability predict`'s files.

A row's reading id is its ``reading_id`` column, else the file's content hash
and the row's line; its time is its ``read_at`` column, else its
``collected_at`` (a lab file's), else the time given for the whole file
(``--read-at``), never the file's modification time (a ``touch`` or a copy
would make every row a new reading). So running the command again on the same
file sends the same readings, and the server stores them once and answers with
the same inference ids. A lab file can be sent as it is: its verdict and lab
columns are not sent.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

from potability.errors import ValidationError
from potability.schema import FEATURE_NAMES, LABEL, SAMPLE_FIELDS, FieldError
from potability.sensor.client import Answer, ClientError, PotabilityClient, Refused
from potability.sensor.readings import READING_FIELDS, Reading, new_reading

NOT_SENT = (LABEL, *SAMPLE_FIELDS)
ANSWER_COLUMNS = (
    "line",
    "reading_id",
    "potable",
    "probability",
    "threshold",
    "model_version",
    "inference_id",
)


@dataclass(frozen=True)
class Problem:
    line: int  # header = 1
    field: str | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.field or 'row'}: {self.message}"


def read_readings(
    path: Path, read_at: datetime | str | None = None
) -> tuple[dict[int, Reading], list[Problem]]:
    """Every row as a reading by line number, and every bad row's problem (line and field).

    ``read_at`` is the time of a row with neither ``read_at`` nor ``collected_at``;
    without it such a row is a problem naming ``read_at``.
    """
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    lines = data.decode("utf-8-sig").splitlines()
    reader = csv.reader(lines)
    header = [h.strip() for h in next(reader, [])]
    missing = [c for c in FEATURE_NAMES if c not in header]
    if missing:
        raise ValidationError(f"{path}: missing column(s) {', '.join(missing)}", field=missing[0])
    unknown = [c for c in header if c not in (*FEATURE_NAMES, *READING_FIELDS, *NOT_SENT)]
    if unknown:
        raise ValidationError(f"{path}: unknown column(s) {', '.join(unknown)}", field=unknown[0])
    readings: dict[int, Reading] = {}
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for line, raw in enumerate(reader, start=2):
        if not any(cell.strip() for cell in raw):
            continue  # a blank line is not a row
        if len(raw) != len(header):
            problems.append(
                Problem(line, None, f"has {len(raw)} fields, the header has {len(header)}")
            )
            continue
        record = dict(zip(header, raw, strict=True))
        features = {name: record[name] for name in FEATURE_NAMES}
        when = record.get("read_at") or record.get("collected_at") or read_at
        if not when:
            problems.append(Problem(line, "read_at", "is empty; add the column or --read-at"))
            continue
        try:
            reading = new_reading(
                features,
                read_at=when,
                reading_id=record.get("reading_id") or f"csv-{digest}-{line}",
                index=line,
            )
        except FieldError as exc:
            problems.append(Problem(line, exc.field, exc.message))
            continue
        if reading.reading_id in first_line:
            problems.append(
                Problem(line, "reading_id", f"repeats line {first_line[reading.reading_id]}")
            )
            continue
        first_line[reading.reading_id] = line
        readings[line] = reading
    return readings, problems


def write_answers(answers: Iterable[Answer], line_of: dict[str, int], out: TextIO) -> int:
    """Write one CSV row per answer (``line`` empty for a reading from an earlier run's outbox)."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(ANSWER_COLUMNS)
    count = 0
    for a in answers:
        writer.writerow(
            [
                line_of.get(a.reading_id, ""),
                a.reading_id,
                int(a.potable),
                a.probability,
                a.threshold,
                a.model_version,
                a.inference_id,
            ]
        )
        count += 1
    return count


@dataclass
class Run:
    """What sending a file did: answers, readings left in the outbox, errors by line, exit status."""

    line_of: dict[str, int]
    answers: list[Answer] = field(default_factory=list)
    waiting: int = 0
    errors: list[str] = field(default_factory=list)
    status: int = 0  # 0 all answered, 1 the server stayed away, 2 refused


def send(client: PotabilityClient, readings: dict[int, Reading]) -> Run:
    """Send the file's readings (through the outbox when the client has one) and collect what came back."""
    run = Run({r.reading_id: line for line, r in readings.items()})
    try:
        if client.outbox is None:
            run.answers = client.predict(readings.values())
            return run
        client.enqueue(readings.values())
        delivery = client.flush()
    except ClientError as exc:
        run.answers, run.status = exc.answers, 2 if isinstance(exc, Refused) else 1
        reading = getattr(exc, "reading", None)
        run.errors.append(
            f"line {run.line_of.get(reading.reading_id, '?')}: {exc}" if reading else str(exc)
        )
        return run
    run.answers, run.waiting = delivery.answers, delivery.pending
    for reading, reason in delivery.rejected:
        run.errors.append(f"line {run.line_of.get(reading.reading_id, '?')}: refused: {reason}")
    if delivery.error:
        run.errors.append(f"not answered yet: {delivery.error}")
    run.status = 2 if delivery.rejected else 1 if run.waiting else 0
    return run
