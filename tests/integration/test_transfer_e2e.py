"""Transfer jobs through the worker and the launcher on the micro zoo: multi-teacher rows in the store, and an
exploding learning rate recorded as 'diverged'. Uses the session's micro zoo and Ray cluster, its own store."""


import dataclasses
import json

from zoo_sweep.config.spec import parse_spec
from zoo_sweep.data.images import load_image_set
from zoo_sweep.pipeline.jobs import JobState, Outcome
from zoo_sweep.pipeline.launch import LaunchOptions, launch_sweep
from zoo_sweep.pipeline.plan import make_plan
from zoo_sweep.pipeline.worker import Worker
from zoo_sweep.science.records import load_record
from zoo_sweep.storage.store import Store


def spec_and_path(name, **transfer):
    return parse_spec({"name": name, "zoo": {"source": "digits", "recipe": "micro"},
                       "pairs": {"policy": "all", "max_pairs": 1},
                       "transfer": {"methods": ["kl"], "epochs": 1, "batch_size": 256, **transfer}})


def test_multi_teacher_jobs_land_in_the_store(micro, tmp_path):
    spec = spec_and_path("micro-multi", multi_teacher=["parallel", "sequential_desc", "soup"],
                         multi_students=["cnn_micro"])
    store = Store(f"sqlite:///{tmp_path / 'multi.db'}")
    rep = launch_sweep(spec, store, micro["paths"], LaunchOptions(address=micro["address"], progress=False))
    assert rep.ok, rep.failed
    res = store.table("transfer_results")
    multi = res[res["teacher"] == "vit_micro+mlp_micro"]
    assert sorted(multi[multi["final"]]["method"]) == ["parallel", "sequential_desc", "soup"]
    assert multi.groupby("method")["epoch"].max().to_dict() == {"parallel": 1, "sequential_desc": 2, "soup": 1}
    assert (multi["student"] == "cnn_micro").all()
    # the teachers, in order, are rows of job_teachers (the teacher column is a label)
    teachers = store.query("select job_id, position, teacher from job_teachers order by job_id, position")
    assert set(teachers["job_id"]) == set(multi["job_id"])
    assert all(g["teacher"].tolist() == ["vit_micro", "mlp_micro"] for _, g in teachers.groupby("job_id"))
    assert ((multi["delta"] - (multi["knowledge_gain"] - multi["knowledge_loss"])).abs() < 1e-9).all()
    assert not any(micro["paths"].checkpoints.glob("*/last.pt"))  # finished jobs leave no checkpoint


def test_exploding_learning_rate_is_a_diverged_job(micro):
    plan = make_plan(spec_and_path("micro-explode"), micro["paths"])
    job = plan.transfer_jobs[0]
    # a spec cannot ask for it (lr <= 10), but a run can still blow up: the job's own settings, changed here
    job = job.but(payload=dataclasses.replace(job.payload, hp={**job.payload.hp, "lr": 1e12}))
    rec = {p.payload.model.name: load_record(micro["paths"].records / f"{p.id}.npz") for p in plan.predict_jobs}
    labels = load_image_set("digits:eval", 32, micro["paths"].cache).labels.numpy()
    inputs = {"s0_correct": rec[job.payload.student.name]["pred"] == labels,
              "teacher_correct": rec[job.payload.teacher.name]["pred"] == labels}
    out = Worker(str(micro["paths"].home)).run(job, inputs)
    assert out.state is JobState.DIVERGED and "loss became" in out.error and out.rows is None
    # its log: where it ran, and why it ended (the launcher appends these lines to logs/jobs/<id>.log)
    assert "started on" in out.log[0] and out.log[-1].split("  ", 1)[1].startswith("diverged in ")
    assert "loss became" in out.log[-1]
    # as a Tune trial sends it to the driver: through JSON and back
    assert Outcome.from_dict(json.loads(json.dumps(out.to_dict()))) == out
