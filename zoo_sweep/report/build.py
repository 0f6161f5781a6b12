"""Read the store and summarise a sweep: tables for the terminal, and a report folder with a self-contained
HTML page (plots embedded), the PNG plots beside it, every table as CSV and a Markdown summary.

Every table comes from SQL in ``SQL`` below (the page shows each query with its parameters filled in, ready
for ``zoo-sweep query``); means, success rates, correlations and their bootstrap 95 % intervals are computed
from those rows by ``zoo_sweep.science.stats`` (pairs resampled, seeded).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from zoo_sweep.data.sets import count_images
from zoo_sweep.report.html import write_html
from zoo_sweep.report.parts import Panel, Report, ReportTable
from zoo_sweep.report.plots import ci_yerr, decorate, save, subplots
from zoo_sweep.report.plots_ck import plot_concentration
from zoo_sweep.report.queries import (  # noqa: F401
    SQL,
    final_transfers,
    models_table,
    pairs_table,
    transfer_pairs,
)
from zoo_sweep.science import gains, stats
from zoo_sweep.science.complementary import TOP_P
from zoo_sweep.science.gains import per_pair
from zoo_sweep.storage.store import Store
from zoo_sweep.zoo.entry import chance_note

_NO_PAIRS = "nothing to draw: no measured pairs on this eval set yet (`zoo-sweep measure SPEC`)"
_NO_RESULTS = "nothing to draw: no finished single-teacher transfer results for this sweep yet"
EMPTY = {"ck_vs_gap": _NO_PAIRS, "concentration": _NO_PAIRS, "delta_vs_gap": _NO_RESULTS,
         "gain_loss": _NO_RESULTS, "student_success": _NO_RESULTS, "student_properties": _NO_RESULTS}
FAMILY_COLORS = {"cnn": "C0", "transformer": "C1", "mlp": "C2"}


def method_summary(results: pd.DataFrame, n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> pd.DataFrame:
    """Per method: pairs run, mean transfer delta, success rates, mean knowledge gain and loss (percent),
    mean transfer rate, each with its bootstrap 95 % interval in ``<column>_lo`` / ``<column>_hi``.

    ``results``: final transfer rows (``final_transfers``) or ``transfer_pairs`` rows; seeds of one pair are
    averaged first, so the unit that is resampled is a (student, teacher) pair. ``success`` is the share of
    pairs with delta > 0; ``student_success`` is the paper's statistic: the median over students of each
    student's share of teachers with delta > 0.
    """
    kw = {"n_boot": n_boot, "seed": seed}
    means = {"mean_gain": "knowledge_gain", "mean_loss": "knowledge_loss", "transfer_rate": "transfer_rate"}
    cols = ["method", "pairs"] + _with_ci(["mean_delta", "success", "student_success", *means])
    rows = []
    for method, g in (per_pair(results).groupby("method", sort=True) if len(results) else []):
        row = _delta_stats({"method": method, "pairs": len(g)}, g, kw)
        for name, col in means.items():
            _ci_cols(row, name, stats.bootstrap_mean(g[col], **kw))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).round(3)


def write_report(store: Store, sweep: str, eval_set: str, out_dir: str | Path, num_classes: int | None = None,
                 n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> list[Path]:
    """Write the report folder (HTML, PNG, CSV, Markdown); returns the files written."""
    return make_report(store, sweep, eval_set, out_dir, num_classes, n_boot, seed).files


def make_report(store: Store, sweep: str, eval_set: str, out_dir: str | Path, num_classes: int | None = None,
                n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> Report:
    """Compute every table and panel of a sweep's report and write them to ``out_dir``:
    ``report.html`` (self-contained: plots embedded as data URIs), the PNG plots, one CSV per table,
    ``summary.md`` and the raw ``models/pairs/transfers.csv``."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    params = {"sweep": sweep, "eval_set": eval_set}
    url = getattr(store, "url", "")
    try:
        from sqlalchemy.engine import make_url

        url = make_url(url).render_as_string(hide_password=True) if url else ""
    except Exception:
        pass
    rep = Report(sweep, eval_set, params, url, num_classes)
    models = models_table(store, eval_set)
    pairs = pairs_table(store, eval_set)
    raw = final_transfers(store, sweep)
    tp = transfer_pairs(store, sweep)
    multi = store.query(SQL["multi_teacher"], {"sweep": sweep})
    kw = {"n_boot": n_boot, "seed": seed}
    boot_note = f"bootstrap 95 % intervals over pairs ({n_boot} resamples, seed {seed}; zoo_sweep.science.stats)"
    methods = sorted(tp["method"].unique()) if len(tp) else []
    colors = {m: f"C{i}" for i, m in enumerate(methods + sorted(set(multi["method"]) - set(methods)))}

    for name, df in (("models", models), ("pairs", pairs), ("transfers", raw)):
        p = out / f"{name}.csv"
        df.to_csv(p, index=False)
        rep.files.append(p)

    # ---- complementary knowledge
    ck_items: list = []
    ck_items.append(Panel("ck_vs_gap", "Complementary knowledge against accuracy gap",
                          "Positive flips ρ_pos (teacher right, student wrong) of every ordered pair against "
                          "acc(teacher) − acc(student); the red line is the minimum envelope: even the worst "
                          "pair of a gap bin holds at least this much.",
                          _plot_ck_vs_gap(pairs, models, out / "ck_vs_gap.png") if len(pairs) else None))
    ck_items.append(Panel("concentration", "Per-class concentration of complementary knowledge",
                          "Entropy of the per-class distribution of positive flips against the uniform ln K, and "
                          "how many classes hold 2/5/20/50 % of them (uniform: that share of K classes).",
                          plot_concentration(pairs, num_classes, out / "concentration.png") if len(pairs)
                          else None))
    ck_items.append(_concentration_table(pairs, num_classes, kw, boot_note))
    ck_items.append(_ck_table(pairs, kw, boot_note))
    rep.sections.append(("Complementary knowledge (all measured pairs)", ck_items))

    # ---- transfer per method
    summary = method_summary(tp, **kw)
    tr_items: list = [_table("methods", "Transfer per method (final epoch; points of the eval set, percent)",
                             summary, ["transfer_pairs"],
                             f"one row per (student, teacher) pair, seeds averaged; success = share of pairs "
                             f"with delta > 0; student_success = median over students of each student's share "
                             f"of teachers with delta > 0; {boot_note}")]
    diffs = _method_differences(tp, kw)
    tr_items.append(_table("method_differences", "Are two methods distinguishable?", diffs, ["transfer_pairs"],
                           "differences on the pairs both methods ran (paired bootstrap over pairs); a difference "
                           "is distinguishable when its 95 % interval does not cover 0"))
    binned, families = _binned(tp, kw), _families(tp, kw)  # each bootstrapped once: table and plot share it
    tr_items.append(Panel("delta_vs_gap", "Transfer delta against accuracy gap, per method",
                          "Each point one pair; lines are binned means with bootstrap 95 % intervals.",
                          _plot_delta_vs_gap(tp, binned, colors, out / "delta_vs_gap.png") if len(tp) else None))
    tr_items.append(_table("delta_by_gap", "Transfer delta by accuracy-gap bin", binned,
                           ["transfer_pairs"], f"bins are quantiles of the accuracy gap; {boot_note}"))
    tr_items.append(Panel("gain_loss", "Knowledge gain and loss per method",
                          "Left: mean gain (s0 wrong → student right) and loss (s0 right → student wrong) with "
                          "95 % intervals. Right: each pair; above the diagonal the student forgot more than it "
                          "gained.", _plot_gain_loss(tp, summary, colors, out / "gain_loss.png") if len(tp)
                          else None))
    rep.sections.append(("Transfer per method", tr_items))

    # ---- students
    st_items: list = [Panel("student_success", "Per-student success rate per method and by family",
                            "Left: each student's share of teachers with delta > 0 (box per method, as the "
                            "paper's Fig. 4a). Right: share of pairs with delta > 0 by student family, with "
                            "95 % intervals.",
                            _plot_success(tp, families, colors, out / "student_success.png") if len(tp) else None)]
    st_items.append(_table("families", "Transfer by student family", families, ["transfer_pairs"],
                           boot_note))
    st_items.append(Panel("student_properties", "Student properties against transfer delta",
                          "Student size (parameters, log scale), family and accuracy against delta; the "
                          "legend gives Spearman's ρ per method.",
                          _plot_properties(tp, colors, out / "student_properties.png") if len(tp) else None))
    st_items.append(_table("correlations", "Correlation of student and pair properties with transfer delta",
                           _correlations(tp, kw), ["transfer_pairs"], boot_note))
    rep.sections.append(("Students", st_items))

    # ---- multi-teacher
    mt_items: list = []
    msum = pd.DataFrame()
    if multi.empty:
        mt_items.append("no multi-teacher runs (jobs whose teacher names several models joined by \"+\")")
        mt_items.append(Panel("multi_teacher", "Multi-teacher against single-teacher transfer",
                              "no multi-teacher runs"))
    else:
        mt = _multi_teacher(multi, tp)
        mt_items.append(_table("multi_teacher", "Multi-teacher runs against their teachers one at a time",
                               mt.drop(columns="single_deltas"),
                               ["multi_teacher", "transfer_pairs"],
                               "best_single / mean_single: the same student's single-teacher deltas with each of "
                               "the teachers (same method when run, else any method)"))
        msum = _multi_summary(mt, kw)
        mt_items.append(_table("multi_teacher_summary", "Multi-teacher summary per method",
                               msum, ["multi_teacher", "transfer_pairs"], boot_note))
        if multi["method"].nunique() > 1:
            md = _method_differences(multi.rename(columns={"teachers": "teacher"}), kw)
            mt_items.append(_table("multi_teacher_differences", "Are two multi-teacher methods distinguishable?", md,
                                   ["multi_teacher"], "differences on the (student, teachers) runs both methods "
                                   "made (paired bootstrap); distinguishable when the 95 % interval excludes 0"))
        mt_items.append(Panel("multi_teacher", "Multi-teacher against single-teacher transfer",
                              "Each row a multi-teacher run: its delta (large marker) and the deltas of the same "
                              "student with each of its teachers alone (grey; the bar marks the best of them).",
                              _plot_multi(mt, colors, out / "multi_teacher.png")))
    rep.sections.append(("Multi-teacher transfer", mt_items))

    # ---- where to find gains
    g_items: list = []
    held, ranks = [], []
    feats = gains.pair_features(pairs, models)
    for m in methods:
        h = gains.heldout_rank_correlation(pairs, models, tp, m, seed=seed, features=feats)
        held.append(h)
        r = gains.rank_pairs(pairs, models, tp, m, seed=seed, features=feats)
        g_items.append(f"{m}: {r.attrs['note']}")
        ranks.append(r.head(10).assign(method=m))
    hdf = pd.DataFrame([h.as_row() for h in held], columns=list(gains.HeldOut("", 0, 0, 0).as_row()))
    g_items.append(_table("predicted_gain_heldout", "How well predicted_gain ranks pairs it has not seen",
                          hdf, ["pairs", "models", "transfer_pairs"],
                          "Spearman between predicted and measured delta on held-out finished pairs, mean over "
                          "random splits with its 2.5-97.5 % range over splits; top_ck_spearman: the same for "
                          "ranking by rho_pos alone (zoo_sweep.science.gains)"))
    g_items.append(Panel("predicted_gain", "Predicted against measured delta on held-out pairs",
                         "Each point a held-out finished pair in one of the random splits.",
                         _plot_predicted(held, colors, out / "predicted_gain.png")
                         if any(len(h.predictions) for h in held)
                         else None))
    if not any(len(h.predictions) for h in held):
        g_items[-1].caption = ("no held-out check: " + "; ".join(f"{h.method}: {h.note}" for h in held)
                               if held else "no finished transfers yet: pairs are ranked by top_ck")
    if not methods:
        r = gains.rank_pairs(pairs, models, tp, "kl_dp", seed=seed, features=feats)
        g_items.append(f"no finished transfer results: {r.attrs['note']}")
        ranks.append(r.head(10).assign(method="(any)"))
    rk = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame()
    rk = rk[["method"] + [c for c in rk.columns if c != "method"]] if len(rk) else \
        pd.DataFrame(columns=["method"] + gains.RANK_COLUMNS)
    g_items.append(_table("next_pairs", "Pairs to run next (top 10 per method)", rk,
                          ["pairs", "models", "transfer_pairs"],
                          "zoo_sweep.science.gains.rank_pairs: pairs without a finished result of the method, best "
                          "predicted delta first (or most rho_pos first when too few results)"))
    rep.sections.append(("Where to find gains next", g_items))

    rep.sections.append(("Models", [_table("models_view", f"Models on {eval_set} (accuracy %)", models,
                                           ["models"])]))

    for p in rep.panels:
        if p.path is None:
            (out / f"{p.key}.png").unlink(missing_ok=True)  # a stale plot of an earlier report in this folder
            p.caption = EMPTY.get(p.key, p.caption)
    rep.findings = _chance_findings(models, num_classes, eval_set) + _findings(pairs, summary, diffs, msum, held, ranks)
    for t in rep.tables:
        p = out / f"{t.key}.csv"
        t.data.to_csv(p, index=False)
        rep.files.append(p)
    rep.files += [p.path for p in rep.panels if p.path]
    md = out / "summary.md"
    md.write_text(_markdown(rep))
    rep.files.append(md)

    rep.html = write_html(rep, out / "report.html")
    rep.files.append(rep.html)
    return rep


