"""The names of what a transfer job reports per epoch, without torch: the store's transfer_results columns
come from here. ``metrics.transfer_metrics`` computes the eval-set metrics, the training loop adds the
training ones."""

from __future__ import annotations

EVAL_METRICS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss", "rho_pos_before",
                "rho_pos_after", "rho_pos_change", "transfer_rate_sample", "damage_rate")
RATE_TOP_P = (2, 5, 20, 50, 100)  # percent of the positive flips of (s0, t): the teacher's top-p % classes
# the paper's class-level transfer rate and its top-p % variants, with exact top-p % class counts, then the
# same in the authors' convention (their count + 1), for figures set beside the paper's
CLASS_RATE_METRICS = (
    "transfer_rate_class", *(f"transfer_rate_class_top{p}" for p in RATE_TOP_P if p != 100),
    *(f"improve_top{p}" for p in RATE_TOP_P),
    "transfer_rate_class_paper", *(f"improve_top{p}_paper" for p in RATE_TOP_P),
)
TRAINING_METRICS = ("teacher_share", "train_loss")  # share of samples routed to the teacher (%), mean loss
TRANSFER_METRICS = EVAL_METRICS + CLASS_RATE_METRICS + TRAINING_METRICS
