from pathlib import Path

import pytest

from potability.errors import ValidationError
from potability.importer import import_csv

HEADER = "ph,Hardness,Solids,Chloramines,Sulfate,Conductivity,Organic_carbon,Trihalomethanes,Turbidity,Potability\n"
GOOD = [
    ",204.89,20791.3,7.30,368.51,564.31,10.38,86.99,2.96,0",  # ph missing, as in the real file
    "3.72,129.42,18630.1,6.64,,592.89,15.18,56.33,4.50,0",
    "8.10,224.24,19909.5,9.28,,418.61,16.87,66.42,3.06,1",
]


def write(tmp_path: Path, lines: list[str], name="water.csv") -> Path:
    path = tmp_path / name
    path.write_text(HEADER + "\n".join(lines) + "\n")
    return path


def test_real_format_imports_once(mart, tmp_path):
    path = write(tmp_path, GOOD)
    first = import_csv(path, mart, added_by="t")
    assert (first.inserted, first.skipped, first.rejected) == (3, 0, [])
    second = import_csv(path, mart, added_by="t")
    assert (second.inserted, second.skipped) == (0, 3)
    assert mart.sample_count() == 3


def test_identical_rows_at_other_positions_are_distinct_samples(mart, tmp_path):
    report = import_csv(write(tmp_path, [GOOD[0], GOOD[0]]), mart, added_by="t")
    assert report.inserted == 2


def test_a_reordered_or_appended_copy_adds_nothing_already_stored(mart, tmp_path):
    rows = [
        GOOD[0],
        GOOD[1],
        GOOD[2],
        GOOD[0],
    ]  # the last is an exact duplicate: a sample of its own
    assert import_csv(write(tmp_path, rows), mart, added_by="t").inserted == 4
    ids = set(mart.samples()["sample_id"])
    reordered = import_csv(write(tmp_path, rows[::-1], "reordered.csv"), mart, added_by="t")
    assert (reordered.inserted, reordered.skipped) == (0, 4)
    extra = "7.5,200,20000,7,300,400,14,60,4,1"
    appended = import_csv(write(tmp_path, [extra, *rows], "appended.csv"), mart, added_by="t")
    assert (appended.inserted, appended.skipped) == (1, 4)
    assert ids < set(mart.samples()["sample_id"]) and mart.sample_count() == 5


def test_bad_rows_are_rejected_with_line_and_reason_good_rows_still_go_in(mart, tmp_path):
    lines = [
        GOOD[0],
        "abc,1,2,3,4,5,6,7,8,1",  # line 3: non-numeric ph
        "15.5,200,20000,7,300,400,14,60,4,0",  # line 4: ph out of range
        "7,200,20000,7,300,400,14,60,4,",  # line 5: no verdict
        "7,200,20000,7,300,400,14,60,4,2",  # line 6: verdict not 0/1
        "7,200,20000,7,300,400",  # line 7: short row
        GOOD[1],
    ]
    report = import_csv(write(tmp_path, lines), mart, added_by="t")
    assert report.inserted == 2
    reasons = {r.line: r.reason for r in report.rejected}
    assert set(reasons) == {3, 4, 5, 6, 7}
    assert reasons[3].startswith("ph:") and "number" in reasons[3]
    assert reasons[4].startswith("ph:") and "outside" in reasons[4]
    assert reasons[5].startswith("Potability:")
    assert "fields" in reasons[7]
    assert "rejected 5" in report.summary()


def test_sample_id_column_is_used_and_conflicts_are_rejected(mart, tmp_path):
    path = tmp_path / "ids.csv"
    path.write_text("sample_id," + HEADER + "lab-1," + GOOD[0] + "\n")
    assert import_csv(path, mart, added_by="t").inserted == 1
    path.write_text("sample_id," + HEADER + "lab-1," + GOOD[1] + "\n")
    report = import_csv(path, mart, added_by="t")
    assert (
        report.inserted == 0
        and report.rejected[0].line == 2
        and "lab-1" in report.rejected[0].reason
    )


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("ph,Hardness\n", "missing column"),
        (HEADER.strip() + ",Colour\n", "unknown column"),
        ("", "empty"),
    ],
)
def test_wrong_header_is_refused_naming_the_column(mart, tmp_path, header, message):
    path = tmp_path / "bad.csv"
    path.write_text(header)
    with pytest.raises(ValidationError, match=message):
        import_csv(path, mart, added_by="t")
