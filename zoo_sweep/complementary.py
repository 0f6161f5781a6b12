"""Complementary knowledge of every ordered pair from the models' prediction records, in one vectorised pass.

With the correctness matrix C (models x samples), positive flips of all pairs are one matrix product:
pos[s, t] = #{x : s wrong, t right} = ((1 - C) @ C.T)[s, t], and negative flips are its transpose. The
per-class split is the same product restricted to each class's columns, so it costs no more in total.
Definitions: ../shared/METRICS.md ("Complementary knowledge").
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

TOP_P = (2, 5, 20, 50)


def flip_counts(correct: torch.Tensor) -> torch.Tensor:
    """pos[s, t]: samples the teacher t gets right and the student s gets wrong (counts, float64)."""
    c = correct.to(torch.float32)
    return ((1 - c) @ c.T).double()  # exact: float32 sums of 0/1 are exact below 2**24 samples


def per_class_flips(correct: torch.Tensor, labels: torch.Tensor, num_classes: int, rows: slice = slice(None)):
    """pos_k[s, t, k] for the students in ``rows``: positive flips whose true class is k."""
    c = correct.to(torch.float32)
    cs = c[rows]
    out = torch.zeros(cs.shape[0], c.shape[0], num_classes, dtype=torch.float64)
    for k in range(num_classes):  # a partition of the columns: the total work is one matrix product
        cols = labels == k
        if cols.any():
            out[:, :, k] = ((1 - cs[:, cols]) @ c[:, cols].T).double()
    return out


def concentration(counts: torch.Tensor, top_p=TOP_P) -> dict[str, torch.Tensor]:
    """Entropy (natural log) of the per-class flip distribution and the top-p% class counts, per pair."""
    counts = counts.double()
    total = counts.sum(dim=-1)
    p = counts / total.clamp_min(1).unsqueeze(-1)
    entropy = -torch.special.xlogy(p, p).sum(dim=-1)  # 0 log 0 = 0
    share = torch.sort(p, dim=-1, descending=True).values.cumsum(dim=-1)
    out = {"flip_entropy": entropy}
    for q in top_p:
        # the smallest number of classes whose cumulative share reaches q% (0 when there are no flips)
        n = (share < q / 100 - 1e-12).sum(dim=-1) + 1
        out[f"top{q}_classes"] = torch.where(total > 0, n, torch.zeros_like(n))
    return out


def pair_matrices(preds: torch.Tensor, labels: torch.Tensor, pmax: torch.Tensor, num_classes: int,
                  chunk_bytes: int = 256 << 20) -> dict[str, torch.Tensor]:
    """Every pair metric as an M x M matrix (row: student, column: teacher), percentages of the eval set."""
    m, n = preds.shape
    correct = preds == labels.view(1, -1)
    acc = correct.double().mean(dim=1) * 100
    pos = flip_counts(correct) * 100 / n
    both_right = (correct.float() @ correct.float().T).double()

    agree = torch.zeros(m, m, dtype=torch.float64)
    ens = torch.zeros(m, m, dtype=torch.float64)
    conc: dict[str, list[torch.Tensor]] = {}
    rows_per_chunk = max(1, chunk_bytes // max(1, 8 * m * max(n, num_classes)))
    for start in range(0, m, rows_per_chunk):
        rows = slice(start, min(m, start + rows_per_chunk))
        same = preds[rows].unsqueeze(1) == preds.unsqueeze(0)  # chunk x M x n
        agree[rows] = same.double().sum(dim=-1)
        student_surer = pmax[rows].unsqueeze(1) >= pmax.unsqueeze(0)  # ties go to the student
        ens[rows] = torch.where(student_surer, correct[rows].unsqueeze(1), correct.unsqueeze(0)).double().sum(-1)
        for key, val in concentration(per_class_flips(correct, labels, num_classes, rows)).items():
            conc.setdefault(key, []).append(val)

    out = {
        "acc_student": acc.view(-1, 1).expand(m, m),
        "acc_teacher": acc.view(1, -1).expand(m, m),
        "rho_pos": pos,
        "rho_neg": pos.T,
        "agreement": agree * 100 / n,
        "oracle_acc": acc.view(-1, 1) + pos,
        "ensemble_acc": ens * 100 / n,
        "both_right": both_right * 100 / n,
    }
    out["acc_gap"] = out["acc_teacher"] - out["acc_student"]
    out.update({k: torch.cat(v) for k, v in conc.items()})
    return out


def pairs_frame(names: list[str], preds, labels, pmax, num_classes: int) -> pd.DataFrame:
    """All ordered pairs (student != teacher) as rows, ready for the store's pairs table."""
    mats = pair_matrices(torch.as_tensor(preds), torch.as_tensor(labels), torch.as_tensor(pmax), num_classes)
    m = len(names)
    s_idx, t_idx = np.nonzero(~np.eye(m, dtype=bool))
    df = pd.DataFrame({"student": np.asarray(names)[s_idx], "teacher": np.asarray(names)[t_idx]})
    for key, mat in mats.items():
        if key == "both_right":
            continue
        df[key] = mat.numpy()[s_idx, t_idx]
    return df
