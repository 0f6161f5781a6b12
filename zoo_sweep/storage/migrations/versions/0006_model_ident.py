"""Version 6: models carry ``ident``, the hash of what a row was measured with (the model's architecture,
weights and preprocessing; the decoded eval set). Results are kept per model name, so a plan that gives a
stored name to a different model, or other eval data, says that its results will replace the stored ones.
Rows written before stay empty until a plan names them."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("models", sa.Column("ident", sa.String))
