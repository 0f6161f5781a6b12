"""A metric declared after a store was made needs no migration script: opening the store names the one command,
`zoo-sweep db upgrade`, which adds the column (NULL for the results written before) and keeps every row.

The store "made before the metric existed" is a current store with one metric column dropped, which is exactly
what such a store holds."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from cli_helpers import invoke, one_error_line

from zoo_sweep.errors import UserError
from zoo_sweep.storage.schema import METRIC_COLUMNS
from zoo_sweep.storage.store import Store
from zoo_sweep.transfer.result_metrics import TRANSFER_DECLARED


def _store_without(tmp_path, table: str, column: str) -> str:
    url = f"sqlite:///{tmp_path / 'zoo.db'}"
    Store(url).engine.dispose()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("insert into transfer_results (job_id, epoch, final, eval_set, student, teacher, "
                             "method, seed, delta) values ('t1', 1, 1, 'e', 's', 't', 'kl', 0, 0.5)"))
        conn.execute(sa.text(f"alter table {table} drop column {column}"))
    engine.dispose()
    return url


@pytest.mark.parametrize("table, column", [("transfer_results", TRANSFER_DECLARED[-1].name),
                                           ("pairs", METRIC_COLUMNS["pairs"][-1])])
def test_a_store_without_a_declared_metric_column_is_upgraded_in_place(tmp_path, table, column):
    url = _store_without(tmp_path, table, column)
    with pytest.raises(UserError, match=rf"lacks the column\(s\) of metrics .*{table}\.{column}.*zoo-sweep db upgrade"):
        Store(url)
    line = one_error_line(invoke("--db", url, "query", "select count(*) from jobs"))  # every command says it
    assert "run `zoo-sweep db upgrade`" in line
    r = invoke("--db", url, "db", "upgrade")
    assert r.exit_code == 0, r.stdout + r.stderr
    assert f"added 1 metric column(s): {table}.{column} (NULL for earlier results)" in r.stdout, r.stdout
    assert "nothing to do" not in r.stdout
    store = Store(url)  # opens: the schema is complete again
    rows = store.query("select * from transfer_results")
    assert len(rows) == 1 and rows["delta"].iloc[0] == 0.5
    if table == "transfer_results":
        assert rows[column].isna().all()
    assert "nothing to do" in invoke("--db", url, "db", "upgrade").stdout

