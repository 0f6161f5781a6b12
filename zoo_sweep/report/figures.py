"""The report's figures, one function per panel: each draws from the rows and tables it is given and
saves a PNG (shared matplotlib habits in plots.py; the concentration panel in plots_ck.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from zoo_sweep.report.plots import ci_yerr, decorate, save, subplots
from zoo_sweep.report.tables import CATEGORIES, PROPERTIES
from zoo_sweep.science import stats

FAMILY_COLORS = {"cnn": "C0", "transformer": "C1", "mlp": "C2"}
_GAP_LABEL = "accuracy gap: acc(teacher) − acc(student) [points]"
_DELTA_LABEL = "transfer delta Δ_transf [points]"


def plot_ck_vs_gap(pairs, models, path) -> Path:
    fam = models.set_index("name")["family"] if len(models) else pd.Series(dtype=str)
    fig, ax = subplots(figsize=(7, 4.8))
    sf = pairs["student"].map(fam).fillna("unknown")
    for f, g in pairs.groupby(sf, sort=True):
        ax.scatter(g["acc_gap"], g["rho_pos"], s=18, alpha=0.75, color=FAMILY_COLORS.get(f, "C7"),
                   label=f"student: {f}")
    env = _min_envelope(pairs["acc_gap"].to_numpy(float), pairs["rho_pos"].to_numpy(float))
    ax.plot(env[0], env[1], color="C3", lw=1.6, label="minimum envelope")
    ax.axvline(0, color="k", lw=0.6, ls=":")
    ax.set_ylim(bottom=0)
    decorate(ax, _GAP_LABEL, "positive flips ρ_pos [% of eval set]", "Complementary knowledge of every ordered pair",
             {"loc": "upper left"})
    return save(fig, path)


def plot_delta_vs_gap(tp, binned, colors, path) -> Path:
    """Delta against the accuracy gap; beside it delta over the first control with results (labels first)."""
    over = next((c for c in tp.columns if c.startswith("delta_over_") and tp[c].notna().any()), None)
    panels = [("delta", _DELTA_LABEL, "Transfer delta against teacher strength")]
    if over:
        name = over.removeprefix("delta_over_")
        panels.append((over, f"Δ over the {name} control [points]", f"Δ over the {name} control (its run: the 0 line)"))
    fig, axes = subplots(2) if over else subplots(figsize=(7, 4.8))
    for ax, (col, ylabel, title) in zip(np.atleast_1d(axes), panels):
        for method, g in tp.groupby("method", sort=True):
            c = colors.get(method, "C7")
            ax.scatter(g["acc_gap"], g[col], s=14, alpha=0.35, color=c)
            b = binned[binned["method"] == method]
            if len(b):
                ax.errorbar(b["gap_mid"], b[f"mean_{col}"], yerr=ci_yerr(b, f"mean_{col}"), color=c, marker="o",
                            lw=1.8, capsize=4, label=f"{method} (binned mean, 95 % CI)")
        ax.axhline(0, color="k", lw=0.8)
        decorate(ax, _GAP_LABEL, ylabel, title, {})
    return save(fig, path)


def plot_over_control_by_epoch(by_epoch, colors, path) -> Path:
    """Per control (one panel each): every method's mean delta over it against epoch, with 95 % bands; the
    control is the 0 line (``tables.over_control_by_epoch``)."""
    names = list(dict.fromkeys(by_epoch["control"]))
    fig, axes = subplots(len(names), figsize=(6.5 * len(names), 4.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, g in by_epoch[by_epoch["control"] == name].groupby("method", sort=True):
            c = colors.get(method, "C7")
            g = g.sort_values("epoch")
            ax.errorbar(g["epoch"], g["delta_over"], yerr=ci_yerr(g, "delta_over"), marker="o", color=c, lw=1.8,
                        capsize=4, label=f"{method} (95 % CI)")
        ax.axhline(0, color="k", lw=1.0, label=f"{name} control")
        epochs = sorted(by_epoch["epoch"].unique())
        if len(epochs) <= 12:  # a tick per epoch; more would crowd the axis
            ax.set_xticks(epochs)
        else:
            ax.xaxis.get_major_locator().set_params(integer=True)
        decorate(ax, "epoch", f"Δ over the {name} control [points]", f"Gain over the {name} control by epoch", {})
    return save(fig, path)


def plot_gain_loss(tp, summary, colors, path) -> Path:
    fig, (a1, a2) = subplots(2)
    x = np.arange(len(summary))
    for off, col, lab, hatch in ((-0.2, "mean_gain", "knowledge gain", ""), (0.2, "mean_loss", "knowledge loss", "//")):
        a1.bar(x + off, summary[col].astype(float), 0.4, yerr=ci_yerr(summary, col), capsize=4, label=lab, hatch=hatch,
               color=[colors.get(m, "C7") for m in summary["method"]], alpha=0.85 if not hatch else 0.45,
               edgecolor="k")
    a1.set_xticks(x, summary["method"])
    decorate(a1, None, "% of eval set (mean over pairs, 95 % CI)", "What transfer gains and what it forgets", {})
    hi = 0.0
    for method, g in tp.groupby("method", sort=True):
        a2.scatter(g["knowledge_gain"], g["knowledge_loss"], s=16, alpha=0.7, color=colors.get(method, "C7"),
                   label=method)
        hi = max(hi, float(np.nanmax(g[["knowledge_gain", "knowledge_loss"]].to_numpy(float))))
    a2.plot([0, hi * 1.05 or 1], [0, hi * 1.05 or 1], color="k", lw=0.8, ls="--", label="gain = loss (Δ = 0)")
    decorate(a2, "knowledge gain [% of eval set]", "knowledge loss [% of eval set]", "Per pair: gain against loss", {})
    return save(fig, path)


def plot_success(tp, fam, colors, path) -> Path:
    fig, (a1, a2) = subplots(2)
    methods = sorted(tp["method"].unique())
    rates = [list(stats.per_student_rates(g["student"], g["delta"]).values())
             for _, g in tp.groupby("method", sort=True)]
    bp = a1.boxplot(rates, tick_labels=methods, patch_artist=True, showfliers=False)
    rng = np.random.default_rng(0)
    for i, (m, r) in enumerate(zip(methods, rates)):
        bp["boxes"][i].set_facecolor(colors.get(m, "C7"))
        bp["boxes"][i].set_alpha(0.4)
        a1.scatter(i + 1 + rng.uniform(-0.12, 0.12, len(r)), r, s=16, color=colors.get(m, "C7"), zorder=3)
    a1.set_ylim(-5, 105)
    decorate(a1, None, "per-student success rate [% of its teachers]",
             "Transfer success per student (cf. paper Fig. 4a)")
    fams = sorted(fam["student_family"].unique())
    w = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        g = fam[fam["method"] == m].set_index("student_family").reindex(fams)
        a2.bar(np.arange(len(fams)) + (j - (len(methods) - 1) / 2) * w, g["success"].astype(float).fillna(0), w,
               yerr=ci_yerr(g, "success"), capsize=3, color=colors.get(m, "C7"), alpha=0.8, label=m)
    a2.set_xticks(np.arange(len(fams)), fams)
    a2.set_ylim(0, 105)
    decorate(a2, None, "pairs with Δ > 0 [%] (95 % CI)", "Success rate by student family", {})
    return save(fig, path)


FAMILY = {side: CATEGORIES[f"{side} family"] for side in ("student", "teacher")}


def plot_properties(tp, colors, path) -> Path:
    """Δ against each side's size, family and accuracy: the students' row, then the teachers'."""
    import matplotlib.pyplot as plt

    fig, grid = plt.subplots(2, 3, figsize=(13, 8.2), sharey=True)
    methods = sorted(tp["method"].unique())
    for axes, side in zip(grid, ("student", "teacher")):
        fams = sorted(FAMILY[side](tp).unique())
        for j, (method, g) in enumerate(tp.groupby("method", sort=True)):
            c = colors.get(method, "C7")
            for ax, name in ((axes[0], f"log10 {side} params"), (axes[2], f"{side} accuracy")):
                x = PROPERTIES[name](g)
                r = stats.spearman(x, g["delta"])
                ax.scatter(x, g["delta"], s=16, alpha=0.7, color=c, label=f"{method}: ρ = {r:.2f}")
            xf = FAMILY[side](g).map({f: i for i, f in enumerate(fams)}).astype(float)
            off = (j - (len(methods) - 1) / 2) * 0.8 / max(1, len(methods))
            axes[1].scatter(xf + off + np.random.default_rng(j).uniform(-0.05, 0.05, len(g)), g["delta"], s=16,
                            alpha=0.7, color=c, label=method)
        axes[1].set_xticks(range(len(fams)), fams)
        axes[0].set_ylabel(_DELTA_LABEL)
        for ax, xlabel in zip(axes, (f"{side} size: log10(parameters)", f"{side} family", f"{side} accuracy [%]")):
            ax.axhline(0, color="k", lw=0.8)
            decorate(ax, xlabel, legend={"fontsize": 7})
    fig.suptitle("Which students gain, and from which teachers?")
    return save(fig, path)


