"""The names of the pair metrics, without torch: the store's pairs table and the report take their columns
from here, and ``complementary.pair_matrices`` computes exactly these.

All are percentages of the eval set except ``flip_entropy`` (nats) and the top-p % class counts: how many
classes hold p % of a pair's positive flips, taken by descending count. ``top<p>_classes`` is the exact count,
the fewest such classes; ``top<p>_classes_paper`` is the count in the convention of the paper's figures, the
number the authors' loop returns (distillation/flip_study.py, get_top_p_percent_classes): one more than the
exact count, and 2 for a pair without positive flips (its share is undefined after one class, which ends the
loop). A table set beside the paper's figures should use the ``_paper`` columns, and say so.
"""

from __future__ import annotations

TOP_P = (2, 5, 20, 50)  # percent of the positive flips whose class count is reported
PAIR_METRICS = ("acc_student", "acc_teacher", "acc_gap", "rho_pos", "rho_neg", "agreement", "oracle_acc",
                "ensemble_acc", "flip_entropy")  # real numbers
CLASS_COUNTS = (*(f"top{p}_classes" for p in TOP_P), *(f"top{p}_classes_paper" for p in TOP_P))  # integers
