"""Server-side charts as inline SVG written out directly (no JavaScript, no CDN: works offline).

They were matplotlib figures. At a week of 20 sensors (3,360 hourly points) that took the
renderer 360-950 ms a refresh, on the cores the sensors use, and wrote a ~500 kB SVG (one
marker path per point) into every page load. A polyline per sensor is the same picture in a
few milliseconds and a tenth of the bytes. Every text is escaped: sensor ids are token names.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from html import escape
from typing import Any

WIDTH = 672  # px: the page's content width
PLOT_HEIGHT = 170
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 64, 16, 12, 48
FONT = 'font-family="sans-serif" font-size="11"'
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
LEGEND_COLUMNS, LEGEND_ROW, LEGEND_MAX = 4, 16, 24  # more sensors than shown: "+ N more"
TICKS = 5
HOUR_STEPS = (1, 2, 3, 6, 12, 24, 48, 96, 168, 336, 720)  # x ticks land on whole hours
BAR_HEIGHT, BAR_GAP, NAME_WIDTH = 16, 6, 120
FLAGGED, UNFLAGGED, RULE = "#c0392b", "#2e86c1", "#555"


def _nice_ticks(high: float, count: int = TICKS) -> list[float]:
    """0, step, 2 step, ... up to at least ``high``, the step 1, 2 or 5 times a power of ten."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return [i * step for i in range(math.ceil(high / step - 1e-9) + 1)]


def _number(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 or value == int(value) else f"{value:g}"


def _svg(width: int, height: int, label: str, body: list[str]) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" '  # page.css lets a phone shrink it whole
        f'aria-label="{escape(label)}"><title>{escape(label)}</title>' + "".join(body) + "</svg>"
    )


