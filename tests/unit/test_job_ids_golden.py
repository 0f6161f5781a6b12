"""Every job id of every shipped spec and of the specs the tests plan, against ids recorded in
tests/unit/golden/job_ids.json. A job's id is the key of its stored result: a change that moves one makes every
store re-run that job, so none may move unless a change means it to.

Measured pair policies (stratified) pick their pairs after the compare stage; here every ordered pair of their
zoo is planned instead, so the ids of whatever pairs they pick are covered. Every spec is planned as a dry run
(the imagenet ones from timm's registry: no weights, no data). Each group of ids (a stage, a method, a control,
a multi-teacher mode) is recorded as its count and a digest of its sorted ids.

    python tests/unit/test_job_ids_golden.py --write   # only for a change meant to re-run those jobs
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import timm  # noqa: F401  (imported at collection: torch's first import starts a process, which unit tests may not)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import micro_spec  # noqa: E402

from zoo_sweep.paths import Paths  # noqa: E402
from zoo_sweep.pipeline.plan import (  # noqa: E402
    control_jobs,
    is_control,
    load_sweep,
    make_plan,
    transfer_jobs,
)
from zoo_sweep.pipeline.select import all_pairs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden" / "job_ids.json"

# lists written out, not read from the method registry: a method added later must not change these specs
EVERY_METHOD = ["kl", "xekl", "kl_dp", "kl_dp_unsup", "flip_st", "flip_t", "flip_avg", "xekl_mcl", "cd", "crd"]
EVERY_MODE = ["parallel", "parallel_unsup", "sequential_asc", "sequential_desc", "sequential_asc_matched",
              "sequential_desc_matched", "soup"]
EVERY_OPTION = {"augment": "paper", "inputs": "student", "lr_scaling": "linear", "xe_on": "probs",
                "mcl_kl_mean": "kept", "mcl_schedule": "reference", "mcl_reset": "reference",
                "flip_avg_neutral": "student_logits", "cd_form": "reference", "crd_form": "reference",
                "teacher_bn": "train"}
EVERY_NUMBER = {"epochs": 3, "batch_size": 64, "lr": 0.02, "momentum": 0.8, "weight_decay": 0.001,
                "temperature": 2.0, "alpha": 0.3, "top_k": 5, "mcl_alpha": 0.5, "mcl_top_k": 4, "tau": 0.99,
                "mcl_every": 3, "mcl_lr": 0.03, "cd_weight": 5.0, "cd_xe": 0.2, "crd_weight": 0.5, "crd_xe": 0.7,
                "crd_dim": 64, "crd_negatives": 100, "crd_temperature": 0.1}
ALL = {"methods": EVERY_METHOD, "controls": ["labels", "self_dist"], "multi_teacher": EVERY_MODE,
       "multi_students": ["cnn_micro"], "seeds": [0, 1]}

TEST_SPECS = {
    "micro": micro_spec(),  # tests/conftest.py: the session's sweep
    "micro-multi": micro_spec(transfer={"multi_teacher": ["parallel"], "multi_students": ["cnn_micro"]}),
    "micro-controls": micro_spec(transfer={"controls": ["labels", "self_dist"], "augment": False}),
    # tests/integration/test_transfer_params_run.py
    "micro-params": micro_spec(transfer={"methods": ["kl", "xekl_mcl"], "mcl_top_k": 5, "top_k": 3, "controls": [],
                                         "multi_teacher": ["parallel", "sequential_asc", "soup"],
                                         "multi_students": ["cnn_micro"]}),
    "micro-every-method": micro_spec(transfer={**ALL, "mcl_top_k": 0}),
    "micro-every-option": micro_spec(transfer={**ALL, **EVERY_OPTION, **EVERY_NUMBER, "multi_method": "xekl_mcl"}),
}


def _specs() -> dict[str, Path | str]:
    return {**{p.stem: p for p in sorted((ROOT / "jobs").glob("*.toml"))}, **TEST_SPECS}


def _group(job) -> str:
    if job.kind != "transfer":
        return job.kind
    p = job.payload
    if p.multi:
        return f"multi:{p.method}:{p.multi_method}"
    return f"{'control' if is_control(job) else 'method'}:{p.method}"


def job_ids(spec: Path | str, tmp: Path) -> dict[str, dict]:
    """Group -> {"count", "digest"} of every job ``spec`` plans (every ordered pair for a measured policy)."""
    if isinstance(spec, str):
        (tmp / "spec.toml").write_text(spec)
        spec = tmp / "spec.toml"
    plan = make_plan(load_sweep(spec), Paths(tmp / "home"), dry_run=True)
    jobs = plan.all_jobs
    if plan.transfer_jobs is None:
        pairs = list(all_pairs([m.name for m in plan.models]).itertuples(index=False, name=None))
        jobs = jobs + transfer_jobs(plan, pairs) + control_jobs(plan, pairs)
    groups: dict[str, list[str]] = {}
    for j in jobs:
        groups.setdefault(_group(j), []).append(j.id)
    return {g: {"count": len(ids), "digest": hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]}
            for g, ids in sorted(groups.items())}


@pytest.mark.parametrize("name", sorted(_specs()))
def test_job_ids_are_those_recorded(tmp_path, name):
    golden = json.loads(GOLDEN.read_text())
    assert job_ids(_specs()[name], tmp_path) == golden[name], (
        f"the job ids of {name} changed: every store would re-run these jobs")


def test_every_shipped_and_test_spec_is_recorded():
    assert sorted(json.loads(GOLDEN.read_text())) == sorted(_specs())


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    out = {}
    for name, spec in _specs().items():
        with tempfile.TemporaryDirectory() as d:
            out[name] = job_ids(spec, Path(d))
    GOLDEN.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
