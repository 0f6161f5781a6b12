"""The GPU-hours estimate of planned transfer jobs: which rate each job gets and why, how the estimate follows a
job's size, and that it needs no torch. No timing: the rates are the module's own table."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
from conftest import micro_spec

from zoo_sweep.config.params import used_rows
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.estimate import (
    MEASURED,
    MEASURED_PAIR,
    SCALED,
    estimate_gpu_hours,
    estimate_job,
    input_side,
)
from zoo_sweep.pipeline.jobs import Job, TransferPayload
from zoo_sweep.pipeline.plan import load_sweep, make_plan
from zoo_sweep.zoo.entry import ModelEntry

ROOT = Path(__file__).resolve().parents[2]
H200 = MEASURED[0]  # the reference: kl_dp, resnet50 <- convnext_tiny, batch 128, 224 px
PARAMS = {"resnet50": H200.student_params, "convnext_tiny": H200.teacher_params, "vit_small_patch16_224": 22_050_664,
          "resnet50.a1_in1k": H200.student_params, "convnext_tiny.fb_in1k": H200.teacher_params, "tiny": 100_000}
N_TRANSFER, N_EVAL = 12_800, 5_000


def entry(name: str, arch: str | None = None, **kw) -> ModelEntry:
    return ModelEntry(name=name, arch=arch or name, family="cnn", weights="hub", num_classes=1000, **kw)


def job(student: ModelEntry, teacher: ModelEntry, method: str = "kl_dp", epochs: int = 2, batch: int = 128,
        teachers: tuple[ModelEntry, ...] | None = None, multi_method: str | None = None,
        transfer: str = "digits:transfer") -> Job:
    hp = {"epochs": epochs, "batch_size": batch}
    payload = TransferPayload(student, teacher, method, 0, hp, "digits:eval", transfer, 256, None,
                              teachers=teachers, multi_method=multi_method)
    return Job.new({"student": student.ident, "teacher": teacher.ident, "method": method, "hp": hp,
                    "teachers": [t.ident for t in teachers or ()]}, payload)


def one(j: Job, gpu: str = H200.gpu, n_eval: int = N_EVAL):
    return estimate_job(j, PARAMS, N_TRANSFER, n_eval, gpu)


def test_a_measured_pair_trains_at_its_measured_rate():
    est = one(job(entry("resnet50"), entry("convnext_tiny")), n_eval=0)
    assert est.basis == MEASURED_PAIR and not est.small
    assert est.images_per_s == pytest.approx(H200.images_per_s)
    assert est.train_images == used_rows(N_TRANSFER, 128) * 2
    assert est.seconds == pytest.approx(est.train_images / H200.images_per_s)
    # a pretrained tag names the same architecture
    tagged = one(job(entry("resnet50.a1_in1k"), entry("convnext_tiny.fb_in1k")), n_eval=0)
    assert tagged.basis == MEASURED_PAIR and tagged.seconds == pytest.approx(est.seconds)


def test_each_gpu_and_method_uses_its_own_row():
    kl = [r for r in MEASURED if r.gpu == "NVIDIA H100" and not r.runs_s0][0]
    est = one(job(entry("resnet50"), entry("convnext_tiny"), method="kl"), gpu="NVIDIA H100")
    assert est.basis == MEASURED_PAIR and est.images_per_s == pytest.approx(kl.images_per_s)
    with pytest.raises(ValueError, match="no measured transfer rate"):
        one(job(entry("resnet50"), entry("convnext_tiny")), gpu="a GPU nobody measured")


def test_pairs_not_measured_as_they_run_are_scaled_and_say_so():
    unknown = one(job(entry("resnet50"), entry("vit_small_patch16_224")))
    reversed_pair = one(job(entry("convnext_tiny"), entry("resnet50")))
    at_288 = {"input_size": (3, 288, 288)}
    resized = one(job(entry("resnet50", data_cfg=at_288), entry("convnext_tiny", data_cfg=at_288)))
    other_batch = one(job(entry("resnet50"), entry("convnext_tiny"), batch=256))
    other_method = one(job(entry("resnet50"), entry("convnext_tiny"), method="kl"))  # H200: kl_dp only
    for est in (unknown, reversed_pair, resized, other_batch, other_method):
        assert est.basis == SCALED
    # the reference pair scaled by its own parameters lands on its measured rate
    ref = one(job(entry("resnet50"), entry("convnext_tiny"), batch=256))
    assert ref.images_per_s == pytest.approx(H200.images_per_s)
    # more pixels, or fewer forward passes, change the rate the way the cost model says
    assert resized.images_per_s == pytest.approx(H200.images_per_s * (224 / 288) ** 2)
    assert other_method.images_per_s > H200.images_per_s  # kl runs no s0


def test_inputs_at_the_students_size_cost_the_teacher_that_size():
    small = {"input_size": (3, 112, 112)}
    own = one(job(entry("resnet50", data_cfg=small), entry("convnext_tiny")))
    hp = {"epochs": 2, "batch_size": 128, "inputs": "student"}
    j = job(entry("resnet50", data_cfg=small), entry("convnext_tiny"))
    shared = one(Job(j.id, dataclasses.replace(j.payload, hp=hp)))
    both_small = one(job(entry("resnet50", data_cfg=small), entry("convnext_tiny", data_cfg=small)))
    assert shared.basis == SCALED and shared.seconds == pytest.approx(both_small.seconds)
    assert shared.seconds < own.seconds


def test_doubling_the_epochs_or_the_transfer_set_doubles_the_estimate():
    for pair in ((entry("resnet50"), entry("convnext_tiny")), (entry("resnet50"), entry("vit_small_patch16_224"))):
        two, four = one(job(*pair, epochs=2)), one(job(*pair, epochs=4))
        assert four.seconds == pytest.approx(2 * two.seconds)
        small = estimate_job(job(*pair), PARAMS, N_TRANSFER, N_EVAL)
        large = estimate_job(job(*pair), PARAMS, 2 * N_TRANSFER, 2 * N_EVAL)
        assert large.seconds == pytest.approx(2 * small.seconds)


def test_evaluation_adds_the_students_forward_passes():
    j = job(entry("resnet50"), entry("convnext_tiny"))
    without, with_eval = one(j, n_eval=0), one(j)
    assert with_eval.eval_images == N_EVAL * 2 and with_eval.seconds > without.seconds
    # one forward pass of the student per eval image, against its training step (3 passes), s0's and the
    # teacher's pass per training image
    per_eval = (with_eval.seconds - without.seconds) / with_eval.eval_images
    per_train = without.seconds / without.train_images
    units = 4 * H200.student_params + H200.teacher_params
    assert per_eval / per_train == pytest.approx(H200.student_params / units)


def test_tiny_models_are_flagged_as_a_lower_bound():
    est = one(job(entry("tiny", "resnet18", kwargs={"channels": [8, 16, 32, 64]},
                        data_cfg={"input_size": (3, 32, 32)}), entry("resnet50")))
    assert est.basis == SCALED and not est.small  # the teacher is full size
    both = one(job(entry("tiny", "resnet18", data_cfg={"input_size": (3, 32, 32)}),
                   entry("tiny", "resnet18", data_cfg={"input_size": (3, 32, 32)})))
    assert both.small


def test_multi_teacher_modes_count_their_stages():
    s, ts = entry("resnet50"), (entry("convnext_tiny"), entry("vit_small_patch16_224"))
    single = one(job(s, ts[0])).seconds + one(job(s, ts[1])).seconds
    seq = one(job(s, ts[0], method="sequential_asc", teachers=ts, multi_method="kl_dp"))
    matched = one(job(s, ts[0], method="sequential_asc_matched", teachers=ts, multi_method="kl_dp"))
    parallel = one(job(s, ts[0], method="parallel", teachers=ts))
    assert seq.seconds == pytest.approx(single)  # one full run per teacher
    assert seq.train_images == 2 * matched.train_images  # compute-matched: each stage half of every epoch
    assert parallel.train_images == one(job(s, ts[0])).train_images
    assert seq.teachers == parallel.teachers == ("convnext_tiny", "vit_small_patch16_224")


def _plan(tmp_path, **sections):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "spec.toml"
    path.write_text(micro_spec(**sections))
    return make_plan(load_sweep(path), Paths(tmp_path / "home"))


def test_a_plan_is_estimated_job_by_job(tmp_path):
    plan = _plan(tmp_path)
    est = estimate_gpu_hours(plan)
    assert len(est.jobs) == len(plan.transfer_jobs) == 12 and not est.at_most and not est.note
    assert est.gpu_hours == pytest.approx(sum(j.seconds for j in est.jobs) / 3600)
    assert {j.basis for j in est.jobs} == {SCALED} and all(j.small for j in est.jobs)  # 16-px micro models
    assert est.by_basis() == {SCALED: (12, pytest.approx(est.gpu_hours))}
    line = est.line()
    assert line.startswith("GPU estimate: ") and "12 scaled from parameter counts" in line and "lower bound" in line
    # the same jobs as a list, with the plan's parameter counts, give the same estimate
    same = estimate_gpu_hours(plan.transfer_jobs, plan.params)
    assert same.gpu_hours == pytest.approx(est.gpu_hours)
    with pytest.raises(ValueError, match="params"):
        estimate_gpu_hours(plan.transfer_jobs)
    longer = estimate_gpu_hours(_plan(tmp_path / "e2", transfer={"epochs": 2}))
    assert longer.gpu_hours == pytest.approx(2 * est.gpu_hours)


def test_pairs_chosen_after_measurement_give_an_upper_bound(tmp_path):
    every = estimate_gpu_hours(_plan(tmp_path / "all", transfer={"controls": ["labels"]}))
    plan = _plan(tmp_path / "some", pairs={"policy": "stratified", "max_pairs": 2},
                 transfer={"controls": ["labels"]})
    assert plan.transfer_jobs is None
    bound = estimate_gpu_hours(plan)
    assert bound.at_most and "at most" in bound.line()
    assert len(bound.jobs) == 2 * 2 + 3  # two pairs x kl, kl_dp, and every model's control
    per_pair = sorted((sum(j.seconds for j in every.jobs if (j.student, j.teachers) == k), k)
                      for k in {(j.student, j.teachers) for j in every.jobs if j.method != "labels"})
    chosen = {(j.student, j.teachers) for j in bound.jobs if j.method != "labels"}
    assert chosen == {k for _, k in per_pair[-2:]}  # the costliest two
    assert bound.gpu_hours < every.gpu_hours


def test_what_cannot_be_estimated_says_why(tmp_path):
    plan = _plan(tmp_path, transfer={"methods": []})
    assert estimate_gpu_hours(plan).line() == "GPU estimate: no transfer jobs"
    j = job(entry("resnet50"), entry("convnext_tiny"), transfer=f"imagefolder:{tmp_path / 'not-here'}")
    gone = estimate_gpu_hours([j], PARAMS)  # a folder this machine does not have: nothing to count
    assert "not reachable from here" in gone.line() and not gone.jobs
    counted = estimate_gpu_hours([job(entry("resnet50"), entry("convnext_tiny"))], PARAMS)  # digits: counted
    assert counted.jobs[0].train_images == 2 * used_rows(4490, 128)


def test_input_sizes_come_from_the_data_config_then_the_name():
    assert input_side(entry("a", "resnet50", data_cfg={"input_size": (3, 160, 160)})) == 160
    assert input_side(entry("vit_base_patch16_384.augreg_in21k_ft_in1k")) == 384
    assert input_side(entry("convnext_base.fb_in22k_ft_in1k_384")) == 384
    for name in ("resnet50", "regnety_320", "mobilenetv3_large_100"):  # sizes of width, not of images
        assert input_side(entry(name)) == 224


def test_the_estimate_imports_no_torch():
    """Not even inside a function: `plan --dry-run` prints it on login nodes (integration/test_login_node.py runs
    that command without torch)."""
    tree = ast.parse((ROOT / "zoo_sweep" / "pipeline" / "estimate.py").read_text())
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"torch", "timm", "torchvision"}


def test_plan_prints_the_estimate_and_status_compares_it_with_the_run(tmp_path):
    from cli_helpers import invoke, plan_store

    from zoo_sweep.storage.store import Store

    planned = plan_store(tmp_path, micro_spec())
    r = invoke(*planned["base"], "plan", planned["spec"], "--dry-run")
    lines = r.stdout.splitlines()
    at = [i for i, ln in enumerate(lines) if ln.startswith("GPU estimate: ")]
    assert r.exit_code == 0 and len(at) == 1, r.output
    assert lines[at[0] - 1].startswith("estimate (rough")  # after what plan printed before it
    assert "12 job(s): 12 scaled from parameter counts" in lines[at[0]]
    assert "finished transfer job" not in invoke(*planned["base"], "status").stdout  # nothing has run yet

    store = Store(f"sqlite:///{planned['db']}")
    done = sorted(store.job_states("micro", "transfer"))[:2]
    for i, job_id in enumerate(done):
        store.start_job(job_id, "host:1:cpu")
        store.finish_job(job_id, "done", seconds=10.0 + i)
    r = invoke(*planned["base"], "status", "micro")
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stdout.splitlines() if "finished transfer job" in ln]
    assert len(lines) == 1, r.stdout
    assert lines[0].startswith("micro: 2 finished transfer job(s) took 0.01 h (21 s, the sum of their run times, on "
                               "cpu workers); estimated ")
    assert lines[0].endswith("(2 scaled from parameter counts): the estimate is for a GPU, the jobs ran on CPUs")
