"""Server-side charts as inline SVG (matplotlib, no JavaScript, no CDN: works offline)."""

from __future__ import annotations

import io
from typing import Any


def _svg(fig) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # drop the XML prolog: the SVG is inlined in HTML


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=96)
    fig.set_layout_engine("constrained")
    return fig, fig.add_subplot()


def answers_per_hour(hourly: list[dict[str, Any]]) -> str | None:
    if not hourly:
        return None
    import pandas as pd

    frame = pd.DataFrame(hourly)
    frame["hour"] = pd.to_datetime(frame["hour"])
    fig, ax = _figure(7, 2.6)
    for sensor, group in frame.groupby("sensor_id"):
        ax.plot(group["hour"], group["answers"], marker=".", linewidth=1, label=str(sensor))
    import matplotlib.dates as mdates

    hour = pd.Timedelta(hours=1)
    ax.set_xlim(frame["hour"].min() - hour, frame["hour"].max() + hour)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    ax.set_ylabel("answers per hour")
    ax.legend(fontsize=7, loc="upper left", ncols=3)
    ax.tick_params(axis="x", labelsize=7, rotation=20)
    return _svg(fig)


def drift_bars(features: list[dict[str, Any]], threshold: float) -> str | None:
    if not features:
        return None
    fig, ax = _figure(7, 2.6)
    names = [f["feature"] for f in features]
    values = [f["psi"] for f in features]
    colours = ["#c0392b" if f["flagged"] else "#2e86c1" for f in features]
    ax.barh(names, values, color=colours)
    ax.axvline(
        threshold, color="#555", linestyle="--", linewidth=1, label=f"flag at PSI {threshold:g}"
    )
    ax.set_xlabel("population stability index (live vs training)")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    return _svg(fig)
