"""The report's sections, one function each: what a section shows (tables, panels, lines of text) from the
rows read once for the whole report (``ReportData``). Sections also leave on ``ReportData`` what the
findings need (the method summary, the differences, the multi-teacher summary, predicted_gain's checks)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from zoo_sweep.report import figures, tables
from zoo_sweep.report.parts import Panel
from zoo_sweep.report.plots_ck import plot_concentration
from zoo_sweep.report.queries import (
    SQL,
    final_transfers,
    models_table,
    multi_teacher_lists,
    pairs_table,
    transfer_epochs,
    transfer_pairs,
)
from zoo_sweep.report.tables import report_table
from zoo_sweep.science import controls, gains
from zoo_sweep.transfer import catalog


@dataclass
class ReportData:
    """The rows a report is computed from, and what its sections computed that the findings use."""
    models: pd.DataFrame
    pairs: pd.DataFrame
    raw: pd.DataFrame  # final transfer rows, as stored: one per run (methods, controls, multi-teacher)
    tp: pd.DataFrame  # one row per single-teacher (method, student, teacher), seeds averaged, no controls
    multi: pd.DataFrame  # one row per multi-teacher (method, student, teachers)
    teacher_lists: dict  # (method, student, teachers label) -> its teachers, from job_teachers
    out: Path
    eval_set: str
    num_classes: int | None
    n_boot: int
    seed: int
    epochs: pd.DataFrame = field(default_factory=pd.DataFrame)  # every epoch of single-teacher and control runs
    runs: pd.DataFrame = field(default_factory=pd.DataFrame)  # raw's method runs with their delta_over_<control>
    control_names: list = field(default_factory=catalog.controls)
    summary: pd.DataFrame = field(default_factory=pd.DataFrame)
    convergence: controls.Convergence | None = None
    diffs: pd.DataFrame = field(default_factory=pd.DataFrame)
    msum: pd.DataFrame = field(default_factory=pd.DataFrame)
    held: list = field(default_factory=list)
    ranks: list = field(default_factory=list)

    @property
    def kw(self) -> dict:
        return {"n_boot": self.n_boot, "seed": self.seed}

    @property
    def boot_note(self) -> str:
        return (f"bootstrap 95 % intervals over pairs ({self.n_boot} resamples, seed {self.seed}; "
                "zoo_sweep.science.stats)")

    @property
    def methods(self) -> list[str]:
        return sorted(self.tp["method"].unique()) if len(self.tp) else []

    @property
    def colors(self) -> dict[str, str]:
        extra = sorted(set(self.multi["method"]) - set(self.methods))
        return {m: f"C{i}" for i, m in enumerate(self.methods + extra)}


def read_data(store, sweep: str, eval_set: str, out: Path, num_classes, n_boot: int, seed: int) -> ReportData:
    raw, names = final_transfers(store, sweep), catalog.controls()
    runs = controls.delta_over_controls(raw, names)
    return ReportData(models_table(store, eval_set), pairs_table(store, eval_set), raw,
                      tables.with_over_controls(transfer_pairs(store, sweep), runs),
                      store.query(SQL["multi_teacher"], {"sweep": sweep}), multi_teacher_lists(store, sweep), out,
                      eval_set, num_classes, n_boot, seed, epochs=transfer_epochs(store, sweep), runs=runs,
                      control_names=names)


def complementary(d: ReportData) -> tuple[str, list]:
    pairs, out = d.pairs, d.out
    items: list = [
        Panel("ck_vs_gap", "Complementary knowledge against accuracy gap",
              "Positive flips ρ_pos (teacher right, student wrong) of every ordered pair against "
              "acc(teacher) − acc(student); the red line is the minimum envelope: even the worst "
              "pair of a gap bin holds at least this much.",
              figures.plot_ck_vs_gap(pairs, d.models, out / "ck_vs_gap.png") if len(pairs) else None),
        Panel("concentration", "Per-class concentration of complementary knowledge",
              "Entropy of the per-class distribution of positive flips against the uniform ln K, and "
              "how many classes hold 2/5/20/50 % of them (uniform: that share of K classes).",
              plot_concentration(pairs, d.num_classes, out / "concentration.png") if len(pairs) else None),
        tables.concentration_table(pairs, d.num_classes, d.kw, d.boot_note),
        tables.ck_table(pairs, d.kw, d.boot_note),
    ]
    return "Complementary knowledge (all measured pairs)", items


def transfer(d: ReportData) -> tuple[str, list]:
    tp, kw, out, colors = d.tp, d.kw, d.out, d.colors
    d.summary = tables.method_summary(d.raw, controls=d.control_names, **kw)
    how = "; ".join(sorted(set(d.summary["interval"]))) or "none yet"
    items: list = [report_table("methods", "Transfer per method (final epoch; points of the eval set, percent)",
                                d.summary, ["transfers"],
                                f"mean_delta and delta_over_<control> (a run's delta minus that of the control run on "
                                f"the same student, seed and epoch): means over runs nested as students > pairs > "
                                f"seeds, 95 % intervals with students resampled ({how}; "
                                f"zoo_sweep.science.stats.hierarchical_mean); delta_seed_sd: seed-to-seed SD of delta "
                                f"(stats.seed_sd, unit (student, teacher)); success = share of pairs with delta > 0; "
                                f"student_success = median over students of each student's share of teachers with "
                                f"delta > 0; success, student_success, gains, losses and rates: {d.boot_note}")]
    ctl = tables.control_summary(d.raw, controls=d.control_names, **kw)
    items.append(report_table("controls", "Controls: each student trained as long without a teacher's knowledge",
                              ctl, ["transfers"],
                              "one run per student and seed (the student as its own teacher): labels = the labels "
                              "alone, self_dist = distilled from its frozen self; mean over students with students "
                              "resampled (" + ("; ".join(sorted(set(ctl["interval"]))) or "none yet") + ")"
                              if len(ctl) else
                              'no control runs in this sweep: a method\'s gain cannot be told from continued '
                              'training (add controls = ["labels"] under [transfer])'))
    d.diffs = tables.method_differences(d.runs, kw)
    items.append(report_table("method_differences", "Are two methods distinguishable?", d.diffs, ["transfers"],
                              "differences on the pairs both methods ran (paired bootstrap over pairs, seeds "
                              "averaged; by_student: students resampled instead, over the runs both made, nested as "
                              "students > pairs > seeds, a t interval below 5 students "
                              "(stats.hierarchical_paired_diff), as a student's pairs share its run-to-run luck); a "
                              "difference is distinguishable when its 95 % interval does not cover 0"))
    binned = tables.binned(tp, kw)  # bootstrapped once: table and plot share it
    items.append(Panel("delta_vs_gap", "Transfer delta against accuracy gap, per method",
                       "Each point one pair; lines are binned means with bootstrap 95 % intervals. With a labels "
                       "control, right: the same for delta over labels (above 0: better than training on the "
                       "labels as long).",
                       figures.plot_delta_vs_gap(tp, binned, colors, out / "delta_vs_gap.png") if len(tp) else None))
    items.append(report_table("delta_by_gap", "Transfer delta by accuracy-gap bin", binned,
                              ["transfer_pairs", "transfers"],
                              f"bins are quantiles of the accuracy gap; {d.boot_note}"))
    by_epoch = tables.over_control_by_epoch(d.epochs, controls=d.control_names, **kw)
    items.append(Panel("control_by_epoch", "Delta over the control against epoch, per method",
                       "Each method's mean delta over the control run of the same student, seed and epoch, with "
                       "95 % intervals (students resampled); the control itself is the 0 line. A gain that is "
                       "still rising at the last epoch may grow with longer training.",
                       figures.plot_over_control_by_epoch(by_epoch, colors, out / "control_by_epoch.png")
                       if len(by_epoch) else None))
    items.append(report_table("delta_over_control_by_epoch", "Delta over the control by epoch", by_epoch,
                              ["transfer_epochs"], "zoo_sweep.science.controls.delta_over_controls on every epoch's "
                              "rows; stats.hierarchical_mean per method, control and epoch (students resampled)"))
    items.append(Panel("gain_loss", "Knowledge gain and loss per method",
                       "Left: mean gain (s0 wrong → student right) and loss (s0 right → student wrong) with "
                       "95 % intervals. Right: each pair; above the diagonal the student forgot more than it "
                       "gained.", figures.plot_gain_loss(tp, d.summary, colors, out / "gain_loss.png") if len(tp)
                       else None))
    return "Transfer per method", items


def students(d: ReportData) -> tuple[str, list]:
    tp, kw, out, colors = d.tp, d.kw, d.out, d.colors
    d.convergence = controls.convergence(d.raw, **kw)
    items: list = [report_table("convergence", "Were the students converged? (labels control per student)",
                                d.convergence.students, ["transfers"],
                                "labels_delta: the labels control's mean delta over seeds; not converged when it "
                                "exceeds noise_sd, the seed-to-seed SD of its labels delta (its seeds), or with one "
                                "seed the sweep's pooled seed-to-seed SD of delta; cannot tell without either "
                                "(zoo_sweep.science.controls.convergence)"
                                if len(d.convergence.students) else
                                'no labels control in this sweep (add controls = ["labels"] under [transfer])')]
    families = tables.families(tp, kw)  # bootstrapped once: table and plot share it
    items.append(Panel("student_success", "Per-student success rate per method and by family",
                       "Left: each student's share of teachers with delta > 0 (box per method, as the "
                       "paper's Fig. 4a). Right: share of pairs with delta > 0 by student family, with "
                       "95 % intervals.",
                       figures.plot_success(tp, families, colors, out / "student_success.png") if len(tp) else None))
    items.append(report_table("families", "Transfer by student family", families, ["transfer_pairs"], d.boot_note))
    items.append(Panel("student_properties", "Student and teacher properties against transfer delta",
                       "Top: the student's size (parameters, log scale), family and accuracy against delta; bottom: "
                       "the teacher's. The legend gives Spearman's ρ per method.",
                       figures.plot_properties(tp, colors, out / "student_properties.png") if len(tp) else None))
    items.append(report_table("correlations", "Correlation of student, teacher and pair properties with transfer "
                              "delta", tables.correlations(tp, kw), ["transfer_pairs"],
                              "pearson, spearman: numeric properties; eta: the correlation ratio of a category "
                              "(family, or the teacher -> student family combination), the share of delta's spread "
                              f"it explains, square-rooted; {d.boot_note}"))
    return "Students", items


def multi_teacher(d: ReportData) -> tuple[str, list]:
    multi, kw = d.multi, d.kw
    items: list = []
    if multi.empty:
        items.append("no multi-teacher runs (jobs with several teachers)")
        items.append(Panel("multi_teacher", "Multi-teacher against single-teacher transfer", "no multi-teacher runs"))
        return "Multi-teacher transfer", items
    mt = tables.multi_teacher_runs(multi, d.tp, d.teacher_lists)
    items.append(report_table("multi_teacher", "Multi-teacher runs against their teachers one at a time",
                              mt.drop(columns="single_deltas"), ["multi_teacher", "multi_teachers", "transfer_pairs"],
                              "best_single / mean_single: the same student's single-teacher deltas with each of "
                              "the teachers (same method when run, else any method)"))
    d.msum = tables.multi_summary(mt, kw)
    items.append(report_table("multi_teacher_summary", "Multi-teacher summary per method",
                              d.msum, ["multi_teacher", "transfer_pairs"], d.boot_note))
    if multi["method"].nunique() > 1:
        md = tables.method_differences(multi.rename(columns={"teachers": "teacher"}), kw)
        items.append(report_table("multi_teacher_differences", "Are two multi-teacher methods distinguishable?", md,
                                  ["multi_teacher"], "differences on the (student, teachers) runs both methods "
                                  "made (paired bootstrap); distinguishable when the 95 % interval excludes 0"))
    items.append(Panel("multi_teacher", "Multi-teacher against single-teacher transfer",
                       "Each row a multi-teacher run: its delta (large marker) and the deltas of the same "
                       "student with each of its teachers alone (grey; the bar marks the best of them).",
                       figures.plot_multi(mt, d.colors, d.out / "multi_teacher.png")))
    return "Multi-teacher transfer", items


def gains_next(d: ReportData) -> tuple[str, list]:
    pairs, models, tp, seed = d.pairs, d.models, d.tp, d.seed
    items: list = []
    feats = gains.pair_features(pairs, models)
    for m in d.methods:
        d.held.append(gains.heldout_rank_correlation(pairs, models, tp, m, seed=seed, features=feats))
        r = gains.rank_pairs(pairs, models, tp, m, seed=seed, features=feats)
        items.append(f"{m}: {r.attrs['note']}")
        d.ranks.append(r.head(10).assign(method=m))
    held = d.held
    hdf = pd.DataFrame([h.as_row() for h in held], columns=list(gains.HeldOut("", 0, 0, 0).as_row()))
    items.append(report_table("predicted_gain_heldout", "How well predicted_gain ranks pairs it has not seen",
                              hdf, ["pairs", "models", "transfer_pairs"],
                              "Spearman between predicted and measured delta on held-out finished pairs, mean over "
                              "random splits with its 2.5-97.5 % range over splits; top_ck_spearman: the same for "
                              "ranking by rho_pos alone (zoo_sweep.science.gains)"))
    drawn = any(len(h.predictions) for h in held)
    panel = Panel("predicted_gain", "Predicted against measured delta on held-out pairs",
                  "Each point a held-out finished pair in one of the random splits.",
                  figures.plot_predicted(held, d.colors, d.out / "predicted_gain.png") if drawn else None)
    if not drawn:
        panel.caption = ("no held-out check: " + "; ".join(f"{h.method}: {h.note}" for h in held)
                         if held else "no finished transfers yet: pairs are ranked by top_ck")
    items.append(panel)
    if not d.methods:
        r = gains.rank_pairs(pairs, models, tp, "kl_dp", seed=seed, features=feats)
        items.append(f"no finished transfer results: {r.attrs['note']}")
        d.ranks.append(r.head(10).assign(method="(any)"))
    rk = pd.concat(d.ranks, ignore_index=True) if d.ranks else pd.DataFrame()
    rk = rk[["method"] + [c for c in rk.columns if c != "method"]] if len(rk) else \
        pd.DataFrame(columns=["method"] + gains.RANK_COLUMNS)
    items.append(report_table("next_pairs", "Pairs to run next (top 10 per method)", rk,
                              ["pairs", "models", "transfer_pairs"],
                              "zoo_sweep.science.gains.rank_pairs: pairs without a finished result of the method, best "
                              "predicted delta first (or most rho_pos first when too few results)"))
    return "Where to find gains next", items


def models_list(d: ReportData) -> tuple[str, list]:
    return "Models", [report_table("models_view", f"Models on {d.eval_set} (accuracy %)", d.models, ["models"])]


SECTIONS = (complementary, transfer, students, multi_teacher, gains_next, models_list)
