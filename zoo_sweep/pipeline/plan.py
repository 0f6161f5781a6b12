"""Turn a sweep spec into a ledger of content-addressed jobs (nothing runs here).

Stage 1 has one predict job per (model, eval set); stage 2 one compare job; stage 4 one transfer job per
(student, teacher, method, seed). A job's id hashes everything that determines its result, so planning
the same spec twice adds nothing and two sweeps that share a model share its predict job. When the pair
policy needs measured accuracies (stratified), transfer jobs are added by ``select_transfers`` after
stage 2; ``plan`` reports how many at most.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from zoo_sweep.config.params import COMMON_HP
from zoo_sweep.config.spec import SweepSpec, load_spec
from zoo_sweep.data.sets import (  # noqa: F401  (num_classes_of re-exported)
    check_same_classes,
    image_set_key,
    num_classes_of,
    set_args,
    subset_fields,
)
from zoo_sweep.errors import UserError
from zoo_sweep.ids import content_id
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.jobs import (
    ComparePayload,
    Job,
    PredictPayload,
    TransferPayload,
    job_rows,
)
from zoo_sweep.pipeline.select import all_pairs, needs_measurement, select_pairs
from zoo_sweep.transfer.catalog import CATALOG
from zoo_sweep.zoo.models import (
    ModelEntry,
    check_heads,
    param_counts,
    resolve_zoo,
    select_names,
)

# the hyper-parameters every transfer job's id holds, whatever its method (config/params.py)
TRANSFER_HP = COMMON_HP


def method_hp(t, method: str) -> dict:
    """The hyper-parameters of one method's jobs: the common ones plus the keys of the method's own parameter
    groups (MethodInfo.params), so a changed CD weight re-runs CD jobs only, and a plugin's keys reach its own
    jobs' ids only (``job_hp``: options at their older behaviour are left out)."""
    from zoo_sweep.config.params import job_hp
    from zoo_sweep.transfer.catalog import CATALOG

    return job_hp(t, TRANSFER_HP + CATALOG[method].params)


def check_names(spec: SweepSpec) -> SweepSpec:
    """Names a spec picks from a registry (zoo source, pair policy, methods, multi-teacher modes, cache policy)
    against those registries; none needs torch, so dry runs on a login node check them too."""
    from zoo_sweep.pipeline.select import POLICIES
    from zoo_sweep.transfer.catalog import (
        CACHE_POLICIES,
        CATALOG,
        MULTI_MODES,
        controls,
        single_teacher,
    )
    from zoo_sweep.zoo.models import SOURCES

    z, p, t = spec.zoo, spec.pairs, spec.transfer
    _one_of("[zoo] source", z.source, SOURCES)
    _one_of("[pairs] policy", p.policy, POLICIES)
    _one_of("[transfer] teacher_cache", t.teacher_cache, CACHE_POLICIES)
    for m in t.methods:
        if m in CATALOG and CATALOG[m].multi:
            raise UserError(f"{m!r} is a multi-teacher mode: list it under [transfer] multi_teacher")
        if m in CATALOG and CATALOG[m].control:
            raise UserError(f"{m!r} is a control, run once per student and seed: list it under [transfer] controls")
        _one_of("method", m, single_teacher(), where="[transfer] methods")
    for c in t.controls:
        if not c:
            raise UserError(f"[transfer] controls has an empty entry; known controls: {', '.join(controls())}")
        _one_of("control", c, controls(), where="[transfer] controls")
    for mode in t.multi_teacher:
        _one_of("multi-teacher mode", mode, MULTI_MODES, where="[transfer] multi_teacher")
    _one_of("[transfer] multi_method", t.multi_method, single_teacher())
    return spec


def _one_of(what: str, value, known, where: str = "") -> None:
    if value not in known:
        place = f" in {where}" if where else ""
        raise UserError(f"unknown {what} {value!r}{place}; known: {', '.join(known)}")


def load_sweep(path) -> SweepSpec:
    """A spec file parsed, validated and its names checked: what every command starts from."""
    return check_names(load_spec(path))


def check_transfer(spec: SweepSpec, models: list[ModelEntry], num_classes: int) -> None:
    """Plan-time checks of [transfer] that need the zoo or the class count (spec.validate has the rest)."""
    from zoo_sweep.config.methods import zoo_problem

    t = spec.transfer
    # every method the sweep runs is checked by its own declaration (top_k, mcl_top_k against the class count)
    runs = [*t.methods, *t.controls, *([t.multi_method] if t.multi_teacher else [])]
    problem = zoo_problem(t, runs, num_classes, f"the {num_classes} classes of {spec.data.eval}")
    if problem:
        raise UserError(problem)
    names = {m.name for m in models}
    for key in ("multi_students", "teachers"):
        unknown = [n for n in getattr(t, key) if n not in names]
        if unknown:
            raise UserError(f"[transfer] {key} names {', '.join(unknown)}, not in the zoo "
                            f"({', '.join(sorted(names))})")
    for s in t.multi_students if t.multi_teacher else ():
        if len(multi_teachers(t, [m.name for m in models], s)) < 2:
            raise UserError(f"[transfer] multi-teacher transfer to {s} needs at least two teachers")


