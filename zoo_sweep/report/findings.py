"""The report's findings: one sentence per result worth reading first."""

from __future__ import annotations

import numpy as np

from zoo_sweep.report.tables import fmt_ci


def findings(pairs, summary, diffs, msum, held, ranks) -> list[str]:
    f = []
    if len(pairs):
        weaker = pairs[pairs["acc_gap"] < 0]
        f.append(f"Complementary knowledge: ρ_pos ranges {pairs['rho_pos'].min():.1f}–{pairs['rho_pos'].max():.1f} % "
                 f"of the eval set over {len(pairs)} ordered pairs; {(pairs['rho_pos'] > 0).mean() * 100:.0f} % of "
                 f"pairs have some" + (f", and a weaker teacher still holds at least {weaker['rho_pos'].min():.1f} % "
                                       f"({len(weaker)} such pairs)." if len(weaker) else "."))
    for r in summary.itertuples(index=False):
        f.append(f"{r.method}: mean Δ_transf {fmt_ci(r.mean_delta, r.mean_delta_lo, r.mean_delta_hi)} points; "
                 f"{fmt_ci(r.success, r.success_lo, r.success_hi, 0)} % of {r.pairs} pairs improve; "
                 f"median per-student success {fmt_ci(r.student_success, r.student_success_lo, r.student_success_hi, 0)} %.")
    for r in diffs.itertuples(index=False):
        d = fmt_ci(r.delta_diff, r.delta_diff_lo, r.delta_diff_hi)
        if r.delta == "distinguishable" and r.delta_by_student == "not distinguishable":
            by = fmt_ci(r.delta_diff_by_student, r.delta_diff_by_student_lo, r.delta_diff_by_student_hi)
            f.append(f"{r.method_a} vs {r.method_b}: mean Δ differs by {d} points over {r.pairs} pairs, but with "
                     f"its {r.students} students resampled the interval, {by}, covers 0: not firmly distinguishable.")
        elif r.delta == "distinguishable":
            f.append(f"{r.method_a} vs {r.method_b}: mean Δ differs by {d} points over {r.pairs} pairs: distinguishable.")
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
