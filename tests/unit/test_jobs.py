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
    Outcome,
    PredictPayload,
    TransferPayload,
)
from zoo_sweep.pipeline.plan import is_control, load_sweep, make_plan, run_order

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
    got = {j.id: _digest(j.to_row(plan.home)) for j in plan.all_jobs if not is_control(j)}
    assert got == GOLDEN[name]
    # the controls (planned since) are jobs of their own beside them: one per student and seed, none per pair
    controls = [j for j in plan.all_jobs if is_control(j)]
    assert not {j.id for j in controls} & set(GOLDEN[name])
    assert len(controls) == len({j.payload.student.name for j in controls})
    # a measured policy picks its students later; the micro spec asks for no controls
    assert bool(controls) == (plan.transfer_jobs is not None and bool(plan.spec.transfer.controls))


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


def test_an_outcome_travels_by_pickle_and_by_json():
    """Ray pickles a worker's outcome; a Tune trial sends its transfer outcomes to the driver as JSON."""
    import pickle

    import numpy as np

    done = Outcome(JobState.DONE, worker="host:1:cpu", seconds=1.5, log=["a", "b"],
                   rows=[{"epoch": 1, "delta": 0.25}], logits_read=2)
    diverged = Outcome(JobState.DIVERGED, error="Diverged: loss became nan in epoch 1", seconds=0.5)
    for out in (done, diverged):
        assert pickle.loads(pickle.dumps(out)) == out
        back = Outcome.from_dict(json.loads(json.dumps(out.to_dict())))
        assert back == out and back.state is out.state
    assert diverged.to_dict() == {"state": "diverged", "error": "Diverged: loss became nan in epoch 1",
                                  "seconds": 0.5, "log": [], "logits_read": 0}
    rec = {"pred": np.arange(3)}
    predicted = pickle.loads(pickle.dumps(Outcome(JobState.DONE, record=rec, accuracy=50.0)))
    assert predicted.record["pred"].tolist() == [0, 1, 2] and predicted.rows is None
    with pytest.raises(ValueError):
        Outcome.from_dict({"state": "finished"})


def test_controls_run_once_per_student_and_seed_with_the_sweeps_training(tmp_path):
    """Two controls x two seeds for each of the three students, not per pair; each names the student as its own
    teacher and trains with the same common settings as the sweep's transfer jobs."""
    plan = _plan(tmp_path, micro_spec(transfer={"seeds": [0, 1], "controls": ["labels", "self_dist"]}))
    controls = [j for j in plan.transfer_jobs if is_control(j)]
    pairs = [j for j in plan.transfer_jobs if not is_control(j)]
    assert len(pairs) == 6 * 2 * 2  # 6 ordered pairs x kl, kl_dp x 2 seeds
    keys = sorted((j.payload.student.name, j.payload.method, j.payload.seed) for j in controls)
    assert keys == sorted((s, c, seed) for s in ("cnn_micro", "vit_micro", "mlp_micro")
                          for c in ("labels", "self_dist") for seed in (0, 1))
    assert all(j.payload.teacher == j.payload.student for j in controls)
    common = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "augment", "inputs", "lr_scaling")
    for j in controls:
        for k in pairs:
            assert {c: j.payload.hp.get(c) for c in common} == {c: k.payload.hp.get(c) for c in common}


def test_a_launch_runs_controls_first_then_one_seed_at_a_time(tmp_path):
    plan = _plan(tmp_path, micro_spec(transfer={"seeds": [2, 0, 1], "controls": ["labels"]}))
    ran = [(is_control(j), j.payload.seed) for j in sorted(plan.transfer_jobs, key=run_order)]
    assert ran == [(True, s) for _, s in ran[:9]] + [(False, s) for s in (0,) * 12 + (1,) * 12 + (2,) * 12]


def test_controls_follow_the_students_the_pairs_pick(tmp_path):
    text = micro_spec(pairs={"policy": "explicit", "students": ["cnn_micro"], "teachers": ["vit_micro"]},
                      transfer={"controls": ["labels"]})
    controls = [j for j in _plan(tmp_path, text).transfer_jobs if is_control(j)]
    assert [(j.payload.student.name, j.payload.method) for j in controls] == [("cnn_micro", "labels")]
    none = _plan(tmp_path, micro_spec(transfer={"controls": []}), home="other")
    assert not any(map(is_control, none.transfer_jobs))


def test_adding_a_seed_keeps_every_job_planned_before(tmp_path):
    """Resume with more seeds: every job of the one-seed plan (controls included) keeps its id, so its results
    are reused and only the new seed's jobs run."""
    one = {j.id for j in _plan(tmp_path, micro_spec(transfer={"controls": ["labels"]})).all_jobs}
    two = _plan(tmp_path, micro_spec(transfer={"seeds": [0, 1], "controls": ["labels"]}))
    assert one < {j.id for j in two.all_jobs}
    added = [j for j in two.transfer_jobs if j.id not in one]
    assert added and {j.payload.seed for j in added} == {1}
