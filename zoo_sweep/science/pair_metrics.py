"""The pair metrics, declared once, without torch: the store's pairs table, the report and docs/store.md take
their columns and meanings from here, and ``complementary.pair_matrices`` computes each group through the
function registered under the group's name (a test holds the two to the same names).

All are percentages of the eval set except ``flip_entropy`` (nats) and the top-p % class counts: how many
classes hold p % of a pair's positive flips, taken by descending count. ``top<p>_classes`` is the exact count,
the fewest such classes; ``top<p>_classes_paper`` is the count in the convention of the paper's figures, the
number the authors' loop returns (distillation/flip_study.py, get_top_p_percent_classes): one more than the
exact count, and 2 for a pair without positive flips (its share is undefined after one class, which ends the
loop). A table set beside the paper's figures should use the ``_paper`` columns, and say so.

A new metric is one :class:`Metric` here, in the group whose function computes it (or a new group with its
function in ``complementary.py``). Its column reaches existing stores through ``zoo-sweep db upgrade``, which
adds every declared metric column a store lacks: no migration script per metric.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    """One stored number: its column name, unit, meaning (docs/store.md) and the group that computes it."""
    name: str
    unit: str
    description: str
    group: str
    integer: bool = False  # stored as an integer column (counts)


TOP_P = (2, 5, 20, 50)  # percent of the positive flips whose class count is reported
# the groups a compare run may leave out (``pair_matrices(metrics=...)``); "flips" is always computed
PAIR_GROUPS = ("flips", "agreement", "ensemble", "classes")

PAIR_DECLARED: tuple[Metric, ...] = (
    Metric("acc_student", "%", "the student's accuracy", "flips"),
    Metric("acc_teacher", "%", "the teacher's accuracy", "flips"),
    Metric("acc_gap", "%", "acc_teacher - acc_student", "flips"),
    Metric("rho_pos", "%", "positive flips: samples the teacher gets right and the student wrong (the teacher's "
                           "complementary knowledge)", "flips"),
    Metric("rho_neg", "%", "negative flips: samples the student gets right and the teacher wrong", "flips"),
    Metric("agreement", "%", "samples where both predict the same class, right or wrong", "agreement"),
    Metric("oracle_acc", "%", "samples at least one of the two gets right", "flips"),
    Metric("ensemble_acc", "%", "accuracy of the pair's confidence ensemble (per sample, the surer model's "
                                "prediction)", "ensemble"),
    Metric("flip_entropy", "nats", "entropy of the positive flips' distribution over classes", "classes"),
    *(Metric(f"top{p}_classes", "classes", f"the fewest classes holding {p} % of the positive flips", "classes",
             integer=True) for p in TOP_P),
    *(Metric(f"top{p}_classes_paper", "classes", f"top{p}_classes in the convention of the paper's figures "
                                                 "(the authors' count: one more)", "classes", integer=True)
      for p in TOP_P),
)
PAIR_METRICS = tuple(m.name for m in PAIR_DECLARED if not m.integer)  # real numbers
CLASS_COUNTS = tuple(m.name for m in PAIR_DECLARED if m.integer)  # integers


def group_metrics(group: str) -> tuple[str, ...]:
    """The names of the pair metrics ``group`` computes."""
    return tuple(m.name for m in PAIR_DECLARED if m.group == group)