def multi_teachers(t, names: list[str], student: str) -> list[str]:
    """A multi-teacher student's teachers: the spec's list, or every other model of the zoo."""
    return list(t.teachers) if t.teachers else [n for n in names if n != student]


@dataclass
class Plan:
    spec: SweepSpec
    models: list[ModelEntry]
    num_classes: int
    eval_key: str
    transfer_key: str
    predict_jobs: list[Job]
    compare_job: Job
    transfer_jobs: list[Job] | None  # None: chosen after stage 2 (the policy needs measured accuracies)
    params: dict[str, int]
    home: Path | None = None  # the results folder: stored payloads name paths under it relative to it

    @property
    def all_jobs(self) -> list[Job]:
        return self.predict_jobs + [self.compare_job] + (self.transfer_jobs or [])

    def entry(self, name: str) -> ModelEntry:
        if getattr(self, "_by_name", None) is None or len(self._by_name) != len(self.models):
            self._by_name = {m.name: m for m in self.models}  # zoo-wide plans look names up millions of times
        return self._by_name[name]


def make_plan(spec: SweepSpec, paths: Paths, dry_run: bool = False) -> Plan:
    """The sweep's models and jobs. ``dry_run`` (plan --dry-run) lets an eval folder that is not reachable
    from this machine count as the spec's [zoo] num_classes classes; a real plan or launch needs it."""
    check_names(spec)
    d = spec.data
    try:
        k = num_classes_of(d.eval, d.class_map)
    except UserError:
        if not (dry_run and spec.zoo.num_classes):
            raise
        k = spec.zoo.num_classes
    if spec.transfer.methods or spec.transfer.multi_teacher:  # a measure-only sweep never reads the transfer set
        check_same_classes(d.eval, d.transfer, d.class_map)
    models = resolve_zoo(spec.zoo, paths.cache, k, d.image_size)
    check_heads(models, k, d.eval)
    if spec.pairs.policy == "explicit":  # unknown names fail here, with close-name suggestions
        names = [m.name for m in models]
        select_names(names, spec.pairs.students, ())
        select_names(names, spec.pairs.teachers, ())
    eval_key = image_set_key(**set_args(d, "eval"))
    transfer_key = image_set_key(**set_args(d, "transfer"))
    params = param_counts(models, paths.cache)
    check_transfer(spec, models, k)

    predict = [Job.new({"model": m.ident, "eval": eval_key, "topk": spec.run.topk},
                       PredictPayload(m, d.eval, d.image_size, d.class_map, spec.run.topk,
                                      **subset_fields(d))) for m in models]
    records = [j.id for j in predict]
    compare = Job.new({"eval": eval_key, "records": records},
                      ComparePayload(d.eval, eval_key, [m.name for m in models], records))
    plan = Plan(spec, models, k, eval_key, transfer_key, predict, compare, None, params, paths.home)
    if not spec.transfer.methods and not spec.transfer.multi_teacher:
        plan.transfer_jobs = []  # measure-only (a flip study): no pair lists, even for 1.6M ordered pairs
    elif not needs_measurement(spec.pairs):
        pairs = select_pairs(all_pairs([m.name for m in models]), {}, spec.pairs)
        plan.transfer_jobs = transfer_jobs(plan, pairs) + control_jobs(plan, pairs)
    return plan


def transfer_jobs(plan: Plan, pairs: list[tuple[str, str]]) -> list[Job]:
    """One job per (pair, method, seed), then the multi-teacher jobs (independent of the pair policy)."""
    t = plan.spec.transfer
    hps = {method: method_hp(t, method) for method in t.methods}
    ident_data, data = _data_fields(plan)
    seen: dict[str, tuple] = {}

    def model(name: str) -> tuple:
        """(entry, ident) of a model, built once: zoo-wide plans have millions of pairs."""
        if name not in seen:
            e = plan.entry(name)
            seen[name] = (e, e.ident)
        return seen[name]

    jobs = []
    for student, teacher in pairs:
        (s, s_id), (te, t_id) = model(student), model(teacher)
        for method, hp in hps.items():
            for seed in t.seeds:
                ident = {"student": s_id, "teacher": t_id, "method": method, "seed": seed, "hp": hp, **ident_data}
                jobs.append(Job.new(ident, TransferPayload(s, te, method, seed, hp, **data)))
    return jobs + multi_teacher_jobs(plan)


def control_jobs(plan: Plan, pairs: list[tuple[str, str]]) -> list[Job]:
    """One job per (student, control, seed) for every student of ``pairs`` and of the multi-teacher jobs: a
    control does not depend on the teacher, so it runs once however many teachers a student has. Its payload
    names the student as its own teacher (the metrics against "the teacher" are then against s0)."""
    t = plan.spec.transfer
    students = {s for s, _ in pairs} | (set(t.multi_students) if t.multi_teacher else set())
    ident_data, data = _data_fields(plan)
    jobs = []
    for s in (m for m in plan.models if m.name in students):
        for control in t.controls:
            hp = method_hp(t, control)
            for seed in t.seeds:
                ident = {"student": s.ident, "control": control, "seed": seed, "hp": hp, **ident_data}
                jobs.append(Job.new(ident, TransferPayload(s, s, control, seed, hp, **data)))
    return jobs


