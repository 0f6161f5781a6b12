"""Transfer metrics of a student after transfer (s_T) against its frozen start (s0) and the teacher (t).

Inputs are per-sample correctness vectors on the eval set; outputs are percentages (METRICS.md,
"Transfer metrics"). Identity: delta = knowledge_gain - knowledge_loss.
"""

from __future__ import annotations

import numpy as np


def transfer_metrics(s0_correct, sT_correct, t_correct) -> dict[str, float]:
    s0, sT, t = (np.asarray(v, dtype=bool) for v in (s0_correct, sT_correct, t_correct))
    n = len(s0)
    pct = 100.0 / n
    pos_set, neg_set = ~s0 & t, s0 & ~t
    rho_before = pos_set.sum() * pct
    rho_after = (~sT & t).sum() * pct
    return {
        "student_acc": sT.mean() * 100,
        "s0_acc": s0.mean() * 100,
        "delta": (sT.mean() - s0.mean()) * 100,
        "knowledge_gain": (~s0 & sT).sum() * pct,
        "knowledge_loss": (s0 & ~sT).sum() * pct,
        "rho_pos_before": rho_before,
        "rho_pos_after": rho_after,
        "rho_pos_change": rho_after - rho_before,
        "transfer_rate": float(sT[pos_set].mean() * 100) if pos_set.any() else float("nan"),
        "damage_rate": float((~sT[neg_set]).mean() * 100) if neg_set.any() else float("nan"),
    }