def plot_multi(mt, colors, path) -> Path:
    mt = mt.reset_index(drop=True)
    fig, ax = subplots(figsize=(8, 1.2 + 0.45 * len(mt)))
    y = np.arange(len(mt))
    for i, r in mt.iterrows():
        c = colors.get(r["method"], "C7")
        singles = r["single_deltas"]
        if len(singles):
            ax.scatter(singles, [i] * len(singles), s=18, color="0.55", zorder=2)
            ax.plot([max(singles)], [i], "|", color="k", ms=14, mew=2)
        ax.scatter([r["delta"]], [i], s=70, color=c, edgecolor="k", zorder=3)
    ax.scatter([], [], s=70, color="w", edgecolor="k", label="multi-teacher delta (colour: method)")
    ax.scatter([], [], s=18, color="0.55", label="one of its teachers alone")
    ax.plot([], [], "|", color="k", ms=14, mew=2, label="best single teacher")
    ax.set_yticks(y, [f"{r.method}: {r.student} ← {r.teachers}" for r in mt.itertuples()], fontsize=8)
    ax.axvline(0, color="k", lw=0.6, ls=":")
    decorate(ax, _DELTA_LABEL, None, "Multi-teacher against the best single teacher", {"loc": "lower right"})
    return save(fig, path)