def is_control(job: Job) -> bool:
    m = CATALOG.get(job.payload.method) if job.kind == "transfer" else None  # multi-teacher modes: not catalogued
    return m is not None and m.control


def run_order(job: Job) -> tuple[int, int]:
    """Sort key of a launch's transfer jobs: controls first (every result is read against them), then one seed
    at a time, so a sweep stopped part-way has its yardstick and whole seeds, not a scatter of every seed."""
    return (0, 0) if is_control(job) else (1, job.payload.seed)


def multi_teacher_jobs(plan: Plan) -> list[Job]:
    """Every multi-teacher student x mode x seed; its rows name every teacher and the mode as the method."""
    t = plan.spec.transfer
    names = [m.name for m in plan.models]
    hp = method_hp(t, t.multi_method)
    ident_data, data = _data_fields(plan)
    jobs = []
    for student in t.multi_students if t.multi_teacher else ():
        s, tes = plan.entry(student), tuple(plan.entry(n) for n in multi_teachers(t, names, student))
        for mode in t.multi_teacher:
            for seed in t.seeds:
                ident = {"student": s.ident, "teachers": [x.ident for x in tes], "mode": mode,
                         "method": t.multi_method, "seed": seed, "hp": hp, **ident_data}
                jobs.append(Job.new(ident, TransferPayload(s, tes[0], mode, seed, hp, **data, teachers=tes,
                                                           multi_method=t.multi_method)))
    return jobs


def _data_fields(plan: Plan) -> tuple[dict, dict]:
    """(the data part of a transfer job's identity, the data fields of its payload)."""
    d = plan.spec.data
    return ({"eval": plan.eval_key, "transfer": plan.transfer_key},
            {"eval": d.eval, "transfer": d.transfer, "image_size": d.image_size, "class_map": d.class_map,
             **subset_fields(d)})


def select_transfers(plan: Plan, pairs_df: pd.DataFrame, history=None) -> list[Job]:
    """Stage 3: the transfer jobs for the measured pairs, by the spec's pair policy (``history``:
    (models, transfer results, method) for the predicted_gain policy)."""
    families = {m.name: m.family for m in plan.models}
    pairs = select_pairs(pairs_df, families, plan.spec.pairs, history)
    return transfer_jobs(plan, pairs) + control_jobs(plan, pairs)


def max_selected(plan: Plan) -> int:
    """Upper bound of the transfer pairs a measured policy will pick (for plan's summary)."""
    p, m = plan.spec.pairs, len(plan.models)
    n = m * (m - 1)
    if p.policy == "stratified":
        fams = {x.family for x in plan.models}
        n = min(n, p.per_bin * (len(p.gap_bins) - 1) * len(fams) ** 2)
    return min(n, p.max_pairs) if p.max_pairs is not None else n


def model_rows(plan: Plan) -> list[dict]:
    """The plan's models as the store keeps them. ``ident`` hashes what a model's stored accuracy and pairs
    depend on: the model and the decoded eval set (its images, image size, class map and subset)."""
    return [{"name": m.name, "eval_set": plan.spec.data.eval, "arch": m.arch, "family": m.family,
             "params": plan.params[m.name], "ident": content_id({"model": m.ident, "eval": plan.eval_key})}
            for m in plan.models]


def _redefinition_warning(store, eval_set: str, rows: list[dict]) -> str | None:
    """A warning when the store holds some of these model names for another model (architecture, weights or
    preprocessing) or measured on other eval data: accuracy, records and pairs are kept by name, so this
    plan's results will replace it."""
    stored = store.model_idents(eval_set, [r["name"] for r in rows])
    names = [r["name"] for r in rows if stored.get(r["name"]) not in (None, r["ident"])]
    if not names:
        return None
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{shown}: the store holds {'these names' if len(names) > 1 else 'this name'} on {eval_set} for "
            "another model (architecture, weights or preprocessing) or for other eval data (its images, image size, "
            "class map or subset); this sweep's accuracy and pairs will replace it there (rename the model in "
            "the spec, or use another --db, to keep both)")


def write_plan(store, plan: Plan, warn: Callable[[str], object] | None = None) -> int:
    """Record the plan in the store (one transaction); returns how many jobs are new. ``warn`` first receives
    a warning when the plan gives model names the store holds to other models."""
    spec = plan.spec
    row = {"name": spec.name, "spec": json.dumps(spec.to_dict(), default=list), "spec_hash": spec.digest,
           "path": spec.path}
    models = model_rows(plan)
    note = _redefinition_warning(store, spec.data.eval, models) if warn else None
    if note:
        warn(note)
    return store.write_plan(row, models, job_rows(plan.all_jobs, plan.home), spec.name)
