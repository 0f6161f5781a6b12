"""Version 2: the jobs table's JSON column is ``payload`` (``spec`` names the sweep spec only).

A plain column rename on both backends (SQLite >= 3.25 renames in place): no table copy, so a ledger of
millions of jobs upgrades in a moment.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("jobs", "spec", new_column_name="payload")