def plot_predicted(held, colors, path) -> Path:
    fig, ax = subplots(figsize=(6.5, 4.8))
    lo, hi = np.inf, -np.inf
    for h in held:
        if len(h.predictions) == 0:
            continue
        p = h.predictions
        ax.scatter(p["predicted_delta"], p["delta"], s=12, alpha=0.4, color=colors.get(h.method, "C7"),
                   label=f"{h.method}: held-out Spearman {h.spearman:.2f}")
        lo = min(lo, p["predicted_delta"].min(), p["delta"].min())
        hi = max(hi, p["predicted_delta"].max(), p["delta"].max())
    ax.plot([lo, hi], [lo, hi], color="k", lw=0.8, ls="--", label="predicted = measured")
    decorate(ax, "predicted delta [points]", "measured delta [points]", "predicted_gain on pairs held out of the fit",
             {})
    return save(fig, path)


def _min_envelope(x: np.ndarray, y: np.ndarray, bins: int = 12):
    """Lowest rho_pos per accuracy-gap bin: even the worst pair holds at least this much."""
    if len(x) == 0:
        return np.array([]), np.array([])
    edges = np.linspace(x.min(), x.max() + 1e-9, bins + 1)
    idx = np.digitize(x, edges) - 1
    cx, cy = [], []
    for b in range(bins):
        sel = idx == b
        if sel.any():
            cx.append(x[sel][np.argmin(y[sel])])
            cy.append(y[sel].min())
    return np.array(cx), np.array(cy)
