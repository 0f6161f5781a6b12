"""The report's tables: statistics over the rows the report's SQL returns, each as numbers (CSV) and as a
view for reading ("estimate [lo, hi]"). Means, success rates, correlations and their 95 % intervals come from
``zoo_sweep.science.stats`` (seeded): over single runs nested as students > pairs > seeds with students
resampled for a method's mean delta and its delta over the controls (``science.controls``), over
(student, teacher) pairs, seeds averaged, for the rest."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from zoo_sweep.report.parts import ReportTable
from zoo_sweep.science import controls as ctl
from zoo_sweep.science import stats
from zoo_sweep.science.gains import per_pair
from zoo_sweep.science.pair_metrics import TOP_P
from zoo_sweep.transfer import catalog


def method_summary(results: pd.DataFrame, n_boot: int = stats.N_BOOT, seed: int = stats.SEED,
                   controls=None) -> pd.DataFrame:
    """Per method: pairs, students and seeds run, mean transfer delta and delta over each control, the
    seed-to-seed SD of delta, success rates, mean knowledge gain and loss (percent), mean transfer rate, each mean
    and rate with its 95 % interval in ``<column>_lo`` / ``<column>_hi``.

    ``results``: final transfer rows as stored (``final_transfers``: one row per run) or ``transfer_pairs`` rows
    (seeds averaged). Control runs (``controls``, default: the catalog's; the student as its own teacher) and
    multi-teacher runs are not methods and are left out. ``mean_delta`` and ``delta_over_<control>`` (a run's
    delta minus that of the control run on the same student, seed and epoch: ``science.controls``) are means over
    runs nested as students > pairs > seeds with an interval that resamples students
    (``stats.hierarchical_mean``; ``interval`` says how, e.g. "t over 3 student means" below 5 students);
    ``delta_over_labels`` is always there (empty without a labels control), other controls' columns when the
    rows have that control. The pair statistics resample (student, teacher) pairs, seeds averaged:
    ``success`` is the share of pairs with delta > 0; ``student_success`` is the paper's statistic, the median
    over students of each student's share of teachers with delta > 0. ``delta_seed_sd``: ``stats.seed_sd`` of
    delta with one unit per (student, teacher); empty with one seed.
    """
    kw = {"n_boot": n_boot, "seed": seed}
    names = _control_names(controls)
    means = {"mean_gain": "knowledge_gain", "mean_loss": "knowledge_loss",
             "transfer_rate_sample": "transfer_rate_sample", "transfer_rate_class": "transfer_rate_class"}
    runs = ctl.delta_over_controls(_final(results), names)
    # a metric no run recorded comes back from SQL as a column of NULL objects, which averaging seeds would drop
    runs = runs.assign(**{c: pd.to_numeric(runs[c], errors="coerce") for c in ["delta", *means.values()] if c in runs})
    over = over_columns(results, names)
    cols = (["method", "pairs", "students", "seeds"] + with_ci(["mean_delta", *over]) + ["delta_seed_sd"]
            + with_ci(["success", "student_success", *means]) + ["interval"])
    rows = []
    for method, r in (runs.groupby("method", sort=True) if len(runs) else []):
        g = per_pair(r)
        mean = runs_mean(r, "delta", kw)
        row = delta_stats({"method": method, "pairs": len(g), "students": g["student"].nunique(),
                           "seeds": _seeds(r), "delta_seed_sd": _seed_sd(r), "interval": mean.method}, g, kw, mean=mean)
        for c in over:
            ci_cols(row, c, runs_mean(r, c, kw) if c in r else stats.NAN_CI)
        for name, col in means.items():
            ci_cols(row, name, stats.bootstrap_mean(g[col], **kw))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).round(3)


def control_summary(results: pd.DataFrame, n_boot: int = stats.N_BOOT, seed: int = stats.SEED,
                    controls=None) -> pd.DataFrame:
    """Per control run in ``results`` (final transfer rows as stored): students and seeds run, the mean delta
    over students with its interval (``stats.hierarchical_mean``, students resampled; ``interval`` says how),
    the seed-to-seed SD of delta, and the mean knowledge gain and loss."""
    kw = {"n_boot": n_boot, "seed": seed}
    names = _control_names(controls)
    cols = (["control", "students", "seeds", "runs"] + with_ci(["mean_delta"]) + ["delta_seed_sd"]
            + with_ci(["mean_gain", "mean_loss"]) + ["interval"])
    _, runs = ctl.split_controls(_final(results), names)
    rows = []
    for c in names:
        r = runs[runs["method"] == c]
        if r.empty:
            continue
        mean = runs_mean(r, "delta", kw)
        row = {"control": c, "students": r["student"].nunique(), "seeds": _seeds(r), "runs": len(r),
               "delta_seed_sd": _seed_sd(r), "interval": mean.method}
        ci_cols(row, "mean_delta", mean)
        ci_cols(row, "mean_gain", runs_mean(r, "knowledge_gain", kw))
        ci_cols(row, "mean_loss", runs_mean(r, "knowledge_loss", kw))
        rows.append(row)
    return pd.DataFrame(rows, columns=cols).round(3)


def over_control_by_epoch(epochs: pd.DataFrame, n_boot: int = stats.N_BOOT, seed: int = stats.SEED,
                          controls=None) -> pd.DataFrame:
    """Per method, control and epoch: the mean delta over the control (``science.controls``) of that epoch's
    runs, with its interval (``stats.hierarchical_mean``, students resampled). ``epochs``: every epoch's rows
    (``queries.SQL["transfer_epochs"]``)."""
    kw = {"n_boot": n_boot, "seed": seed}
    names = _control_names(controls)
    cols = ["method", "control", "epoch", "students", "runs"] + with_ci(["delta_over"]) + ["interval"]
    runs = ctl.delta_over_controls(epochs, names)
    rows = []
    for c in ctl.present(epochs, names):
        col = ctl.over_column(c)
        for (method, epoch), g in runs.groupby(["method", "epoch"], sort=True):
            ci = runs_mean(g, col, kw)
            if ci.n:
                row = {"method": method, "control": c, "epoch": int(epoch), "students": ci.n,
                       "runs": int(g[col].notna().sum()), "interval": ci.method}
                ci_cols(row, "delta_over", ci)
                rows.append(row)
    return pd.DataFrame(rows, columns=cols).round(3)


def with_over_controls(tp: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """``transfer_pairs`` rows with each pair's delta over each control, seeds averaged as the pair's delta is;
    ``runs``: the method runs with their ``delta_over_<control>`` (``science.controls.delta_over_controls``)."""
    over = [c for c in runs.columns if c.startswith("delta_over_")]
    if tp.empty or not over:
        return tp.assign(**{c: np.nan for c in over})
    keys = ["method", "student", "teacher"]
    return tp.merge(runs.groupby(keys, as_index=False)[over].mean(), on=keys, how="left")


def over_columns(results: pd.DataFrame, controls) -> list[str]:
    """The delta-over-control columns a table shows: the labels control's always (a sweep without it says so),
    another control's when ``results`` have its runs; labels first."""
    have = set(ctl.present(results, controls))
    return [ctl.over_column(c) for c in controls if c == ctl.LABELS or c in have]


def runs_mean(r: pd.DataFrame, col: str, kw) -> stats.CI:
    """Mean of ``col`` over runs nested as students > pairs > seeds, students resampled. The rows of a pair are
    its seeds; the seed labels are not passed (they only check uniqueness), so two runs of one seed, a job run
    again under other settings, are averaged in rather than stopping the report."""
    return stats.hierarchical_mean(pd.to_numeric(r[col], errors="coerce"), r["student"], r["teacher"], None, **kw)


def _control_names(controls) -> list[str]:
    return catalog.controls() if controls is None else list(controls)


def _final(results: pd.DataFrame) -> pd.DataFrame:
    return results[results["final"].astype(bool)] if len(results) and "final" in results else results


def _seeds(r: pd.DataFrame) -> int:
    """Seeds run: distinct seeds of run rows, or the most seeds of a pair in seed-averaged rows."""
    if "seed" in r:
        return int(r["seed"].nunique())
    return int(pd.to_numeric(r["seeds"]).max()) if "seeds" in r else 1


def _seed_sd(r: pd.DataFrame) -> float:
    if "seed" not in r:
        return float("nan")
    unit = r["student"].astype(str) + "\x1f" + r["teacher"].astype(str)
    return stats.seed_sd(pd.to_numeric(r["delta"], errors="coerce"), unit)


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


def delta_stats(row: dict, g: pd.DataFrame, kw, per_student: bool = True, mean: stats.CI | None = None) -> dict:
    """Add mean_delta, success and (with ``per_student``) student_success of the pairs ``g`` to ``row``;
    ``mean``: mean_delta computed over runs (``runs_mean``) instead of the pair bootstrap."""
    ci_cols(row, "mean_delta", mean or stats.bootstrap_mean(g["delta"], **kw))
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


def method_differences(rows, kw) -> pd.DataFrame:
    """Each two methods' difference in mean delta and in success, on the pairs both ran (seeds averaged; pairs
    resampled). ``delta_diff_by_student`` is the mean difference with students resampled instead
    (``stats.hierarchical_paired_diff`` over the runs both made, nested as students > pairs > seeds; a t
    interval below 5 students): a student's pairs share its run-to-run luck, so with few students the pair
    interval is too narrow. ``rows``: one row per run of single-teacher methods (with ``seed``), or one row per
    pair (seeds averaged, e.g. ``transfer_pairs``)."""
    cols = (["method_a", "method_b", "pairs", "students", "paired"]
            + with_ci(["delta_diff", "delta_diff_by_student", "success_diff"])
            + ["delta", "delta_by_student", "success"])
    out = []
    methods = sorted(rows["method"].unique()) if len(rows) else []
    if methods:
        runs = rows.assign(delta=pd.to_numeric(rows["delta"], errors="coerce"))
        units = ["student", "teacher"] + (["seed"] if "seed" in rows else [])
        per_run = runs.groupby(["method", *units])["delta"].mean()
        per_pair = runs.groupby(["method", "student", "teacher"])["delta"].mean()
    for i, a in enumerate(methods):
        for b in methods[i + 1:]:
            A, B = per_pair.xs(a, level="method"), per_pair.xs(b, level="method")
            common = A.index.intersection(B.index)
            paired = len(common) >= 2
            students = common.get_level_values("student")
            if paired:
                d = stats.bootstrap_paired_diff(A[common], B[common], "mean", **kw)
                RA, RB = per_run.xs(a, level="method"), per_run.xs(b, level="method")
                both = RA.index.intersection(RB.index)
                by_student = stats.hierarchical_paired_diff(RA[both], RB[both], both.get_level_values("student"),
                                                            both.get_level_values("teacher"), **kw)
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
            out.append(row)
    return pd.DataFrame(out, columns=cols)


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
    """Per method and accuracy-gap bin: mean delta (and mean delta over each control in ``tp``) and success,
    pairs resampled."""
    over = [c for c in tp.columns if c.startswith("delta_over_")]
    cols = ["method", "gap_bin", "gap_mid", "pairs"] + with_ci(["mean_delta", *("mean_" + c for c in over), "success"])
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
        for c in over:
            ci_cols(row, "mean_" + c, stats.bootstrap_mean(g[c], **kw))
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


def _num(col: str):
    """A numeric column as floats; all NaN where the rows lack it (rows of an older query)."""
    return lambda d: (pd.to_numeric(d[col], errors="coerce").astype(float) if col in d
                      else pd.Series(np.nan, index=d.index))


def _log10(col: str):
    return lambda d: np.log10(_num(col)(d).where(lambda p: p > 0))


def _family(col: str):
    return lambda d: d[col].fillna("unknown").astype(str) if col in d else pd.Series("unknown", index=d.index)


# what predicts a pair's Δ, the student's side and the teacher's (the paper studies both); a column a store of
# an older layout lacks gives an empty row
PROPERTIES = {"log10 student params": _log10("student_params"),
              "student accuracy": _num("student_acc"),
              "log10 teacher params": _log10("teacher_params"),
              "teacher accuracy": _num("teacher_acc"),
              "accuracy gap": _num("acc_gap"),
              "rho_pos": _num("rho_pos")}
# categorical properties: the correlation ratio η (how much of Δ's spread the category explains)
CATEGORIES = {"student family": _family("student_family"),
              "teacher family": _family("teacher_family"),
              "teacher x student family": lambda d: (_family("teacher_family")(d) + " -> "
                                                     + _family("student_family")(d))}


def correlations(tp, kw) -> pd.DataFrame:
    cols = ["method", "property", "pairs"] + with_ci(["pearson", "spearman", "eta"])
    rows = []
    for method, g in (tp.groupby("method", sort=True) if len(tp) else []):
        delta = g["delta"].astype(float)
        for name, f in PROPERTIES.items():
            x = f(g)
            row = {"method": method, "property": name, "pairs": int((x.notna() & delta.notna()).sum())}
            ci_cols(row, "pearson", stats.bootstrap_corr(x, delta, "pearson", **kw))
            ci_cols(row, "spearman", stats.bootstrap_corr(x, delta, "spearman", **kw))
            ci_cols(row, "eta", stats.NAN_CI)
            rows.append(row)
        for name, f in CATEGORIES.items():
            row = {"method": method, "property": name, "pairs": int(delta.notna().sum())}
            ci_cols(row, "pearson", stats.NAN_CI)
            ci_cols(row, "spearman", stats.NAN_CI)
            ci_cols(row, "eta", stats.bootstrap_eta(f(g), delta, **kw))
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
