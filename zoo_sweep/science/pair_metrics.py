"""The names of the pair metrics, without torch: the store's pairs table and the report take their columns
from here, and ``complementary.pair_matrices`` computes exactly these.

All are percentages of the eval set except ``flip_entropy`` (nats) and the ``top<p>_classes`` counts: how
many classes hold p % of a pair's positive flips.
"""

from __future__ import annotations

TOP_P = (2, 5, 20, 50)  # percent of the positive flips whose class count is reported
PAIR_METRICS = ("acc_student", "acc_teacher", "acc_gap", "rho_pos", "rho_neg", "agreement", "oracle_acc",
                "ensemble_acc", "flip_entropy")  # real numbers
CLASS_COUNTS = tuple(f"top{p}_classes" for p in TOP_P)  # integers
