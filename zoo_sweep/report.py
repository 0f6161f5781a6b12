"""Read the store and summarise a sweep: tables for the terminal and a report folder with PNG plots.

Every table comes from one SQL query (``SQL`` below), so a user can re-run it with ``zoo-sweep query``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .store import Store

SQL = {
    "models": """
        select m.name, m.family, m.params, round(m.accuracy, 2) as accuracy from models m
        where m.eval_set = :eval_set and m.name in (
            select student from pairs where eval_set = :eval_set
            union select teacher from pairs where eval_set = :eval_set)
        order by m.accuracy desc""",
    "pairs": "select * from pairs where eval_set = :eval_set",
    "transfers": """
        select r.* from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep and r.final""",
}


def final_transfers(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfers"], {"sweep": sweep})


def method_summary(results: pd.DataFrame) -> pd.DataFrame:
    """Per method: pairs run, mean transfer delta, success rates, mean knowledge gain and loss (percent).

    ``success`` is the share of pairs with delta > 0; ``student_success`` is the paper's statistic: the
    median over students of each student's share of teachers with delta > 0.
    """
    cols = ["method", "pairs", "mean_delta", "success", "student_success", "mean_gain", "mean_loss",
            "transfer_rate"]
    if results.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for method, g in results.groupby("method", sort=False):
        per_student = g.groupby("student")["delta"].apply(lambda d: (d > 0).mean() * 100)
        rows.append({
            "method": method, "pairs": len(g), "mean_delta": g["delta"].mean(),
            "success": (g["delta"] > 0).mean() * 100, "student_success": per_student.median(),
            "mean_gain": g["knowledge_gain"].mean(), "mean_loss": g["knowledge_loss"].mean(),
            "transfer_rate": g["transfer_rate"].mean(),
        })
    return pd.DataFrame(rows, columns=cols).round(2)


def models_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["models"], {"eval_set": eval_set})


def pairs_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["pairs"], {"eval_set": eval_set})


def write_report(store: Store, sweep: str, eval_set: str, out_dir: str | Path) -> list[Path]:
    """Write summary tables (CSV + Markdown) and PNG plots; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    models = models_table(store, eval_set)
    pairs = pairs_table(store, eval_set)
    results = final_transfers(store, sweep)
    summary = method_summary(results)

    for name, df in (("models", models), ("pairs", pairs), ("methods", summary), ("transfers", results)):
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        files.append(p)
    md = out / "summary.md"
    md.write_text(f"# Sweep {sweep}\n\n## Models ({eval_set})\n\n{_md(models)}\n\n"
                  f"## Transfer, per method (final epoch)\n\n{_md(summary)}\n")
    files.append(md)

    if not pairs.empty:
        fig, ax = plt.subplots(figsize=(6, 4.5))
        ax.scatter(pairs["acc_gap"], pairs["rho_pos"], s=14, alpha=0.7)
        env = _min_envelope(pairs["acc_gap"].to_numpy(), pairs["rho_pos"].to_numpy())
        ax.plot(env[0], env[1], color="C3", lw=1.5, label="minimum envelope")
        ax.set_xlabel("accuracy gap: acc(teacher) - acc(student) [points]")
        ax.set_ylabel("positive flips rho_pos [% of eval set]")
        ax.set_title("Complementary knowledge of every ordered pair")
        ax.legend(loc="upper left")
        files.append(_save(fig, out / "ck_vs_gap.png"))

    if not results.empty:
        merged = results.merge(pairs[["student", "teacher", "acc_gap"]], on=["student", "teacher"], how="left")
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for i, (method, g) in enumerate(merged.groupby("method", sort=False)):
            ax.scatter(g["acc_gap"], g["delta"], s=16, alpha=0.75, label=method, color=f"C{i}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("accuracy gap: acc(teacher) - acc(student) [points]")
        ax.set_ylabel("transfer delta [points]")
        ax.set_title("Transfer delta against teacher strength")
        ax.legend()
        files.append(_save(fig, out / "delta_vs_gap.png"))

        fig, ax = plt.subplots(figsize=(6, 4))
        x = np.arange(len(summary))
        ax.bar(x - 0.2, summary["mean_gain"], 0.4, label="knowledge gain")
        ax.bar(x + 0.2, summary["mean_loss"], 0.4, label="knowledge loss")
        ax.set_xticks(x, summary["method"])
        ax.set_ylabel("% of eval set (mean over pairs)")
        ax.set_title("What transfer gains and what it forgets")
        ax.legend()
        files.append(_save(fig, out / "gain_loss.png"))
    return files


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


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


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
