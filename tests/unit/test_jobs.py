"""Typed jobs: the same ids and payloads as the stores already written, payloads parsed once, no absolute
results-folder paths in the store."""

import hashlib
import json
from pathlib import Path

import pytest
from conftest import micro_spec

from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.jobs import (
    PAYLOAD_COLUMN,
    ComparePayload,
    Job,
    JobState,
    PredictPayload,
    TransferPayload,
)
from zoo_sweep.pipeline.plan import load_sweep, make_plan

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = json.loads((Path(__file__).parent / "data" / "job_ids.json").read_text())

MICRO_MULTI = micro_spec(transfer={"multi_teacher": ["parallel"], "multi_students": ["cnn_micro"]})


def _plan(tmp_path, text=MICRO_MULTI, home="home"):
    path = tmp_path / "spec.toml"
    path.write_text(text)
    return make_plan(load_sweep(path), Paths(tmp_path / home))


def _digest(row) -> str:
    return hashlib.sha256(row[PAYLOAD_COLUMN].encode()).hexdigest()[:16]


@pytest.mark.parametrize("name", ["micro", "digits-demo"])
def test_ids_and_payloads_are_those_of_stores_already_written(tmp_path, name):
    """A store planned before typed jobs is reused as it is: same job ids, same payload JSON."""
    plan = (_plan(tmp_path) if name == "micro" else
            make_plan(load_sweep(ROOT / "jobs" / "digits-demo.toml"), Paths(tmp_path / "elsewhere")))
    got = {j.id: _digest(j.to_row(plan.home)) for j in plan.all_jobs}
    assert got == GOLDEN[name]


def test_payloads_are_typed_and_parse_back_to_the_same_job(tmp_path):
    plan = _plan(tmp_path)
    kinds = {type(j.payload) for j in plan.all_jobs}
    assert kinds == {PredictPayload, ComparePayload, TransferPayload}
    multi = [j for j in plan.transfer_jobs if j.payload.multi]
    assert len(multi) == 1 and multi[0].payload.teacher_names == ["vit_micro", "mlp_micro"]
    assert multi[0].payload.multi_method == "kl_dp" and multi[0].payload.method == "parallel"
    single = [j for j in plan.transfer_jobs if not j.payload.multi]
    assert all(j.payload.teachers is None and "teachers" not in j.payload.to_dict() for j in single)
    for job in plan.all_jobs:
        row = {**job.to_row(plan.home), "state": "done", "attempts": 2, "error": None}
        back = Job.from_row(row, plan.home)
        assert back.payload == job.payload and back.id == job.id
        assert back.state is JobState.DONE and back.attempts == 2


def test_stored_payloads_name_the_results_folder_relatively(tmp_path):
    """A store planned with one --home runs with another: paths under the home resolve against the current one."""
    plan = _plan(tmp_path, home="first")
    rows = [j.to_row(plan.home) for j in plan.all_jobs]
    assert not any(str(tmp_path) in r[PAYLOAD_COLUMN] for r in rows)
    weights = json.loads(rows[0][PAYLOAD_COLUMN])["model"]["weights"]
    assert weights.startswith("<home>/cache/zoo/cnn_micro-")
    moved = Job.from_row(rows[0], tmp_path / "second")
    assert moved.payload.model.weights == str(tmp_path / "second" / "cache" / "zoo" / weights.split("/")[-1])
    # a transfer job's teachers too
    multi = next(j for j in plan.transfer_jobs if j.payload.multi)
    back = Job.from_row(multi.to_row(plan.home), tmp_path / "second")
    assert all(e.weights.startswith(str(tmp_path / "second")) for e in back.payload.teachers)


def test_rows_written_with_absolute_paths_still_read(tmp_path):
    """Stores written before payloads named the home relatively keep working from that home."""
    plan = _plan(tmp_path)
    job = plan.predict_jobs[0]
    old = {"id": job.id, "kind": "predict", PAYLOAD_COLUMN: json.dumps(job.payload.to_dict(), sort_keys=True),
           "state": "pending", "attempts": 0}
    assert str(plan.home) in old[PAYLOAD_COLUMN]
    assert Job.from_row(old, plan.home).payload == job.payload


def test_a_payload_that_does_not_fit_its_kind_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"job p-1 \(predict\) has a payload this zoo-sweep cannot read"):
        Job.from_row({"id": "p-1", "kind": "predict", PAYLOAD_COLUMN: json.dumps({"eval": "x"})}, tmp_path)
    with pytest.raises(UserError, match="cannot read"):
        Job.from_row({"id": "t-1", "kind": "transfer", PAYLOAD_COLUMN: "not json"}, tmp_path)


def test_job_states_are_the_stores():
    from zoo_sweep.storage.store import JOB_STATES

    assert tuple(s.value for s in JobState) == JOB_STATES
    assert JobState("failed") is JobState.FAILED and JobState.DONE == "done"
