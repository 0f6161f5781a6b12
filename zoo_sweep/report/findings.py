"""The report's findings: one sentence per result worth reading first."""

from __future__ import annotations

import numpy as np

from zoo_sweep.report.tables import fmt_ci
from zoo_sweep.science import controls as ctl

NO_LABELS = ('No labels control: gains cannot be told from continued training; add controls = ["labels"] under '
             '[transfer].')


def findings(pairs, summary, diffs, msum, held, ranks, convergence: ctl.Convergence | None = None,
             warnings=()) -> list[str]:
    """The findings. Whether the students were converged (``convergence``: ``science.controls.convergence``)
    heads them, as it decides how every method's Δ reads; ``warnings`` (e.g. models at chance) follow it."""
    f = (convergence_findings(convergence, summary) if convergence is not None else []) + list(warnings)
    labels = convergence is not None and convergence.verdict != ctl.NO_LABELS
    if len(pairs):
        weaker = pairs[pairs["acc_gap"] < 0]
        f.append(f"Complementary knowledge: ρ_pos ranges {pairs['rho_pos'].min():.1f}–{pairs['rho_pos'].max():.1f} % "
                 f"of the eval set over {len(pairs)} ordered pairs; {(pairs['rho_pos'] > 0).mean() * 100:.0f} % of "
                 f"pairs have some" + (f", and a weaker teacher still holds at least {weaker['rho_pos'].min():.1f} % "
                                       f"({len(weaker)} such pairs)." if len(weaker) else "."))
    for r in summary.itertuples(index=False):
        f.append(f"{r.method}: mean Δ_transf {fmt_ci(r.mean_delta, r.mean_delta_lo, r.mean_delta_hi)} points; "
                 f"{fmt_ci(r.success, r.success_lo, r.success_hi, 0)} % of {r.pairs} pairs improve; "
                 "median per-student success "
                 f"{fmt_ci(r.student_success, r.student_success_lo, r.student_success_hi, 0)} %"
                 + (over_labels(r) if labels else "") + _over_others(r._asdict()) + ".")
    for r in diffs.itertuples(index=False):
        d = fmt_ci(r.delta_diff, r.delta_diff_lo, r.delta_diff_hi)
        if r.delta == "distinguishable" and r.delta_by_student == "not distinguishable":
            by = fmt_ci(r.delta_diff_by_student, r.delta_diff_by_student_lo, r.delta_diff_by_student_hi)
            f.append(f"{r.method_a} vs {r.method_b}: mean Δ differs by {d} points over {r.pairs} pairs, but with "
                     f"its {r.students} students resampled the interval, {by}, covers 0: not firmly distinguishable.")
        elif r.delta == "distinguishable":
            f.append(f"{r.method_a} vs {r.method_b}: mean Δ differs by {d} points over {r.pairs} pairs: "
                     "distinguishable.")
        elif r.delta == "not distinguishable":
            f.append(f"{r.method_a} vs {r.method_b}: not distinguishable: the 95 % interval of the difference in "
                     f"mean Δ, {d}, covers 0.")
        else:
            f.append(f"{r.method_a} vs {r.method_b}: too few common pairs to tell them apart.")
    if msum.empty:
        f.append("Multi-teacher: no multi-teacher runs.")
    for r in msum.itertuples(index=False):
        f.append(f"Multi-teacher {r.method}: mean Δ_transf {fmt_ci(r.mean_delta, r.mean_delta_lo, r.mean_delta_hi)} "
                 f"points over {r.runs} run(s); against the best single teacher "
                 f"{fmt_ci(r.gain_over_best, r.gain_over_best_lo, r.gain_over_best_hi)}: {r.verdict}.")
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


def convergence_findings(conv: ctl.Convergence, summary) -> list[str]:
    """Were the students converged: the zoo's verdict with the labels control's mean Δ, then the students whose
    labels Δ exceeds their seed noise. Without a labels control, a warning (once, when methods ran)."""
    if conv.verdict == ctl.NO_LABELS:
        return [NO_LABELS] if len(summary) else []
    z, how = conv.zoo.format(), conv.zoo.method
    head = {ctl.NOT_CONVERGED: f"The students were not converged: training on the labels alone, as long as a "
                               f"transfer job trains, improves them by {z} points (students resampled: {how}), so "
                               f"part of any method's Δ is continued training: read its Δ over labels.",
            ctl.CONVERGED: f"Over the zoo the students were converged within noise: training on the labels alone "
                           f"changes them by {z} points (students resampled: {how}), an interval that covers 0.",
            ctl.LABELS_HURT: f"The students were converged: training on the labels alone lowers them by {z} points "
                             f"(students resampled: {how}): label training hurts; over the zoo no sign of "
                             f"unconverged students.",
            ctl.TOO_FEW: f"Convergence: one student only (labels Δ {z} points): no interval over students."}
    s = [head[conv.verdict]]
    late = conv.students[conv.students["verdict"] == ctl.NOT_CONVERGED]
    s += [f"{r.student} (labels Δ {r.labels_delta:+.2f} > its seed noise {r.noise_sd:.2f}): not converged: its gains "
          f"are mostly continued training." for r in late.itertuples(index=False)]
    if late.empty and conv.verdict in (ctl.CONVERGED, ctl.LABELS_HURT) and not conv.cannot_tell:
        s.append("No student's labels Δ exceeds its seed noise.")
    if conv.cannot_tell:
        s.append(f"Cannot tell whether {', '.join(conv.cannot_tell)} converged: one seed, and no repeated seeds in the "
                 f"sweep to measure seed noise (add seeds = [0, 1, 2]).")
    return [" ".join(s)]


def over_labels(r) -> str:
    """A method's verdict against the labels control: it "transfers knowledge" only when its Δ over labels,
    students resampled, lies above 0."""
    col = ctl.over_column(ctl.LABELS)
    est, lo, hi = (getattr(r, col + s, np.nan) for s in ("", "_lo", "_hi"))
    ci = fmt_ci(est, lo, hi)
    if est != est:
        return "; no labels run matches its students, seeds and epochs"
    if lo != lo:
        return f"; Δ over labels {ci} points: too few students to tell it from training on the labels"
    if lo > 0:
        return f"; transfers knowledge: Δ over labels {ci} points (students resampled)"
    if hi < 0:
        return f"; worse than training on the labels (Δ over labels {ci})"
    return f"; no better than training on the labels (Δ over labels {ci})"


def _over_others(row: dict) -> str:
    """Δ over the controls other than labels that the method has, e.g. "; Δ over self_dist 0.40 [0.10, 0.70]"."""
    label = ctl.over_column(ctl.LABELS)
    return "".join(f"; Δ over {c.removeprefix('delta_over_')} {fmt_ci(v, row[c + '_lo'], row[c + '_hi'])}"
                   for c, v in row.items() if c.startswith("delta_over_") and c[-3:] not in ("_lo", "_hi")
                   and c != label and v == v)
