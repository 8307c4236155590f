"""The EDA report: the verdict on new lab rows, and a page that stands on its own."""

import json

import pandas as pd

from potability.config import load_params
from potability.pipeline.stages.eda import report
from potability.synth import generate
from tests.support.project import REPO


def stamped(frame: pd.DataFrame, start: str) -> pd.DataFrame:
    times = pd.date_range(start, periods=len(frame), freq="min", tz="UTC")
    return frame.assign(added_at=times.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))


def run_report(tmp_path, frame):
    samples = tmp_path / "samples.csv"
    frame.to_csv(samples, index=False)
    params = load_params(REPO / "params.yaml")
    verdict = report(
        samples, tmp_path / "eda.html", tmp_path / "eda.json", tmp_path / "balance.csv", params
    )
    return verdict, (tmp_path / "eda.html").read_text()


def test_rows_like_the_old_ones_need_no_recipe_change(tmp_path):
    frame = stamped(generate(2000, seed=3), "2026-01-01")
    verdict, page = run_report(tmp_path, frame)
    assert verdict["newest_rows"] == 200 and not verdict["recipe_change_advised"], verdict[
        "reasons"
    ]
    assert "No: the newest rows look like the training rows" in page
    assert page.count("data:image/png;base64,") == 3 and "<script" not in page  # self-contained
    assert json.loads((tmp_path / "eda.json").read_text()) == verdict
    assert len(pd.read_csv(tmp_path / "balance.csv")) == 10


def test_shifted_newest_rows_ask_for_a_recipe_change(tmp_path):
    old = stamped(generate(1800, seed=3), "2026-01-01")
    new = generate(200, seed=4)
    new["ph"] = new["ph"] + 2.0  # a recalibrated probe
    new["Potability"] = 1  # and a lab that only sends potable samples
    new["sample_id"] = "new-" + new["sample_id"].astype(str)
    verdict, page = run_report(tmp_path, pd.concat([old, stamped(new, "2026-06-01")]))
    assert verdict["recipe_change_advised"]
    assert any(r.startswith("ph: PSI") for r in verdict["reasons"])
    assert any("potable share of the newest rows 1.000" in r for r in verdict["reasons"])
    assert "Yes, review the recipe" in page
