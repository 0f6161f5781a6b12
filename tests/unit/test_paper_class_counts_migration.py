"""Schema version 7 adds the pairs' top-p % class counts in the paper's convention and fills them in for rows
written before, from their exact counts, by the same rule the compare stage uses (science/classes.py)."""

import sqlalchemy as sa
import torch
from alembic import command

from zoo_sweep.science.classes import paper_count
from zoo_sweep.science.pair_metrics import TOP_P
from zoo_sweep.storage import migrate


def test_upgrade_fills_the_paper_counts_of_stored_pairs(tmp_path):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'zoo.db'}")
    with migrate._locked(engine) as conn:
        command.upgrade(migrate.alembic_config(conn), "0006")
    exact = {"a": 0, "b": 1, "c": 7, "d": None}  # no flips, one class, seven, the classes group left out
    with engine.begin() as conn:
        for teacher, k in exact.items():
            conn.execute(sa.text("insert into pairs (eval_set, student, teacher, "
                                 + ", ".join(f"top{p}_classes" for p in TOP_P) + ") values ('e', 's', :t, "
                                 + ", ".join(":k" for _ in TOP_P) + ")"), {"t": teacher, "k": k})
    u = migrate.upgrade(engine, "test store")
    assert (u.before, u.after, u.added) == (6, 7, ())
    with engine.connect() as conn:
        got = dict(conn.execute(sa.text("select teacher, top2_classes_paper from pairs")).tuples().all())
        same = conn.execute(sa.text("select count(*) from pairs where " + " and ".join(
            f"top{p}_classes_paper is top2_classes_paper" for p in TOP_P))).scalar()
    engine.dispose()
    for teacher, k in exact.items():
        assert got[teacher] == (None if k is None else int(paper_count(torch.tensor(k))))
    assert same == len(exact)
    assert [got[t] for t in "abc"] == [2, 2, 8]
