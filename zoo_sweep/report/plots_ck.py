"""Report panel: how concentrated over classes is the complementary knowledge of each pair?

A plain function over the pairs table (``zoo-sweep query "select * from pairs"`` or the store's pairs
frame), so any report can call it:

    from zoo_sweep.report.plots_ck import plot_concentration
    plot_concentration(pairs_df, num_classes=1000, path="concentration.png")

Left: entropy of each pair's per-class positive flips against ρ_pos, with the uniform reference ln K
(hexagonal bins above a few thousand pairs, so 1.6 million pairs plot in seconds). Right: the number of
classes that hold p % of the positive flips (p = 2, 5, 20, 50) as box plots, with the uniform reference
ceil(p/100 * K). Definitions: docs/methods.md. ``concentration_data`` gives the rows drawn and
``concentration_figure`` the figure without writing it (e.g. to show it in a notebook).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_sweep.report.plots import decorate, save, subplots
from zoo_sweep.science.pair_metrics import TOP_P

HEXBIN_ABOVE = 5000  # pairs; a scatter of more points is slow and unreadable


def concentration_data(pairs_df: pd.DataFrame) -> pd.DataFrame:
    """The pairs the panel draws: those with positive flips and per-class metrics (a compare run with the
    "classes" group left out has none), as numbers: rho_pos, flip_entropy, top{p}_classes."""
    cols = ["rho_pos", "flip_entropy"] + [f"top{p}_classes" for p in TOP_P]
    df = pairs_df[[c for c in cols if c in pairs_df.columns]].copy() if len(pairs_df) else pd.DataFrame(columns=cols)
    for c in cols:
        if c not in df.columns:
            df[c] = np.nan
    df = df.apply(pd.to_numeric, errors="coerce")
    return df[(df["rho_pos"] > 0) & df["flip_entropy"].notna()]


def concentration_figure(pairs_df: pd.DataFrame, num_classes: int | None):
    """The two-panel figure of ``plot_concentration``, not written anywhere; an empty table still gives a
    figure that says so."""
    df = concentration_data(pairs_df)
    k = int(num_classes) if num_classes else None
    fig, (a1, a2) = subplots(2)
    if df.empty:
        for ax in (a1, a2):
            ax.text(0.5, 0.5, "no pairs with per-class flip counts", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
        return fig
    x, y = df["rho_pos"].to_numpy(float), df["flip_entropy"].to_numpy(float)
    if len(df) > HEXBIN_ABOVE:
        hb = a1.hexbin(x, y, gridsize=60, bins="log", mincnt=1, cmap="viridis")
        fig.colorbar(hb, ax=a1, label="pairs")
    else:
        a1.scatter(x, y, s=14, alpha=0.6)
    if k and k > 1:
        a1.axhline(math.log(k), color="C3", lw=1.2, ls="--", label=f"uniform over K = {k}: ln K = {math.log(k):.2f}")
    decorate(a1, "positive flips ρ_pos [% of eval set]", "entropy of per-class positive flips [nats]",
             f"Spread over classes ({len(df):,} pairs)", {"loc": "lower right"} if k and k > 1 else None)

    data = [df[f"top{p}_classes"].dropna().to_numpy(float) for p in TOP_P]
    a2.boxplot(data, showfliers=len(df) <= HEXBIN_ABOVE)
    a2.set_xticks(range(1, len(TOP_P) + 1), [f"{p} %" for p in TOP_P])
    med = [float(np.median(d)) if len(d) else float("nan") for d in data]
    for i, m in enumerate(med, start=1):
        a2.annotate(f"{m:g}", (i, m), textcoords="offset points", xytext=(14, 0), fontsize=8, va="center")
    if k:
        a2.plot(range(1, len(TOP_P) + 1), [math.ceil(p / 100 * k) for p in TOP_P], "o--", color="C3", ms=5,
                label=f"uniform over K = {k} classes")
    if k and k > 50:
        a2.set_yscale("log")
    decorate(a2, "share p of a pair's positive flips", "classes holding p % (top-p % classes)",
             "How few classes hold the complementary knowledge?", {"loc": "upper left"} if k else None)
    return fig


def plot_concentration(pairs_df: pd.DataFrame, num_classes: int | None, path: str | Path) -> Path:
    """Write the two-panel PNG to ``path`` and return it. Pairs without flips (or without the per-class
    metrics, e.g. a compare run with the "classes" group left out) are skipped; an empty table still
    gives a figure that says so."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save(concentration_figure(pairs_df, num_classes), path)
