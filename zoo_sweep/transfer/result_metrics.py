"""What a transfer job reports per epoch, declared once and without torch: the store's transfer_results
columns, docs/store.md's table of them and the trackers' metric names come from here. ``metrics.py`` computes
each eval group through the function registered under its name (a test holds the two to the same names); the
training loop adds the training ones.

A new metric is one :class:`Metric` here, in the group whose function computes it. Its column reaches existing
stores through ``zoo-sweep db upgrade``, which adds every declared metric column a store lacks: no migration
script per metric.
"""

from __future__ import annotations

from zoo_sweep.science.pair_metrics import Metric

RATE_TOP_P = (2, 5, 20, 50, 100)  # percent of the positive flips of (s0, t): the teacher's top-p % classes
_SAMPLES = "of the eval set"

TRANSFER_DECLARED: tuple[Metric, ...] = (
    Metric("student_acc", "%", "the student's accuracy after transfer (s_T)", "eval"),
    Metric("s0_acc", "%", "the student's accuracy before transfer (s0)", "eval"),
    Metric("delta", "%", "student_acc - s0_acc (= knowledge_gain - knowledge_loss)", "eval"),
    Metric("knowledge_gain", "%", f"samples s0 got wrong and s_T gets right, {_SAMPLES}", "eval"),
    Metric("knowledge_loss", "%", f"samples s0 got right and s_T gets wrong, {_SAMPLES}", "eval"),
    Metric("rho_pos_before", "%", "the teacher's complementary knowledge over s0 (positive flips)", "eval"),
    Metric("rho_pos_after", "%", "the teacher's complementary knowledge over s_T", "eval"),
    Metric("rho_pos_change", "%", "rho_pos_after - rho_pos_before", "eval"),
    Metric("transfer_rate_sample", "%", "share of the positive-flip samples of (s0, t) that s_T gets right",
           "eval"),
    Metric("damage_rate", "%", "share of the negative-flip samples of (s0, t) that s_T gets wrong", "eval"),
    # the paper's class-level transfer rate and its top-p % variants, with exact top-p % class counts, then the
    # same in the authors' convention (their count + 1), for figures set beside the paper's
    Metric("transfer_rate_class", "%", "the paper's transfer rate: s_T's gain in the flip classes over all "
                                       "positive flips of (s0, t)", "class_rates"),
    *(Metric(f"transfer_rate_class_top{p}", "%", f"transfer_rate_class over the teacher's top-{p} % flip classes",
             "class_rates") for p in RATE_TOP_P if p != 100),
    *(Metric(f"improve_top{p}", "%", f"share of s_T's gain in the teacher's top-{p} % flip classes", "class_rates")
      for p in RATE_TOP_P),
    Metric("transfer_rate_class_paper", "%", "transfer_rate_class, the authors' convention", "class_rates"),
    *(Metric(f"improve_top{p}_paper", "%", f"improve_top{p}, the authors' convention (one class more)",
             "class_rates") for p in RATE_TOP_P),
    Metric("teacher_share", "%", "share of the epoch's samples whose target came from the teacher", "training"),
    Metric("train_loss", "", "the epoch's mean training loss", "training"),
)


def _names(*groups: str) -> tuple[str, ...]:
    return tuple(m.name for m in TRANSFER_DECLARED if m.group in groups)


EVAL_METRICS = _names("eval")
CLASS_RATE_METRICS = _names("class_rates")
TRAINING_METRICS = _names("training")
TRANSFER_METRICS = tuple(m.name for m in TRANSFER_DECLARED)