# ---------------------------------------------------------------------- tables
def _fmt_ci(est, lo, hi, digits=2) -> str:
    return stats.CI(float(est), float(lo), float(hi), 0).format(digits) if est is not None else ""


def _view(df: pd.DataFrame) -> pd.DataFrame:
    """Fold every ``x, x_lo, x_hi`` triple into one "x [lo, hi]" column; round other floats."""
    out = {}
    for c in df.columns:
        if c.endswith("_lo") or c.endswith("_hi"):
            if c[:-3] in df.columns:
                continue
        if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns:
            out[c] = [_fmt_ci(e, lo, hi) if e == e else "" for e, lo, hi in zip(df[c], df[f"{c}_lo"], df[f"{c}_hi"])]
        elif df[c].dtype.kind == "f":
            out[c] = ["" if v != v else f"{v:.2f}" for v in df[c]]
        else:
            out[c] = ["" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in df[c]]
    return pd.DataFrame(out, columns=list(out))


def _table(key, title, data, sql, note="") -> ReportTable:
    return ReportTable(key, title, data.reset_index(drop=True), _view(data.reset_index(drop=True)), sql, note)


def _ci_cols(row: dict, name: str, ci: stats.CI) -> None:
    row.update({name: ci.estimate, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi})


def _with_ci(names) -> list[str]:
    return [n + s for n in names for s in ("", "_lo", "_hi")]


