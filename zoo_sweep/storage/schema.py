"""The store's tables. Metric columns come from the metric names the science and transfer layers declare
(``science.pair_metrics``, ``transfer.result_metrics``), so a new metric is one name in one place plus a
migration (storage/migrations/versions) that adds its column to existing stores.

``SCHEMA_VERSION`` is the migration a store created by this code is at; a test holds it to the newest
migration script, and another to ``metadata`` (a store upgraded step by step has exactly these tables).
"""

from __future__ import annotations

from enum import StrEnum

import sqlalchemy as sa

from zoo_sweep.science.pair_metrics import CLASS_COUNTS, PAIR_METRICS
from zoo_sweep.transfer.result_metrics import TRANSFER_METRICS

SCHEMA_VERSION = 7
VERSION_TABLE = "schema_version"  # Alembic's version table, under a name no other tool's store uses


class JobState(StrEnum):
    """A job's state, as the jobs table's ``state`` column holds it (the job model above the store uses it too)."""
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    DIVERGED = "diverged"  # the loss became NaN/inf: a result of the hyper-parameters, not an error
    INTERRUPTED = "interrupted"  # Ctrl-C while it ran: pending again on the next launch
    CANCELLED = "cancelled"  # skipped until `zoo-sweep reset --state cancelled`


JOB_STATES = tuple(s.value for s in JobState)

metadata = sa.MetaData()

sweeps = sa.Table(
    "sweeps", metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("spec", sa.Text, nullable=False),  # the parsed sweep spec as JSON
    sa.Column("spec_hash", sa.String, nullable=False),
    sa.Column("path", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)

models = sa.Table(
    "models", metadata,
    sa.Column("name", sa.String, primary_key=True),
    sa.Column("eval_set", sa.String, primary_key=True),  # a model's accuracy is on one eval set
    sa.Column("arch", sa.String, nullable=False),
    sa.Column("family", sa.String, nullable=False),
    sa.Column("params", sa.BigInteger),
    sa.Column("accuracy", sa.Float),  # percent; NULL until its predict job is done
    sa.Column("record", sa.String),  # prediction record file
    # hash of the model the name stands for (architecture, weights, preprocessing): results are kept per name,
    # so a plan that gives the name to another model warns that they will be replaced
    sa.Column("ident", sa.String),
)

jobs = sa.Table(
    "jobs", metadata,
    sa.Column("id", sa.String, primary_key=True),  # hash of everything that determines the result
    sa.Column("kind", sa.String, nullable=False),  # predict | compare | transfer
    sa.Column("payload", sa.Text, nullable=False),  # what the worker needs to run the job, as JSON
    sa.Column("state", sa.String, nullable=False, default="pending"),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("error", sa.Text),
    sa.Column("worker", sa.String),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.Column("seconds", sa.Float),
    # the launcher running the job and until when its claim holds; it renews the claim while the job runs,
    # so a job whose lease has run out belongs to a launcher that died and may be taken over
    sa.Column("owner", sa.String),
    sa.Column("lease_until", sa.Float),
)

sweep_jobs = sa.Table(
    "sweep_jobs", metadata,  # content-addressed jobs are shared: two sweeps may own the same job
    sa.Column("sweep", sa.String, primary_key=True),
    sa.Column("job_id", sa.String, primary_key=True),
)

pairs = sa.Table(
    "pairs", metadata,
    sa.Column("eval_set", sa.String, primary_key=True),
    sa.Column("student", sa.String, primary_key=True),
    sa.Column("teacher", sa.String, primary_key=True),
    *[sa.Column(c, sa.Float) for c in PAIR_METRICS],
    *[sa.Column(c, sa.Integer) for c in CLASS_COUNTS],
)

transfer_results = sa.Table(
    "transfer_results", metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),
    sa.Column("final", sa.Boolean, nullable=False),
    sa.Column("eval_set", sa.String, nullable=False),
    sa.Column("student", sa.String, nullable=False),
    # the teacher of a single-teacher job; for a multi-teacher job a label only (its teachers are in
    # job_teachers, since a model name may itself contain any character)
    sa.Column("teacher", sa.String, nullable=False),
    sa.Column("method", sa.String, nullable=False),
    sa.Column("seed", sa.Integer, nullable=False),
    *[sa.Column(c, sa.Float) for c in TRANSFER_METRICS],
)

job_teachers = sa.Table(
    "job_teachers", metadata,  # the teachers of multi-teacher jobs, in the job's order
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("teacher", sa.String, nullable=False),
)

sa.Index("ix_transfer_final", transfer_results.c.final, transfer_results.c.method)
sa.Index("ix_jobs_state", jobs.c.kind, jobs.c.state)

# the tables of the first store layout (schema version 1, before the version table existed), for telling
# such a store from a foreign database and for upgrading it
V1_TABLES = ("sweeps", "models", "jobs", "sweep_jobs", "pairs", "transfer_results")
