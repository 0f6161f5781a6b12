"""Version 4: jobs carry the launcher that runs them (``owner``) and until when its claim holds
(``lease_until``), so two launchers on one sweep never run a job twice and a dead launcher's jobs are
taken over once its leases run out."""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("owner", sa.String))
    op.add_column("jobs", sa.Column("lease_until", sa.Float))