def _legend(names: list[str], top: float) -> tuple[list[str], float]:
    """Colour keys under the plot, ``LEGEND_COLUMNS`` a row; (elements, height taken)."""
    shown = names[:LEGEND_MAX]
    column = (WIDTH - MARGIN_LEFT) / LEGEND_COLUMNS
    out = []
    for i, name in enumerate(shown):
        x = MARGIN_LEFT + (i % LEGEND_COLUMNS) * column
        y = top + (i // LEGEND_COLUMNS) * LEGEND_ROW
        out.append(
            f'<rect x="{x:.0f}" y="{y - 8:.0f}" width="12" height="3" fill="{PALETTE[i % len(PALETTE)]}"/>'
            f'<text x="{x + 16:.0f}" y="{y:.0f}" {FONT}>{escape(name)}</text>'
        )
    rows = math.ceil(len(shown) / LEGEND_COLUMNS)
    if len(names) > len(shown):
        out.append(
            f'<text x="{MARGIN_LEFT}" y="{top + rows * LEGEND_ROW:.0f}" {FONT}>'
            f"+ {len(names) - len(shown)} more sensors</text>"
        )
        rows += 1
    return out, rows * LEGEND_ROW


def answers_per_hour(hourly: list[dict[str, Any]]) -> str | None:
    """One line per sensor: its answers in each hour (``hourly``: the live panel's rows)."""
    if not hourly:
        return None
    series: dict[str, list[tuple[datetime, int]]] = {}
    for row in hourly:
        hour = datetime.fromisoformat(row["hour"])
        hour = hour if hour.tzinfo else hour.replace(tzinfo=UTC)
        series.setdefault(str(row["sensor_id"]), []).append((hour, int(row["answers"])))
    hours = [h for points in series.values() for h, _ in points]
    start, end = min(hours) - timedelta(hours=1), max(hours) + timedelta(hours=1)
    span = (end - start).total_seconds()
    y_ticks = _nice_ticks(max(n for points in series.values() for _, n in points))
    bottom, right = MARGIN_TOP + PLOT_HEIGHT, WIDTH - MARGIN_RIGHT

    def x_of(when: datetime) -> float:
        return MARGIN_LEFT + (when - start).total_seconds() / span * (right - MARGIN_LEFT)

    def y_of(value: float) -> float:
        return bottom - value / y_ticks[-1] * PLOT_HEIGHT

    body = [
        f'<rect x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{right - MARGIN_LEFT}" height="{PLOT_HEIGHT}" '
        'fill="none" stroke="#999"/>'
    ]
    for value in y_ticks:
        y = y_of(value)
        body.append(
            f'<line x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{MARGIN_LEFT - 4}" y="{y + 4:.1f}" text-anchor="end" {FONT}>{_number(value)}</text>'
        )
    step = next((s for s in HOUR_STEPS if span / 3600 / s <= TICKS + 1), HOUR_STEPS[-1])
    tick = start.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    tick += timedelta(hours=(-tick.hour) % step if step <= 24 else 0)
    while tick < end:
        x = x_of(tick)
        body.append(
            f'<line x1="{x:.1f}" y1="{bottom}" x2="{x:.1f}" y2="{bottom + 4}" stroke="#999"/>'
            f'<text x="{x:.1f}" y="{bottom + 16}" text-anchor="middle" {FONT}>'
            f"{tick.astimezone(UTC).strftime('%m-%d %H:%M')}</text>"
        )
        tick += timedelta(hours=step)
    body.append(
        f'<text transform="translate(14 {MARGIN_TOP + PLOT_HEIGHT / 2}) rotate(-90)" '
        f'text-anchor="middle" {FONT}>answers per hour (UTC)</text>'
    )
    names = sorted(series)
    for i, name in enumerate(names):
        points = " ".join(f"{x_of(h):.1f},{y_of(n):.1f}" for h, n in sorted(series[name]))
        body.append(
            f'<polyline fill="none" stroke="{PALETTE[i % len(PALETTE)]}" stroke-width="1.2" '
            f'points="{points}"><title>{escape(name)}</title></polyline>'
        )
    legend, legend_height = _legend(names, bottom + MARGIN_BOTTOM - 12)
    height = int(bottom + MARGIN_BOTTOM - 12 + legend_height)
    return _svg(WIDTH, height, f"answers per hour, {len(names)} sensors", [*body, *legend])


def drift_bars(features: list[dict[str, Any]], threshold: float) -> str | None:
    """A bar per feature: its population stability index, red when flagged, a rule at ``threshold``."""
    if not features:
        return None
    left, right = NAME_WIDTH, WIDTH - MARGIN_RIGHT
    x_ticks = _nice_ticks(max(threshold, *(float(f["psi"]) for f in features)))

    def x_of(value: float) -> float:
        return left + value / x_ticks[-1] * (right - left)

    bottom = MARGIN_TOP + len(features) * (BAR_HEIGHT + BAR_GAP)
    body = []
    for value in x_ticks:
        x = x_of(value)
        body.append(
            f'<line x1="{x:.1f}" y1="{MARGIN_TOP}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle" {FONT}>{value:g}</text>'
        )
    for i, feature in enumerate(features):
        y = MARGIN_TOP + i * (BAR_HEIGHT + BAR_GAP)
        psi = float(feature["psi"])
        colour = FLAGGED if feature["flagged"] else UNFLAGGED
        body.append(
            f'<text x="{left - 6}" y="{y + BAR_HEIGHT - 4}" text-anchor="end" {FONT}>{escape(str(feature["feature"]))}</text>'
            f'<rect x="{left}" y="{y}" width="{max(0.0, x_of(psi) - left):.1f}" height="{BAR_HEIGHT}" fill="{colour}">'
            f"<title>{escape(str(feature['feature']))}: PSI {psi:.4f}</title></rect>"
            f'<text x="{x_of(psi) + 4:.1f}" y="{y + BAR_HEIGHT - 4}" {FONT}>{psi:.3f}</text>'
        )
    x = x_of(threshold)
    body.append(
        f'<line x1="{x:.1f}" y1="{MARGIN_TOP - 4}" x2="{x:.1f}" y2="{bottom}" stroke="{RULE}" '
        f'stroke-dasharray="4 3"/><text x="{right}" y="{bottom + 30}" text-anchor="end" {FONT}>'
        f"population stability index (live vs training); dashed: flag at PSI {threshold:g}</text>"
    )
    return _svg(
        WIDTH,
        bottom + 40,
        f"drift: population stability index per feature, flag at {threshold:g}",
        body,
    )
