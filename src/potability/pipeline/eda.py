"""The exploratory report on the exported lab rows: pure functions from frames to numbers and HTML.

It answers one question when new lab rows arrive: should the training recipe
change? It compares the newest rows (by ``added_at``) with the training
profile (PSI per feature, missing shares, the potable share with its 95 %
interval) and shows what the recipe rests on: per-class distributions,
missingness, correlations, and the label balance over time.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np
import pandas as pd

from potability.intervals import wilson
from potability.quality import drift, reference_profile
from potability.schema import FEATURE_NAMES, LABEL


def newest_rows(frame: pd.DataFrame, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(older rows, the ``count`` newest rows by ``added_at``; ties broken by sample_id)."""
    ordered = frame.sort_values(["added_at", "sample_id"], kind="mergesort")
    count = min(count, len(ordered) // 2)  # never compare a handful of old rows with everything
    return ordered.iloc[: len(ordered) - count], ordered.iloc[len(ordered) - count :]


def label_balance(frame: pd.DataFrame, buckets: int) -> pd.DataFrame:
    """The potable share (with 95 % interval) in ``buckets`` equal-count slices of rows by ``added_at``."""
    ordered = frame.sort_values(["added_at", "sample_id"], kind="mergesort").reset_index(drop=True)
    rows = []
    for i, part in enumerate(np.array_split(ordered.index.to_numpy(), buckets)):
        if not len(part):
            continue
        chunk = ordered.loc[part]
        potable = int(chunk[LABEL].sum())
        low, high = wilson(potable, len(chunk))
        rows.append(
            {
                "slice": i + 1,
                "first_added": chunk["added_at"].iloc[0],
                "rows": len(chunk),
                "potable_share": round(potable / len(chunk), 4),
                "low": round(low, 4),
                "high": round(high, 4),
            }
        )
    return pd.DataFrame(rows)


def per_class(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and missing share of each feature, per class."""
    rows = []
    for name in FEATURE_NAMES:
        row: dict[str, Any] = {"feature": name}
        for label, part in frame.groupby(LABEL):
            values = part[name]
            tag = "potable" if label == 1 else "not_potable"
            row[f"{tag}_mean"] = round(float(values.mean()), 3)
            row[f"{tag}_std"] = round(float(values.std()), 3)
            row[f"{tag}_missing"] = round(float(values.isna().mean()), 4)
        rows.append(row)
    return pd.DataFrame(rows)


def assess(
    train: pd.DataFrame, newest: pd.DataFrame, *, bins: int, psi_threshold: float
) -> dict[str, Any]:
    """Should the recipe change? Drift of the newest rows against the training profile, and why."""
    shift = drift(reference_profile(train, bins), newest, psi_threshold, min_rows=1)
    train_share = float(train[LABEL].mean()) if len(train) else float("nan")
    potable = int(newest[LABEL].sum())
    low, high = wilson(potable, len(newest))
    reasons = [
        f"{f['feature']}: PSI {f['psi']:.3f} > {psi_threshold}"
        for f in shift["features"]
        if f["flagged"]
    ]
    if len(newest) and not low <= train_share <= high:
        reasons.append(
            f"potable share of the newest rows {potable / len(newest):.3f} (95 % CI {low:.3f}-{high:.3f}) "
            f"excludes the training share {train_share:.3f}"
        )
    return {
        "newest_rows": int(len(newest)),
        "train_rows": int(len(train)),
        "train_potable_share": round(train_share, 4),
        "newest_potable_share": round(potable / len(newest), 4) if len(newest) else None,
        "newest_potable_share_ci": [round(low, 4), round(high, 4)],
        "max_psi": max((f["psi"] for f in shift["features"]), default=0.0),
        "psi": {f["feature"]: f["psi"] for f in shift["features"]},
        "recipe_change_advised": bool(reasons),
        "reasons": reasons,
    }


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=72)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def figures(frame: pd.DataFrame, balance: pd.DataFrame) -> dict[str, str]:
    """Base64 PNGs: per-class histograms, the correlation matrix, the label balance over time."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out = {}
    fig = Figure(figsize=(12, 8))
    for ax, name in zip(fig.subplots(3, 3).ravel(), FEATURE_NAMES, strict=True):
        for label, colour in ((0, "tab:red"), (1, "tab:blue")):
            values = frame.loc[frame[LABEL] == label, name].dropna()
            ax.hist(
                values,
                bins=30,
                density=True,
                alpha=0.5,
                color=colour,
                label="potable" if label else "not potable",
            )
        ax.set_title(name, fontsize=9)
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    out["distributions"] = _png(fig)

    corr = frame[[*FEATURE_NAMES, LABEL]].corr().to_numpy()
    fig = Figure(figsize=(6, 5))
    ax = fig.subplots()
    image = ax.imshow(corr, cmap="coolwarm", vmin=-1, vmax=1)
    labels = [*FEATURE_NAMES, LABEL]
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    fig.colorbar(image)
    fig.tight_layout()
    out["correlations"] = _png(fig)

    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    ax.errorbar(
        balance["slice"],
        balance["potable_share"],
        yerr=[
            balance["potable_share"] - balance["low"],
            balance["high"] - balance["potable_share"],
        ],
        fmt="o-",
    )
    ax.set(xlabel="slice of rows by added_at (oldest first)", ylabel="potable share", ylim=(0, 1))
    fig.tight_layout()
    out["balance"] = _png(fig)
    return out


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(index=False, border=0, classes="t", na_rep="—")


def render(
    frame: pd.DataFrame,
    verdict: dict[str, Any],
    balance: pd.DataFrame,
    classes: pd.DataFrame,
    images: dict[str, str],
) -> str:
    """One self-contained HTML page (inline CSS and PNGs): open it anywhere, no server needed."""
    missing = pd.DataFrame(
        {
            "feature": list(FEATURE_NAMES),
            "missing_share": [round(float(frame[n].isna().mean()), 4) for n in FEATURE_NAMES],
        }
    )
    psi = pd.DataFrame(
        {"feature": list(verdict["psi"]), "psi_newest_vs_train": list(verdict["psi"].values())}
    )
    answer = (
        "Yes, review the recipe: " + "; ".join(html.escape(r) for r in verdict["reasons"])
        if verdict["recipe_change_advised"]
        else "No: the newest rows look like the training rows (no feature past the PSI threshold, "
        "potable share within its interval)."
    )
    img = '<img alt="{0}" src="data:image/png;base64,{1}">'
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>potability: exploratory report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
table.t{{border-collapse:collapse;font-size:13px}} table.t td,table.t th{{padding:2px 8px;border-bottom:1px solid #ddd}}
.verdict{{padding:1em;background:#f4f4f4;border-left:4px solid #369}}</style></head><body>
<h1>Exploratory report on the exported lab rows</h1>
<p>{len(frame)} rows, {int(frame[LABEL].sum())} potable ({frame[LABEL].mean():.1%}).
Newest {verdict["newest_rows"]} rows (by <code>added_at</code>) against the {verdict["train_rows"]} rows before them.</p>
<h2>Should the training recipe change?</h2><p class="verdict">{answer}</p>
<p>Potable share: training {verdict["train_potable_share"]:.3f}; newest {verdict["newest_potable_share"]}
(95 % CI {verdict["newest_potable_share_ci"][0]:.3f}-{verdict["newest_potable_share_ci"][1]:.3f}).</p>
{_table(psi)}
<h2>Label balance over time</h2>{img.format("label balance", images["balance"])}{_table(balance)}
<h2>Per-class distributions</h2>{img.format("distributions", images["distributions"])}{_table(classes)}
<h2>Missingness</h2>{_table(missing)}
<h2>Correlations</h2>{img.format("correlations", images["correlations"])}
</body></html>
"""
