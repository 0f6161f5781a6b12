"""Version 7: the pairs' top-p % class counts also in the convention of the paper's figures
(``top{p}_classes_paper``: the number the authors' loop returns, one more than the exact count, and 2 for a
pair without positive flips; science/classes.py, ``paper_count``). That count follows from the exact one, so
rows written before are filled in from theirs; rows without exact counts stay empty."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TOP_P = (2, 5, 20, 50)


def upgrade() -> None:
    for p in TOP_P:
        op.add_column("pairs", sa.Column(f"top{p}_classes_paper", sa.Integer))
    pairs = sa.table("pairs", *[sa.column(f"top{p}_classes{s}", sa.Integer) for p in TOP_P for s in ("", "_paper")])
    op.execute(pairs.update().values({
        f"top{p}_classes_paper": sa.case((pairs.c[f"top{p}_classes"] < 1, 2), else_=pairs.c[f"top{p}_classes"] + 1)
        for p in TOP_P}))
