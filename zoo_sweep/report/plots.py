"""The matplotlib habits every report panel shares: figure size, labels and small legends, error bars
from bootstrap intervals, and saving without leaking open figures."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def subplots(ncols: int = 1, figsize=(11, 4.3), **kw):
    """``plt.subplots(1, ncols)``; the default size is the reports' two-panel figure."""
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=figsize, **kw)


def decorate(ax, xlabel=None, ylabel=None, title=None, legend: dict | None = None) -> None:
    """Axis labels and title; ``legend``: keywords of a small legend (``{}``: the defaults), None: no legend."""
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend is not None:
        ax.legend(**{"fontsize": 8, **legend})


def ci_yerr(df: pd.DataFrame, col: str) -> list[pd.Series]:
    """Error-bar lengths below and above ``col`` from its ``<col>_lo`` / ``<col>_hi`` interval; 0 where the
    interval is unknown (a single pair has none) so the bar still draws."""
    est = df[col].astype(float)
    return [(est - df[f"{col}_lo"].astype(float)).fillna(0), (df[f"{col}_hi"].astype(float) - est).fillna(0)]


def save(fig, path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)  # pyplot keeps every open figure alive: a report draws many
    return Path(path)
