"""Version 1: the store layout before versioning (sweeps, models, jobs, sweep_jobs, pairs, transfer_results).

A store written before the version table existed is at this version; ``zoo-sweep db upgrade`` stamps it
so and goes on from here. The columns are written out, not taken from schema.py: a migration is history.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PAIR_FLOATS = ("acc_student", "acc_teacher", "acc_gap", "rho_pos", "rho_neg", "agreement", "oracle_acc",
               "ensemble_acc", "flip_entropy")
TRANSFER_FLOATS = ("student_acc", "s0_acc", "delta", "knowledge_gain", "knowledge_loss", "rho_pos_before",
                   "rho_pos_after", "rho_pos_change", "transfer_rate", "damage_rate", "teacher_share", "train_loss")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("spec_hash", sa.String, nullable=False),
        sa.Column("path", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "models",
        sa.Column("name", sa.String, primary_key=True),
        sa.Column("eval_set", sa.String, primary_key=True),
        sa.Column("arch", sa.String, nullable=False),
        sa.Column("family", sa.String, nullable=False),
        sa.Column("params", sa.BigInteger),
        sa.Column("accuracy", sa.Float),
        sa.Column("record", sa.String),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String, primary_key=True),
        sa.Column("kind", sa.String, nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("error", sa.Text),
        sa.Column("worker", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float),
        sa.Column("finished_at", sa.Float),
        sa.Column("seconds", sa.Float),
    )
    op.create_index("ix_jobs_state", "jobs", ["kind", "state"])
    op.create_table(
        "sweep_jobs",
        sa.Column("sweep", sa.String, primary_key=True),
        sa.Column("job_id", sa.String, primary_key=True),
    )
    op.create_table(
        "pairs",
        sa.Column("eval_set", sa.String, primary_key=True),
        sa.Column("student", sa.String, primary_key=True),
        sa.Column("teacher", sa.String, primary_key=True),
        *[sa.Column(c, sa.Float) for c in PAIR_FLOATS],
        *[sa.Column(f"top{p}_classes", sa.Integer) for p in (2, 5, 20, 50)],
    )
    op.create_table(
        "transfer_results",
        sa.Column("job_id", sa.String, primary_key=True),
        sa.Column("epoch", sa.Integer, primary_key=True),
        sa.Column("final", sa.Boolean, nullable=False),
        sa.Column("eval_set", sa.String, nullable=False),
        sa.Column("student", sa.String, nullable=False),
        sa.Column("teacher", sa.String, nullable=False),
        sa.Column("method", sa.String, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        *[sa.Column(c, sa.Float) for c in TRANSFER_FLOATS],
    )
    op.create_index("ix_transfer_final", "transfer_results", ["final", "method"])
