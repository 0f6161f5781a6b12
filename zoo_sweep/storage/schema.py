"""The store's tables. Metric columns come from the metrics the science and transfer layers declare
(``science.pair_metrics``, ``transfer.result_metrics``), so a new metric is one declaration in one place:
``zoo-sweep db upgrade`` adds the columns of declared metrics that an existing store lacks (``METRIC_COLUMNS``;
migrate.py), without a migration script.

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
# the columns of declared metrics: added by `zoo-sweep db upgrade` where a store lacks them (never by a migration
# script: one that added a metric column would clash with a store that already has it)
METRIC_COLUMNS: dict[str, tuple[str, ...]] = {"pairs": PAIR_METRICS + CLASS_COUNTS,
                                              "transfer_results": TRANSFER_METRICS}

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


# ---------------------------------------------------------------------- docs/store.md's metric tables
DOC_BEGIN, DOC_END = "<!-- metric tables: generated -->", "<!-- end of generated metric tables -->"


def metric_tables() -> str:
    """The declared metrics as docs/store.md lists them (``python -m zoo_sweep.storage.schema --write
    docs/store.md`` puts them between its markers; a test holds the page to it)."""
    from zoo_sweep.science.pair_metrics import PAIR_DECLARED
    from zoo_sweep.transfer.result_metrics import TRANSFER_DECLARED

    out = [DOC_BEGIN]
    for table, declared in (("pairs", PAIR_DECLARED), ("transfer_results", TRANSFER_DECLARED)):
        out += ["", f"`{table}` metric columns:", "", "| column | unit | meaning | computed by |", "|---|---|---|---|"]
        out += [f"| `{m.name}` | {m.unit or '-'} | {m.description} | {m.group} |" for m in declared]
    return "\n".join([*out, "", DOC_END])


def write_metric_tables(path: str) -> bool:
    """Replace the generated part of ``path``; True when it changed."""
    from pathlib import Path

    text = Path(path).read_text()
    head, rest = text.split(DOC_BEGIN, 1)
    new = head + metric_tables() + rest.split(DOC_END, 1)[1]
    Path(path).write_text(new)
    return new != text


if __name__ == "__main__":
    import sys

    for target in sys.argv[sys.argv.index("--write") + 1:] if "--write" in sys.argv else []:
        print(f"{target}: {'written' if write_metric_tables(target) else 'unchanged'}")
    if "--write" not in sys.argv:
        print(metric_tables())
