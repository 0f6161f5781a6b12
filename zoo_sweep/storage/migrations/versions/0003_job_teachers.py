"""Version 3: the teachers of multi-teacher jobs in their own table, ``job_teachers`` (job, position, teacher).

Before, a multi-teacher job's rows named its teachers joined by "+" in transfer_results.teacher, which a
model name containing "+" breaks. The teachers are filled in from each job's payload, which lists them.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        "job_teachers",
        sa.Column("job_id", sa.String, primary_key=True),
        sa.Column("position", sa.Integer, primary_key=True),
        sa.Column("teacher", sa.String, nullable=False),
    )
    jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("kind", sa.String),
                    sa.column("payload", sa.Text))
    conn = op.get_bind()
    # only multi-teacher payloads have the key: the LIKE keeps the JSON decoding to those
    found = conn.execute(sa.select(jobs.c.id, jobs.c.payload).where(
        jobs.c.kind == "transfer", jobs.c.payload.like('%"teachers"%')))
    rows = []
    for job_id, payload in found:
        teachers = json.loads(payload).get("teachers") or []
        rows += [{"job_id": job_id, "position": i, "teacher": t["name"]} for i, t in enumerate(teachers)]
    if rows:
        op.bulk_insert(table, rows)
