"""Version 5: both transfer rates, under different names. ``transfer_rate`` was the sample-level rate (the share
of the pair's positive-flip samples the student now gets right); it becomes ``transfer_rate_sample``. The
paper's class-level rate and its top-p % variants are new columns, empty for results written before them.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TOP_P = (2, 5, 20, 50, 100)
NEW = ("transfer_rate_class", *(f"transfer_rate_class_top{p}" for p in TOP_P if p != 100),
       *(f"improve_top{p}" for p in TOP_P), "transfer_rate_class_paper", *(f"improve_top{p}_paper" for p in TOP_P))


def upgrade() -> None:
    with op.batch_alter_table("transfer_results") as batch:  # SQLite renames through a table copy
        batch.alter_column("transfer_rate", new_column_name="transfer_rate_sample")
    for name in NEW:
        op.add_column("transfer_results", sa.Column(name, sa.Float))
