"""Turn a sweep spec into a ledger of content-addressed jobs (nothing runs here).

Stage 1 has one predict job per (model, eval set); stage 2 one compare job; stage 4 one transfer job per
(student, teacher, method, seed). A job's id hashes everything that determines its result, so planning
the same spec twice adds nothing and two sweeps that share a model share its predict job. When the pair
policy needs measured accuracies (stratified), transfer jobs are added by ``select_transfers`` after
stage 2; ``plan`` reports how many at most.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import UserError
from .data import image_set_key
from .paths import Paths
from .select import all_pairs, needs_measurement, select_pairs
from .spec import SweepSpec, content_id
from .zoo import ModelEntry, count_params, resolve_zoo

TRANSFER_HP = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "alpha", "augment")


@dataclass
class Plan:
    spec: SweepSpec
    models: list[ModelEntry]
    num_classes: int
    eval_key: str
    transfer_key: str
    predict_jobs: list[dict]
    compare_job: dict
    transfer_jobs: list[dict] | None  # None: chosen after stage 2 (the policy needs measured accuracies)
    params: dict[str, int]

    @property
    def all_jobs(self) -> list[dict]:
        return self.predict_jobs + [self.compare_job] + (self.transfer_jobs or [])

    def entry(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)


def num_classes_of(ref: str, class_map: str | None) -> int:
    kind, _, arg = ref.partition(":")
    if kind == "digits":
        return 10
    if class_map:
        if not Path(class_map).is_file():
            raise UserError(f"class map not found: {class_map}")
        return sum(1 for line in Path(class_map).read_text().splitlines() if line.strip())
    root = Path(arg)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    return sum(1 for p in root.iterdir() if p.is_dir())


def _row(kind: str, ident: dict, payload: dict) -> dict:
    return {"id": f"{kind[0]}-{content_id({'kind': kind, **ident})}", "kind": kind,
            "spec": json.dumps(payload, sort_keys=True, default=list)}


def make_plan(spec: SweepSpec, paths: Paths) -> Plan:
    d = spec.data
    k = num_classes_of(d.eval, d.class_map)
    models = resolve_zoo(spec.zoo, paths.cache, k, d.image_size)
    eval_key = image_set_key(d.eval, d.image_size, d.class_map)
    transfer_key = image_set_key(d.transfer, d.image_size, d.class_map)
    params = {m.name: count_params(m) for m in models}

    predict = []
    for m in models:
        ident = {"model": m.ident, "eval": eval_key, "topk": spec.run.topk}
        predict.append(_row("predict", ident, {"model": m.to_dict(), "eval": d.eval, "image_size": d.image_size,
                                               "class_map": d.class_map, "topk": spec.run.topk}))
    compare = _row("compare", {"eval": eval_key, "records": [j["id"] for j in predict]},
                   {"eval": d.eval, "eval_key": eval_key, "models": [m.name for m in models],
                    "records": [j["id"] for j in predict]})
    plan = Plan(spec, models, k, eval_key, transfer_key, predict, compare, None, params)
    if not needs_measurement(spec.pairs):
        plan.transfer_jobs = transfer_jobs(plan, select_pairs(all_pairs([m.name for m in models]), {}, spec.pairs))
    return plan


def transfer_jobs(plan: Plan, pairs: list[tuple[str, str]]) -> list[dict]:
    t, d = plan.spec.transfer, plan.spec.data
    hp = {k: getattr(t, k) for k in TRANSFER_HP}
    rows = []
    for student, teacher in pairs:
        s, te = plan.entry(student), plan.entry(teacher)
        for method in t.methods:
            for seed in t.seeds:
                ident = {"student": s.ident, "teacher": te.ident, "method": method, "seed": seed, "hp": hp,
                         "eval": plan.eval_key, "transfer": plan.transfer_key}
                rows.append(_row("transfer", ident, {
                    "student": s.to_dict(), "teacher": te.to_dict(), "method": method, "seed": seed, "hp": hp,
                    "eval": d.eval, "transfer": d.transfer, "image_size": d.image_size, "class_map": d.class_map}))
    return rows


def select_transfers(plan: Plan, pairs_df: pd.DataFrame) -> list[dict]:
    """Stage 3: the transfer jobs for the measured pairs, by the spec's pair policy."""
    families = {m.name: m.family for m in plan.models}
    return transfer_jobs(plan, select_pairs(pairs_df, families, plan.spec.pairs))


def max_selected(plan: Plan) -> int:
    """Upper bound of the transfer pairs a measured policy will pick (for plan's summary)."""
    p, m = plan.spec.pairs, len(plan.models)
    n = m * (m - 1)
    if p.policy == "stratified":
        fams = {x.family for x in plan.models}
        n = min(n, p.per_bin * (len(p.gap_bins) - 1) * len(fams) ** 2)
    return min(n, p.max_pairs) if p.max_pairs is not None else n


def model_rows(plan: Plan) -> list[dict]:
    return [{"name": m.name, "eval_set": plan.spec.data.eval, "arch": m.arch, "family": m.family,
             "params": plan.params[m.name]} for m in plan.models]


def write_plan(store, plan: Plan) -> int:
    """Record the plan in the store (one transaction); returns how many jobs are new."""
    spec = plan.spec
    row = {"name": spec.name, "spec": json.dumps(spec.to_dict(), default=list), "spec_hash": spec.digest,
           "path": spec.path}
    return store.write_plan(row, model_rows(plan), plan.all_jobs, spec.name)


def entry_from_dict(d: dict) -> ModelEntry:
    """A ModelEntry from a job payload; JSON turned its tuples into lists, timm wants them back."""
    def tup(v):
        return tuple(tup(x) for x in v) if isinstance(v, list) else v

    fields = {f.name for f in dataclasses.fields(ModelEntry)}
    d = {k: v for k, v in d.items() if k in fields}
    d["kwargs"] = {k: tup(v) for k, v in d.get("kwargs", {}).items()}
    d["data_cfg"] = {k: tup(v) for k, v in d.get("data_cfg", {}).items()}
    return ModelEntry(**d)
