"""Same-wrong counts for the agreement metric: sw[s, t] = #{x : s and t both wrong at x, same predicted class}.

Per block of samples, the wrong predictions are grouped by (sample, predicted class) with one bincount (no
sort). Every group of two or more models is one table row (the 0/1 vector of its members), and each member
adds its group's row to its own counts (bags.take_sums): ~M adds per wrong entry in a group, where a product
column per group costs M^2 multiply-adds (and an int8 unit to be cheap). Singletons are dropped: they only
touch the diagonal, which agreement sets to n anyway.
"""

from __future__ import annotations

import torch

from zoo_sweep.science.bags import Layout, fill_table, run_blocks, spans, take_sums

_BINS = 1 << 22  # (sample, class) bins of one block's bincount


def same_wrong_counts(preds: torch.Tensor, wrong: torch.Tensor, num_classes: int, span: int | None = None,
                      workers: int | None = None) -> torch.Tensor:
    """sw as int64 M x M (off-diagonal exact; the diagonal counts a model's wrong entries that share their
    class with another model). Work and result stay on the device of ``preds``."""
    m, n = preds.shape
    k = max(1, int(num_classes))
    wrong = wrong.to(device=preds.device, dtype=torch.bool)
    span = span or max(1, min(256 if preds.device.type == "cpu" else 2048, _BINS // k))

    def block(x0, x1, table, sums):
        nx = x1 - x0
        # model-major (M x X), the bags' order: no transposing copies
        key = torch.empty(m, nx, dtype=torch.int64, device=preds.device).copy_(preds[:, x0:x1])
        key += (torch.arange(nx, device=preds.device) * k).view(1, -1)
        key.masked_fill_(~wrong[:, x0:x1], nx * k)  # right entries count in a spare bin: no compaction pass
        multi = (torch.bincount(key.view(-1), minlength=nx * k + 1)[:-1] >= 2).view(nx, k)
        gid = torch.cumsum(multi, dim=1, dtype=torch.int32)  # group number among the classes of 2+ wrongs
        gid.mul_(multi)
        gid = torch.cat([gid.view(-1), gid.new_zeros(1)])  # the spare bin: no group
        code = gid.index_select(0, key.view(-1)).view(m, nx)  # each wrong entry's group (0: none)
        layout = Layout(multi.sum(dim=1))
        fill_table(table, layout, code.T, equal=True)
        take = code > 0
        sums[0].add(take_sums(table, code.neg_().sub_(layout.first.to(torch.int32).view(1, -1)), take))

    return run_blocks(spans(n, span), block, m, preds.device, outputs=1, workers=workers)[0]