def _delta_stats(row: dict, g: pd.DataFrame, kw, per_student: bool = True) -> dict:
    """Add mean_delta, success and (with ``per_student``) student_success of the pairs ``g`` to ``row``."""
    _ci_cols(row, "mean_delta", stats.bootstrap_mean(g["delta"], **kw))
    _ci_cols(row, "success", stats.bootstrap_rate(g["delta"] > 0, **kw))
    if per_student:
        _ci_cols(row, "student_success", stats.student_success(g["student"], g["delta"], **kw))
    return row


_QUANTITY = ["quantity", "pairs", "mean", "mean_lo", "mean_hi", "median", "min", "max", "uniform"]


def _ck_table(pairs, kw, note) -> ReportTable:
    rows = [_qrow(col, pairs[col].astype(float), kw) for col in
            ("rho_pos", "rho_neg", "agreement", "oracle_acc", "ensemble_acc")
            if col in pairs and not pairs[col].isna().all()]
    return _table("ck_summary", "Pair metrics (percent of the eval set)",
                  pd.DataFrame(rows, columns=_QUANTITY[:-1]), ["pairs"], note)


def _concentration_table(pairs, k, kw, note) -> ReportTable:
    rows = []
    if len(pairs):
        h = pairs["flip_entropy"].astype(float)
        rows.append(_qrow("flip_entropy (nats)", h, kw, math.log(k) if k else np.nan))
        if k and k > 1:
            rows.append(_qrow("flip_entropy / ln K", h / math.log(k), kw, 1.0))
        for p in TOP_P:
            c = f"top{p}_classes"
            if c in pairs:
                rows.append(_qrow(f"classes holding {p} % of positive flips", pairs[c].astype(float), kw,
                                  math.ceil(p / 100 * k) if k else np.nan))
    return _table("concentration", f"Per-class concentration (K = {k or 'unknown'} classes)",
                  pd.DataFrame(rows, columns=_QUANTITY), ["pairs"],
                  f"uniform: the value if positive flips were spread evenly over the K classes; {note}")


