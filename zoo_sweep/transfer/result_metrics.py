"""The names of what a transfer job reports per epoch, without torch: the store's transfer_results columns
come from here. ``metrics.transfer_metrics`` computes the eval-set metrics, the training loop adds the
training ones."""

from __future__ import annotations

EVAL_METRICS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss", "rho_pos_before",
                "rho_pos_after", "rho_pos_change", "transfer_rate", "damage_rate")
TRAINING_METRICS = ("teacher_share", "train_loss")  # share of samples routed to the teacher (%), mean loss
TRANSFER_METRICS = EVAL_METRICS + TRAINING_METRICS
