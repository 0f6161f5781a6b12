"""The report as Markdown (summary.md): findings, then each section's tables with the SQL behind them."""

from __future__ import annotations

import numpy as np
import pandas as pd

from zoo_sweep.report.parts import Panel, Report


def markdown(rep: Report) -> str:
    lines = [f"# Sweep {rep.sweep}", "", f"Eval set `{rep.eval_set}`, store `{rep.db_url}`.", "", "## Findings", ""]
    lines += [f"- {s}" for s in rep.findings]
    for heading, items in rep.sections:
        lines += ["", f"## {heading}", ""]
        for it in items:
            if isinstance(it, str):
                lines += [it, ""]
            elif isinstance(it, Panel):
                lines += [f"![{it.title}]({it.path.name})" if it.path else f"_{it.title}: {it.caption}_", ""]
            else:
                lines += [f"### {it.title}", "", _md(it.view), ""]
                if it.note:
                    lines += [f"_{it.note}_", ""]
                lines += ["```", *[rep.sql_command(k) for k in it.sql], "```", ""]
    return "\n".join(lines) + "\n"


def _md(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(none yet)_"
    head = "| " + " | ".join(df.columns) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if np.isnan(v) else f"{v:.2f}"
    return str(v)
