"""The report's tables: statistics over the rows the report's SQL returns, each as numbers (CSV) and as a
view for reading ("estimate [lo, hi]"). Means, success rates, correlations and their bootstrap 95 %
intervals come from ``zoo_sweep.science.stats`` (pairs resampled, seeded)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from zoo_sweep.report.parts import ReportTable
from zoo_sweep.science import stats
from zoo_sweep.science.gains import per_pair
from zoo_sweep.science.pair_metrics import TOP_P


def method_summary(results: pd.DataFrame, n_boot: int = stats.N_BOOT, seed: int = stats.SEED) -> pd.DataFrame:
    """Per method: pairs run, mean transfer delta, success rates, mean knowledge gain and loss (percent),
    mean transfer rate, each with its bootstrap 95 % interval in ``<column>_lo`` / ``<column>_hi``.

    ``results``: final transfer rows (``final_transfers``) or ``transfer_pairs`` rows; seeds of one pair are
    averaged first, so the unit that is resampled is a (student, teacher) pair. ``success`` is the share of
    pairs with delta > 0; ``student_success`` is the paper's statistic: the median over students of each
    student's share of teachers with delta > 0.
    """
    kw = {"n_boot": n_boot, "seed": seed}
    means = {"mean_gain": "knowledge_gain", "mean_loss": "knowledge_loss",
             "transfer_rate_sample": "transfer_rate_sample", "transfer_rate_class": "transfer_rate_class"}
    cols = ["method", "pairs"] + with_ci(["mean_delta", "success", "student_success", *means])
    rows = []
    for method, g in (per_pair(results).groupby("method", sort=True) if len(results) else []):
        row = delta_stats({"method": method, "pairs": len(g)}, g, kw)
        for name, col in means.items():
            ci_cols(row, name, stats.bootstrap_mean(g[col], **kw))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).round(3)


def fmt_ci(est, lo, hi, digits=2) -> str:
    return stats.CI(float(est), float(lo), float(hi), 0).format(digits) if est is not None else ""


def view(df: pd.DataFrame) -> pd.DataFrame:
    """Fold every ``x, x_lo, x_hi`` triple into one "x [lo, hi]" column; round other floats."""
    out = {}
    for c in df.columns:
        if c.endswith("_lo") or c.endswith("_hi"):
            if c[:-3] in df.columns:
                continue
        if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns:
            out[c] = [fmt_ci(e, lo, hi) if e == e else "" for e, lo, hi in zip(df[c], df[f"{c}_lo"], df[f"{c}_hi"])]
        elif df[c].dtype.kind == "f":
            out[c] = ["" if v != v else f"{v:.2f}" for v in df[c]]
        else:
            out[c] = ["" if v is None or (not isinstance(v, str) and pd.isna(v)) else str(v) for v in df[c]]
    return pd.DataFrame(out, columns=list(out))


def report_table(key, title, data, sql, note="") -> ReportTable:
    return ReportTable(key, title, data.reset_index(drop=True), view(data.reset_index(drop=True)), sql, note)


def ci_cols(row: dict, name: str, ci: stats.CI) -> None:
    row.update({name: ci.estimate, f"{name}_lo": ci.lo, f"{name}_hi": ci.hi})


def with_ci(names) -> list[str]:
    return [n + s for n in names for s in ("", "_lo", "_hi")]


def delta_stats(row: dict, g: pd.DataFrame, kw, per_student: bool = True) -> dict:
    """Add mean_delta, success and (with ``per_student``) student_success of the pairs ``g`` to ``row``."""
    ci_cols(row, "mean_delta", stats.bootstrap_mean(g["delta"], **kw))
    ci_cols(row, "success", stats.bootstrap_rate(g["delta"] > 0, **kw))
    if per_student:
        ci_cols(row, "student_success", stats.student_success(g["student"], g["delta"], **kw))
    return row


_QUANTITY = ["quantity", "pairs", "mean", "mean_lo", "mean_hi", "median", "min", "max", "uniform"]


def ck_table(pairs, kw, note) -> ReportTable:
    rows = [_qrow(col, pairs[col].astype(float), kw) for col in
            ("rho_pos", "rho_neg", "agreement", "oracle_acc", "ensemble_acc")
            if col in pairs and not pairs[col].isna().all()]
    return report_table("ck_summary", "Pair metrics (percent of the eval set)",
                  pd.DataFrame(rows, columns=_QUANTITY[:-1]), ["pairs"], note)


def concentration_table(pairs, k, kw, note) -> ReportTable:
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
    return report_table("concentration", f"Per-class concentration (K = {k or 'unknown'} classes)",
                  pd.DataFrame(rows, columns=_QUANTITY), ["pairs"],
                  f"uniform: the value if positive flips were spread evenly over the K classes; {note}")


def _qrow(name, x, kw, uniform=np.nan) -> dict:
    """One row of a ``_QUANTITY`` table: the distribution of ``x`` over pairs (``uniform``: its reference)."""
    row = {"quantity": name, "pairs": int(x.notna().sum())}
    ci_cols(row, "mean", stats.bootstrap_mean(x, **kw))
    row.update(median=x.median(), min=x.min(), max=x.max(), uniform=uniform)
    return row


def method_differences(tp, kw) -> pd.DataFrame:
    """Each two methods' difference in mean delta and in success, on the pairs both ran. ``delta_diff_by_student``
    is the mean difference with students resampled instead of pairs: a student's pairs share its run-to-run
    luck, so with few students the pair interval is too narrow."""
    cols = (["method_a", "method_b", "pairs", "students", "paired"]
            + with_ci(["delta_diff", "delta_diff_by_student", "success_diff"])
            + ["delta", "delta_by_student", "success"])
    rows = []
    methods = sorted(tp["method"].unique()) if len(tp) else []
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            A = tp[tp["method"] == a].set_index(["student", "teacher"])["delta"]
            B = tp[tp["method"] == b].set_index(["student", "teacher"])["delta"]
            common = A.index.intersection(B.index)
            paired = len(common) >= 2
            students = common.get_level_values("student")
            if paired:
                d = stats.bootstrap_paired_diff(A[common], B[common], "mean", **kw)
                by_student = stats.bootstrap_paired_diff(A[common], B[common], "mean", groups=students, **kw)
                s = stats.bootstrap_paired_diff(A[common], B[common], "rate", **kw)
            else:  # different pairs: no student is shared to resample
                d = stats.bootstrap_diff(A, B, "mean", **kw)
                by_student = stats.NAN_CI
                s = stats.bootstrap_diff(A, B, "rate", **kw)
            row = {"method_a": a, "method_b": b, "pairs": len(common) if paired else min(len(A), len(B)),
                   "students": students.nunique() if paired else 0, "paired": paired}
            ci_cols(row, "delta_diff", d)
            ci_cols(row, "delta_diff_by_student", by_student)
            ci_cols(row, "success_diff", s)
            row["delta"] = _verdict(d)
            row["delta_by_student"] = _verdict(by_student, "students") if paired else ""
            row["success"] = _verdict(s)
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def _verdict(ci: stats.CI, units: str = "pairs") -> str:
    if np.isnan(ci.lo):
        return f"too few {units}"
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


def binned(tp, kw) -> pd.DataFrame:
    cols = ["method", "gap_bin", "gap_mid", "pairs"] + with_ci(["mean_delta", "success"])
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
        rows.append(delta_stats(row, g, kw, per_student=False))
    return pd.DataFrame(rows, columns=cols)


def families(tp, kw) -> pd.DataFrame:
    cols = ["method", "student_family", "students", "pairs"] + with_ci(["mean_delta", "success", "student_success"])
    rows = []
    if len(tp):
        for (method, fam), g in tp.assign(student_family=tp["student_family"].fillna("unknown")).groupby(
                ["method", "student_family"], sort=True):
            row = {"method": method, "student_family": fam, "students": g["student"].nunique(), "pairs": len(g)}
            rows.append(delta_stats(row, g, kw))
    return pd.DataFrame(rows, columns=cols)


PROPERTIES = {"log10 student params": lambda d: np.log10(d["student_params"].astype(float).where(lambda p: p > 0)),
              "student accuracy": lambda d: d["student_acc"].astype(float),
              "accuracy gap": lambda d: d["acc_gap"].astype(float),
              "rho_pos": lambda d: d["rho_pos"].astype(float)}


def correlations(tp, kw) -> pd.DataFrame:
    cols = ["method", "property", "pairs"] + with_ci(["pearson", "spearman"])
    rows = []
    for method, g in (tp.groupby("method", sort=True) if len(tp) else []):
        for name, f in PROPERTIES.items():
            x = f(g)
            row = {"method": method, "property": name, "pairs": int((x.notna() & g["delta"].notna()).sum())}
            ci_cols(row, "pearson", stats.bootstrap_corr(x, g["delta"], "pearson", **kw))
            ci_cols(row, "spearman", stats.bootstrap_corr(x, g["delta"], "spearman", **kw))
            rows.append(row)
    return pd.DataFrame(rows, columns=cols)


def multi_teacher_runs(multi, tp, teacher_lists: dict) -> pd.DataFrame:
    """Each multi-teacher run (``multi``) against its teachers one at a time (``tp``); ``teacher_lists``:
    (method, student, teachers label) -> the run's teachers (queries.multi_teacher_lists)."""
    rows = []
    for r in multi.itertuples(index=False):
        teachers = teacher_lists.get((r.method, r.student, r.teachers), [])
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


def multi_summary(mt, kw) -> pd.DataFrame:
    cols = ["method", "runs"] + with_ci(["mean_delta", "success", "gain_over_best"]) + ["verdict"]
    rows = []
    for method, g in mt.groupby("method", sort=True):
        row = delta_stats({"method": method, "runs": len(g)}, g, kw, per_student=False)
        ci = stats.bootstrap_mean(g["gain_over_best"], **kw)
        ci_cols(row, "gain_over_best", ci)
        row["verdict"] = ("no single-teacher runs to compare" if ci.n == 0 else
                          "too few runs" if np.isnan(ci.lo) else
                          ("better than the best single teacher" if ci.lo > 0 else
                           "worse than the best single teacher" if ci.hi < 0 else
                           "not distinguishable from the best single teacher"))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols)
