"""The quality page's charts: inline SVG a browser draws, that shows every sensor and every feature,
stays small at a week of hourly points, and never lets a sensor's name into the markup."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from potability.serve import charts

SVG = "{http://www.w3.org/2000/svg}"


def week_of_hours(sensors: int, start: datetime) -> list[dict]:
    return [
        {
            "hour": (start + timedelta(hours=h)).isoformat(),
            "sensor_id": f"plant-{s}",
            "answers": 100 + 7 * h + s,
            "potable_share": 0.4,
        }
        for h in range(7 * 24)
        for s in range(sensors)
    ]


def test_one_line_per_sensor_through_every_hour_and_under_the_axis_top():
    start = datetime(2026, 11, 20, tzinfo=UTC)
    hourly = week_of_hours(3, start)
    svg = ET.fromstring(charts.answers_per_hour(hourly))
    lines = svg.findall(f"{SVG}polyline")
    assert sorted(line.find(f"{SVG}title").text for line in lines) == [
        "plant-0",
        "plant-1",
        "plant-2",
    ]
    plot = svg.find(f"{SVG}rect")
    top, bottom = float(plot.get("y")), float(plot.get("y")) + float(plot.get("height"))
    left, right = float(plot.get("x")), float(plot.get("x")) + float(plot.get("width"))
    for line in lines:
        points = [tuple(map(float, p.split(","))) for p in line.get("points").split()]
        assert len(points) == 7 * 24
        xs = [x for x, _ in points]
        # in time order, inside the frame
        assert xs == sorted(xs) and left < xs[0] and xs[-1] < right
        assert all(top <= y <= bottom for _, y in points)
    # the busiest hour (the last) is drawn highest, and the y axis labels reach above it
    labels = [
        float(t.text.replace(",", ""))
        for t in svg.iter(f"{SVG}text")
        if t.get("text-anchor") == "end"
    ]
    assert max(labels) >= max(row["answers"] for row in hourly)


def test_a_sensor_name_is_text_never_markup():
    hourly = [
        {
            "hour": "2026-11-20T10:00:00+00:00",
            "sensor_id": '<script>alert("x")</script>',
            "answers": 5,
            "potable_share": 0.0,
        }
    ]
    markup = charts.answers_per_hour(hourly)
    assert "<script>" not in markup
    texts = [t.text for t in ET.fromstring(markup).iter() if t.text]
    assert '<script>alert("x")</script>' in texts  # shown as the name it is


def test_a_week_of_twenty_sensors_is_small_and_quick():
    hourly = week_of_hours(20, datetime(2026, 11, 20, tzinfo=UTC))
    started = time.perf_counter()
    markup = charts.answers_per_hour(hourly)
    took = time.perf_counter() - started
    assert len(markup) < 100_000  # matplotlib wrote ~500 kB for this: every page load carried it
    assert took < 0.5, f"{took:.2f} s"  # matplotlib: 0.36-0.95 s on the renderer, each refresh
    svg = ET.fromstring(markup)
    assert len(svg.findall(f"{SVG}polyline")) == 20
    assert "more sensors" not in markup  # 20 sensors: all in the legend


def test_legend_says_how_many_sensors_it_leaves_out():
    hourly = week_of_hours(charts.LEGEND_MAX + 5, datetime(2026, 11, 20, tzinfo=UTC))[
        : charts.LEGEND_MAX + 5
    ]
    svg = ET.fromstring(charts.answers_per_hour(hourly))
    assert len(svg.findall(f"{SVG}polyline")) == charts.LEGEND_MAX + 5  # every sensor is drawn
    assert any(t.text == "+ 5 more sensors" for t in svg.iter(f"{SVG}text"))


def test_drift_bars_flag_in_red_and_scale_to_the_largest():
    features = [
        {"feature": "ph", "psi": 0.05, "flagged": False},
        {"feature": "Sulfate", "psi": 0.8, "flagged": True},
    ]
    svg = ET.fromstring(charts.drift_bars(features, 0.2))
    bars = svg.findall(f"{SVG}rect")
    assert [b.find(f"{SVG}title").text for b in bars] == ["ph: PSI 0.0500", "Sulfate: PSI 0.8000"]
    assert bars[0].get("fill") == charts.UNFLAGGED and bars[1].get("fill") == charts.FLAGGED
    assert float(bars[1].get("width")) > 10 * float(bars[0].get("width"))
    rule = svg.find(f"{SVG}line[@stroke-dasharray]")
    rule_x = float(rule.get("x1"))
    # 0.05 left of the 0.2 rule
    assert float(bars[0].get("x")) + float(bars[0].get("width")) < rule_x
    assert rule_x < float(bars[1].get("x")) + float(bars[1].get("width"))  # 0.8 right of it


def test_no_rows_no_chart():
    assert charts.answers_per_hour([]) is None
    assert charts.drift_bars([], 0.2) is None
