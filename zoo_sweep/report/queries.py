"""The SQL behind every report table: the page shows each query with its parameters filled in, ready for
``zoo-sweep query``."""

from __future__ import annotations

import re

import pandas as pd

from zoo_sweep.storage.store import Store

SQL = {
    "models": """
        select m.name, m.family, m.params, round(m.accuracy, 2) as accuracy from models m
        where m.eval_set = :eval_set and m.name in (
            select student from pairs where eval_set = :eval_set
            union select teacher from pairs where eval_set = :eval_set)
        order by m.accuracy desc""",
    "pairs": "select * from pairs where eval_set = :eval_set",
    "transfers": """
        select r.* from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep and r.final""",
    # one row per (method, student, teacher): the final epoch, averaged over seeds, single-teacher jobs only.
    # gains.per_pair is the same filter on frames; this stays SQL so that the report can show the query behind
    # its tables (test_final_row_filter_is_the_same_in_sql_and_pandas keeps the two in step)
    "transfer_pairs": """
        select r.method, r.student, r.teacher, count(*) as seeds,
               avg(r.delta) as delta, avg(r.knowledge_gain) as knowledge_gain,
               avg(r.knowledge_loss) as knowledge_loss, avg(r.transfer_rate) as transfer_rate,
               avg(r.s0_acc) as student_acc, max(p.acc_gap) as acc_gap, max(p.rho_pos) as rho_pos,
               max(p.rho_neg) as rho_neg, max(ms.family) as student_family,
               max(ms.params) as student_params, max(mt.family) as teacher_family
        from transfer_results r
        join sweep_jobs sj on sj.job_id = r.job_id
        left join pairs p on p.eval_set = r.eval_set and p.student = r.student and p.teacher = r.teacher
        left join models ms on ms.name = r.student and ms.eval_set = r.eval_set
        left join models mt on mt.name = r.teacher and mt.eval_set = r.eval_set
        where sj.sweep = :sweep and r.final and r.teacher not like '%+%'
        group by r.method, r.student, r.teacher
        order by r.method, r.student, r.teacher""",
    # multi-teacher jobs name their teachers joined by "+"
    "multi_teacher": """
        select r.method, r.student, r.teacher as teachers, count(*) as seeds,
               avg(r.delta) as delta, avg(r.knowledge_gain) as knowledge_gain,
               avg(r.knowledge_loss) as knowledge_loss
        from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep and r.final and r.teacher like '%+%'
        group by r.method, r.student, r.teacher
        order by r.method, r.student, r.teacher""",
}

def final_transfers(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfers"], {"sweep": sweep})


def transfer_pairs(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfer_pairs"], {"sweep": sweep})


def models_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["models"], {"eval_set": eval_set})


def pairs_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["pairs"], {"eval_set": eval_set})


def fill_params(sql: str, params: dict) -> str:
    def lit(m):
        v = params[m.group(1)]
        return str(v) if isinstance(v, (int, float)) else "'" + str(v).replace("'", "''") + "'"

    return re.sub(r"(?<![:\w]):(\w+)", lit, " ".join(sql.split()))