def _qrow(name, x, kw, uniform=np.nan) -> dict:
    """One row of a ``_QUANTITY`` table: the distribution of ``x`` over pairs (``uniform``: its reference)."""
    row = {"quantity": name, "pairs": int(x.notna().sum())}
    _ci_cols(row, "mean", stats.bootstrap_mean(x, **kw))
    row.update(median=x.median(), min=x.min(), max=x.max(), uniform=uniform)
    return row


def _method_differences(tp, kw) -> pd.DataFrame:
    cols = ["method_a", "method_b", "pairs", "paired"] + _with_ci(["delta_diff", "success_diff"]) + ["delta", "success"]
    rows = []
    methods = sorted(tp["method"].unique()) if len(tp) else []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            A = tp[tp["method"] == a].set_index(["student", "teacher"])["delta"]
            B = tp[tp["method"] == b].set_index(["student", "teacher"])["delta"]
            common = A.index.intersection(B.index)
            paired = len(common) >= 2
            if paired:
                d = stats.bootstrap_paired_diff(A[common], B[common], "mean", **kw)
                s = stats.bootstrap_paired_diff(A[common], B[common], "rate", **kw)
            else:
                d = stats.bootstrap_diff(A, B, "mean", **kw)
                s = stats.bootstrap_diff(A, B, "rate", **kw)
            row = {"method_a": a, "method_b": b, "pairs": len(common) if paired else min(len(A), len(B)),
                   "paired": paired}
            _ci_cols(row, "delta_diff", d)
            _ci_cols(row, "success_diff", s)
            row["delta"] = _verdict(d)
            row["success"] = _verdict(s)
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _verdict(ci: stats.CI) -> str:
    if np.isnan(ci.lo):
        return "too few pairs"
    return "distinguishable" if ci.excludes_zero else "not distinguishable"


