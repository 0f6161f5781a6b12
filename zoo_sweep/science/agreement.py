"""Same-wrong counts for the agreement metric: sw[s, t] = #{x : s and t both wrong at x, same predicted class}.

Per block of samples, the predictions are grouped by (sample, predicted class) with one bincount (no sort).
The bin of a sample's own label holds its right predictions and is not a group, so the right/wrong mask is
never needed. Every bin of two or more wrong predictions is one table row (the 0/1 vector of its members,
set by one scatter), and each member adds its group's row to its own counts (an embedding-bag sum over the
members' rows): ~M adds per wrong entry in a group, where a product column per group costs M^2 multiply-adds
(and an int8 unit to be cheap). Singletons are dropped: they only touch the diagonal, which agreement sets to
n anyway.

sw is symmetric, so the models are split in halves: the first half's entries sum whole rows, the second
half's only the second half of each row (a second, narrower table), and the missing quarter is the
transpose of a computed one: 3/4 of the adds.
"""

from __future__ import annotations

import numpy as np
import torch

from zoo_sweep.science.bags import block_span, run_blocks, spans

_BINS = 1 << 22  # (sample, class) bins of one block's bincount


def same_wrong_counts(preds: torch.Tensor, labels: torch.Tensor, num_classes: int, span: int | None = None,
                      workers: int | None = None) -> torch.Tensor:
    """sw as int64 M x M (off-diagonal exact; the diagonal counts a model's wrong entries that share their
    class with another model). Work and result stay on the device of ``preds``."""
    m, n = preds.shape
    dev = preds.device
    if m < 2:
        return torch.zeros(m, m, dtype=torch.int64, device=dev)
    k = max(1, int(num_classes))
    labels = labels.to(device=dev)
    span = block_span(dev, span, _BINS // k)
    kdt = torch.int32 if span * k < (1 << 31) else torch.int64  # int32 keys: half the bytes of every pass
    h = m // 2  # models [0, h) count against all, models [h, m) against [h, m) only

    def block(x0, x1, tables, sums):
        nx = x1 - x0
        base = torch.arange(nx, device=dev, dtype=kdt) * k
        key = torch.add(preds[:, x0:x1].to(kdt), base.view(1, -1))  # (sample, class) bin, model-major
        count = torch.bincount(key.view(-1), minlength=nx * k)
        count[base + labels[x0:x1].to(kdt)] = 0  # the label's bin holds the right entries: no group
        multi = count >= 2
        row = torch.cumsum(multi, 0, dtype=torch.int32)  # bin -> its group's table row, -1 for no group
        rows = int(row[-1]) if row.numel() else 0
        if rows == 0:
            return
        row.mul_(multi).sub_(1)
        code = row.index_select(0, key.view(-1)).view(m, nx)
        take = code >= 0
        if dev.type == "cpu":  # numpy's compress is ~4x faster than torch's boolean indexing here
            idx = torch.from_numpy(np.compress(take.numpy().ravel(), code.numpy().ravel()))
        else:
            idx = code[take]
        per_model = take.sum(dim=1, dtype=torch.int32)
        members = torch.repeat_interleave(torch.arange(m, device=dev, dtype=torch.int32), per_model)
        offsets = torch.zeros(m + 1, dtype=torch.int32, device=dev)
        torch.cumsum(per_model, 0, out=offsets[1:])
        a = int(offsets[h])  # entries are model-major: the second half's are a suffix
        tables[0].set_members(rows, idx, members)
        tables[1].set_members(rows, idx[a:], members[a:] - h)
        sums[0].add(tables[0].sum(idx[:a], offsets[:h + 1]))
        sums[1].add(tables[1].sum(idx[a:], offsets[h:] - a))

    low, high = run_blocks(spans(n, span), block, m, dev, outputs=[(h, m), (m - h, m - h)], workers=workers,
                           tables=[m, m - h])
    out = torch.empty(m, m, dtype=torch.int64, device=dev)
    out[:h] = low
    out[h:, h:] = high
    out[h:, :h] = low[:, h:].T
    return out
