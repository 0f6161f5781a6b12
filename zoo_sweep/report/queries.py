"""The SQL behind every report table: the page shows each query with its parameters filled in, ready for
``zoo-sweep query``."""

from __future__ import annotations

import re

import pandas as pd

from zoo_sweep.storage.store import Store

SQL = {
    "models": """
        select m.name, m.family, m.params, round(cast(m.accuracy as numeric), 2) as accuracy from models m
        where m.eval_set = :eval_set and m.name in (
            select student from pairs where eval_set = :eval_set
            union select teacher from pairs where eval_set = :eval_set)
        order by m.accuracy desc""",
    "pairs": "select * from pairs where eval_set = :eval_set",
    # every run's final row (single-teacher, control and multi-teacher runs; multi_teacher 1: its teachers are in
    # job_teachers), so that the statistics over runs can see the seeds of a pair
    "transfers": """
        select r.*, case when exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
                    then 1 else 0 end as multi_teacher
        from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep and r.final""",
    # every epoch of the single-teacher and control runs: is a method's gain over a control still rising?
    "transfer_epochs": """
        select r.method, r.student, r.teacher, r.seed, r.epoch, r.final, r.delta
        from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep
          and not exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
        order by r.method, r.student, r.teacher, r.seed, r.epoch""",
    # one row per (method, student, teacher): the final epoch, averaged over seeds, single-teacher jobs only
    # (a multi-teacher job has its teachers in job_teachers), controls left out (a control run names the student
    # as its own teacher; a pair never has one model twice).
    # gains.per_pair is the same filter on frames (the report hands it method rows: controls.split_controls); this
    # stays SQL so that the report can show the query behind
    # its tables (test_final_row_filter_is_the_same_in_sql_and_pandas keeps the two in step)
    "transfer_pairs": """
        select r.method, r.student, r.teacher, count(*) as seeds,
               avg(r.delta) as delta, avg(r.knowledge_gain) as knowledge_gain,
               avg(r.knowledge_loss) as knowledge_loss, avg(r.transfer_rate_sample) as transfer_rate_sample,
               avg(r.transfer_rate_class) as transfer_rate_class,
               avg(r.s0_acc) as student_acc, max(p.acc_gap) as acc_gap, max(p.rho_pos) as rho_pos,
               max(p.rho_neg) as rho_neg, max(ms.family) as student_family,
               max(ms.params) as student_params, max(mt.family) as teacher_family,
               max(mt.params) as teacher_params, max(p.acc_teacher) as teacher_acc
        from transfer_results r
        join sweep_jobs sj on sj.job_id = r.job_id
        left join pairs p on p.eval_set = r.eval_set and p.student = r.student and p.teacher = r.teacher
        left join models ms on ms.name = r.student and ms.eval_set = r.eval_set
        left join models mt on mt.name = r.teacher and mt.eval_set = r.eval_set
        where sj.sweep = :sweep and r.final
          and not exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
          and r.teacher <> r.student
        group by r.method, r.student, r.teacher
        order by r.method, r.student, r.teacher""",
    # one row per multi-teacher (method, student, teachers); r.teacher is the run's label ("a+b+c")
    "multi_teacher": """
        select r.method, r.student, r.teacher as teachers, count(*) as seeds,
               avg(r.delta) as delta, avg(r.knowledge_gain) as knowledge_gain,
               avg(r.knowledge_loss) as knowledge_loss
        from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        where sj.sweep = :sweep and r.final
          and exists (select 1 from job_teachers jt where jt.job_id = r.job_id)
        group by r.method, r.student, r.teacher
        order by r.method, r.student, r.teacher""",
    # the teachers of each multi-teacher run, in order
    "multi_teachers": """
        select distinct r.method, r.student, r.teacher as teachers, jt.position, jt.teacher
        from transfer_results r join sweep_jobs sj on sj.job_id = r.job_id
        join job_teachers jt on jt.job_id = r.job_id
        where sj.sweep = :sweep and r.final
        order by r.method, r.student, r.teacher, jt.position""",
}


def multi_teacher_lists(store: Store, sweep: str) -> dict[tuple[str, str, str], list[str]]:
    """(method, student, teachers label) -> the run's teachers, in order."""
    out: dict[tuple[str, str, str], list[str]] = {}
    for r in store.query(SQL["multi_teachers"], {"sweep": sweep}).itertuples(index=False):
        out.setdefault((r.method, r.student, r.teachers), []).append(r.teacher)
    return out


def final_transfers(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfers"], {"sweep": sweep})


def transfer_pairs(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfer_pairs"], {"sweep": sweep})


def transfer_epochs(store: Store, sweep: str) -> pd.DataFrame:
    return store.query(SQL["transfer_epochs"], {"sweep": sweep})


def models_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["models"], {"eval_set": eval_set})


def pairs_table(store: Store, eval_set: str) -> pd.DataFrame:
    return store.query(SQL["pairs"], {"eval_set": eval_set})


def fill_params(sql: str, params: dict) -> str:
    def lit(m):
        v = params[m.group(1)]
        return str(v) if isinstance(v, (int, float)) else "'" + str(v).replace("'", "''") + "'"

    return re.sub(r"(?<![:\w]):(\w+)", lit, " ".join(sql.split()))