def _gap_edges(gap: pd.Series) -> np.ndarray:
    g = gap.dropna().astype(float)
    n = g.nunique()
    if n == 0:
        return np.array([])
    nb = int(max(1, min(5, n // 3)))
    edges = np.unique(np.round(np.quantile(g, np.linspace(0, 1, nb + 1)), 1))
    if len(edges) < 2:
        edges = np.array([g.min() - 0.05, g.max() + 0.05])
    edges[0], edges[-1] = min(edges[0], g.min()), max(edges[-1], g.max())
    return edges


def _binned(tp, kw) -> pd.DataFrame:
    cols = ["method", "gap_bin", "gap_mid", "pairs"] + _with_ci(["mean_delta", "success"])
    if tp.empty:
        return pd.DataFrame(columns=cols)
    edges = _gap_edges(tp["acc_gap"])
    rows = []
    if len(edges) < 2:
        return pd.DataFrame(columns=cols)
    b = np.clip(np.searchsorted(edges, tp["acc_gap"].astype(float), side="right") - 1, 0, len(edges) - 2)
    for (method, i), g in tp.assign(_b=b).groupby(["method", "_b"], sort=True):
        if g["acc_gap"].isna().all():
            continue
        row = {"method": method, "gap_bin": f"[{edges[i]:.1f}, {edges[i + 1]:.1f}{']' if i == len(edges) - 2 else ')'}",
               "gap_mid": float(g["acc_gap"].mean()), "pairs": len(g)}
        rows.append(_delta_stats(row, g, kw, per_student=False))
    return pd.DataFrame(rows, columns=cols)


def _families(tp, kw) -> pd.DataFrame:
    cols = ["method", "student_family", "students", "pairs"] + _with_ci(["mean_delta", "success", "student_success"])
    rows = []
    if len(tp):
        for (method, fam), g in tp.assign(student_family=tp["student_family"].fillna("unknown")).groupby(
                ["method", "student_family"], sort=True):
            row = {"method": method, "student_family": fam, "students": g["student"].nunique(), "pairs": len(g)}
            rows.append(_delta_stats(row, g, kw))
    return pd.DataFrame(rows, columns=cols)


PROPERTIES = {"log10 student params": lambda d: np.log10(d["student_params"].astype(float).where(lambda p: p > 0)),
              "student accuracy": lambda d: d["student_acc"].astype(float),
              "accuracy gap": lambda d: d["acc_gap"].astype(float),
              "rho_pos": lambda d: d["rho_pos"].astype(float)}


def _correlations(tp, kw) -> pd.DataFrame:
    cols = ["method", "property", "pairs"] + _with_ci(["pearson", "spearman"])
    rows = []
    for method, g in (tp.groupby("method", sort=True) if len(tp) else []):
        for name, f in PROPERTIES.items():
            x = f(g)
            row = {"method": method, "property": name, "pairs": int((x.notna() & g["delta"].notna()).sum())}
            _ci_cols(row, "pearson", stats.bootstrap_corr(x, g["delta"], "pearson", **kw))
            _ci_cols(row, "spearman", stats.bootstrap_corr(x, g["delta"], "spearman", **kw))
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _multi_teacher(multi, tp) -> pd.DataFrame:
    rows = []
    for r in multi.itertuples(index=False):
        teachers = [t for t in str(r.teachers).split("+") if t]
        single = tp[(tp["student"] == r.student) & tp["teacher"].isin(teachers)] if len(tp) else tp
        same = single[single["method"] == r.method] if len(single) else single
        use, which = (same, r.method) if len(same) else (single, "any")
        rows.append({"method": r.method, "student": r.student, "teachers": r.teachers, "n_teachers": len(teachers),
                     "seeds": r.seeds, "delta": r.delta, "knowledge_gain": r.knowledge_gain,
                     "knowledge_loss": r.knowledge_loss,
                     "best_single": use["delta"].max() if len(use) else np.nan,
                     "mean_single": use["delta"].mean() if len(use) else np.nan,
                     "singles_run": len(use), "single_method": which if len(use) else "",
                     "gain_over_best": (r.delta - use["delta"].max()) if len(use) else np.nan,
                     "single_deltas": list(use["delta"])})
    return pd.DataFrame(rows)


def _multi_summary(mt, kw) -> pd.DataFrame:
    cols = ["method", "runs"] + _with_ci(["mean_delta", "success", "gain_over_best"]) + ["verdict"]
    rows = []
    for method, g in mt.groupby("method", sort=True):
        row = _delta_stats({"method": method, "runs": len(g)}, g, kw, per_student=False)
        ci = stats.bootstrap_mean(g["gain_over_best"], **kw)
        _ci_cols(row, "gain_over_best", ci)
        row["verdict"] = ("no single-teacher runs to compare" if ci.n == 0 else
                          "too few runs" if np.isnan(ci.lo) else
                          ("better than the best single teacher" if ci.lo > 0 else
                           "worse than the best single teacher" if ci.hi < 0 else
                           "not distinguishable from the best single teacher"))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _chance_findings(models, num_classes, eval_set) -> list[str]:
    """Models no better than chance head the findings: a warning, most often their preprocessing."""
    if not num_classes or not len(models):
        return []
    n = count_images(eval_set, 0) or None
    notes = [(r.name, chance_note(float(r.accuracy), num_classes, n)) for r in models.itertuples()
             if r.accuracy == r.accuracy]  # NaN: not measured yet
    return [f"Check {name}: {note}." for name, note in notes if note]


def _findings(pairs, summary, diffs, msum, held, ranks) -> list[str]:
    f = []
    if len(pairs):
        weaker = pairs[pairs["acc_gap"] < 0]
        f.append(f"Complementary knowledge: ρ_pos ranges {pairs['rho_pos'].min():.1f}–{pairs['rho_pos'].max():.1f} % "
                 f"of the eval set over {len(pairs)} ordered pairs; {(pairs['rho_pos'] > 0).mean() * 100:.0f} % of "
                 f"pairs have some" + (f", and a weaker teacher still holds at least {weaker['rho_pos'].min():.1f} % "
                                       f"({len(weaker)} such pairs)." if len(weaker) else "."))
    for r in summary.itertuples(index=False):
        f.append(f"{r.method}: mean Δ_transf {_fmt_ci(r.mean_delta, r.mean_delta_lo, r.mean_delta_hi)} points; "
                 f"{_fmt_ci(r.success, r.success_lo, r.success_hi, 0)} % of {r.pairs} pairs improve; "
                 f"median per-student success {_fmt_ci(r.student_success, r.student_success_lo, r.student_success_hi, 0)} %.")
    for r in diffs.itertuples(index=False):
        d = _fmt_ci(r.delta_diff, r.delta_diff_lo, r.delta_diff_hi)
        if r.delta == "distinguishable":
            f.append(f"{r.method_a} vs {r.method_b}: mean Δ differs by {d} points over {r.pairs} pairs: distinguishable.")
        elif r.delta == "not distinguishable":
            f.append(f"{r.method_a} vs {r.method_b}: not distinguishable: the 95 % interval of the difference in "
                     f"mean Δ, {d}, covers 0.")
        else:
            f.append(f"{r.method_a} vs {r.method_b}: too few common pairs to tell them apart.")
    if msum.empty:
        f.append("Multi-teacher: no multi-teacher runs.")
    for r in msum.itertuples(index=False):
        f.append(f"Multi-teacher {r.method}: mean Δ_transf {_fmt_ci(r.mean_delta, r.mean_delta_lo, r.mean_delta_hi)} "
                 f"points over {r.runs} run(s); against the best single teacher "
                 f"{_fmt_ci(r.gain_over_best, r.gain_over_best_lo, r.gain_over_best_hi)}: {r.verdict}.")
    for h in held:
        if np.isnan(h.spearman):
            f.append(f"predicted_gain ({h.method}): no held-out check yet ({h.note}).")
        else:
            f.append(f"predicted_gain ({h.method}): held-out Spearman {h.spearman:.2f} (range {h.spearman_lo:.2f} to "
                     f"{h.spearman_hi:.2f} over {h.repeats} splits; ranking by ρ_pos alone: {h.top_ck_spearman:.2f})"
                     + ("; ranking by ρ_pos alone does as well so far: prefer top_ck until more pairs finish."
                        if h.top_ck_spearman >= h.spearman else "."))
    for r in ranks:
        if len(r):
            top = r.iloc[0]
            pred = "" if top["predicted_delta"] != top["predicted_delta"] else \
                f", predicted Δ {top['predicted_delta']:+.2f}"
            f.append(f"Next pair to run for {top['method']}: student {top['student']} ← teacher {top['teacher']} "
                     f"({top['policy']}{pred}).")
    return f


# ---------------------------------------------------------------------- plots
_GAP_LABEL = "accuracy gap: acc(teacher) − acc(student) [points]"
_DELTA_LABEL = "transfer delta Δ_transf [points]"


def _plot_ck_vs_gap(pairs, models, path) -> Path:
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


def _plot_delta_vs_gap(tp, binned, colors, path) -> Path:
    fig, ax = subplots(figsize=(7, 4.8))
    for method, g in tp.groupby("method", sort=True):
        c = colors.get(method, "C7")
        ax.scatter(g["acc_gap"], g["delta"], s=14, alpha=0.35, color=c)
        b = binned[binned["method"] == method]
        if len(b):
            ax.errorbar(b["gap_mid"], b["mean_delta"], yerr=ci_yerr(b, "mean_delta"), color=c, marker="o", lw=1.8,
                        capsize=4, label=f"{method} (binned mean, 95 % CI)")
    ax.axhline(0, color="k", lw=0.8)
    decorate(ax, _GAP_LABEL, _DELTA_LABEL, "Transfer delta against teacher strength", {})
    return save(fig, path)


def _plot_gain_loss(tp, summary, colors, path) -> Path:
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


def _plot_success(tp, fam, colors, path) -> Path:
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


def _plot_properties(tp, colors, path) -> Path:
    fig, axes = subplots(3, figsize=(13, 4.2), sharey=True)
    fams = sorted(tp["student_family"].fillna("unknown").unique())
    methods = sorted(tp["method"].unique())
    for j, (method, g) in enumerate(tp.groupby("method", sort=True)):
        c = colors.get(method, "C7")
        for ax, name in ((axes[0], "log10 student params"), (axes[2], "student accuracy")):
            x = PROPERTIES[name](g)
            r = stats.spearman(x, g["delta"])
            ax.scatter(x, g["delta"], s=16, alpha=0.7, color=c, label=f"{method}: ρ = {r:.2f}")
        xf = g["student_family"].fillna("unknown").map({f: i for i, f in enumerate(fams)}).astype(float)
        off = (j - (len(methods) - 1) / 2) * 0.8 / max(1, len(methods))
        axes[1].scatter(xf + off + np.random.default_rng(j).uniform(-0.05, 0.05, len(g)), g["delta"], s=16,
                        alpha=0.7, color=c, label=method)
    axes[1].set_xticks(range(len(fams)), fams)
    axes[0].set_ylabel(_DELTA_LABEL)
    for ax, xlabel in zip(axes, ("student size: log10(parameters)", "student family", "student accuracy [%]")):
        ax.axhline(0, color="k", lw=0.8)
        decorate(ax, xlabel, legend={"fontsize": 7})
    fig.suptitle("Which students gain?")
    return save(fig, path)


def _plot_multi(mt, colors, path) -> Path:
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


def _plot_predicted(held, colors, path) -> Path:
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


# ---------------------------------------------------------------------- markdown
def _markdown(rep: Report) -> str:
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
