"""Teacher-output reuse: cached teacher / s0 logits give the same results as computing them.

Real tiny timm models on a slice of the digits data, no Ray. A counting wrapper proves the cached model is
not run again; the planner and the job order are checked on real plan payloads.
"""


import dataclasses

import pytest
import torch
from tiny import CFG, assert_same_rows, cnn, correct, digits_slices, mlp, one_thread  # noqa: F401  (one_thread: autouse)

from zoo_sweep.transfer.logit_store import (
    LogitCache,
    job_streams,
    plan_streams,
    stream_bytes,
)
from zoo_sweep.transfer.train import TransferJob, TransferParams, run_transfer

HP = TransferParams(epochs=2, batch_size=32, lr=0.05)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_slices(tmp_path_factory.mktemp("cache"), 100, 64)


class Counting(torch.nn.Module):
    """A real model that counts its forward passes (to show a cached model is not run)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def run(data, student_seed, teacher, method="kl_dp", hp=HP, **caches):
    tr, ev = data
    student = cnn(student_seed)
    job = TransferJob(student, teacher, method, hp, 0, tr, ev, CFG, CFG, correct(cnn(student_seed), ev),
                      correct(teacher, ev))
    return run_transfer(job, **caches), student


def test_cached_teacher_and_s0_give_the_same_results_and_skip_the_forward_passes(data, tmp_path):
    plain, s_plain = run(data, 1, mlp(5))
    t_cache, s0_cache = LogitCache(tmp_path / "t"), LogitCache(tmp_path / "s0")
    first, _ = run(data, 1, mlp(5), teacher_cache=t_cache, s0_cache=s0_cache)  # computes and stores
    assert (t_cache.writes, s0_cache.writes, t_cache.reads) == (2, 2, 0)
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["e1.pt", "e2.pt"]
    teacher = Counting(mlp(5))
    second, s_second = run(data, 1, teacher, teacher_cache=t_cache, s0_cache=s0_cache)  # reads both back
    assert (t_cache.reads, s0_cache.reads) == (2, 2)
    eval_passes = 1  # run() evaluates the teacher once for its correctness; training never runs it
    assert teacher.calls == -(-64 // 256) * eval_passes
    assert_same_rows(plain, first)
    assert_same_rows(plain, second)
    for (k, v1), v2 in zip(s_plain.state_dict().items(), s_second.state_dict().values()):
        assert torch.equal(v1, v2), k  # CPU logits are stored as float32: bit-identical training


def test_a_teacher_stream_serves_another_student(data, tmp_path):
    """The stream depends on the seed, not on the student: student B reads what student A's job stored."""
    t_cache = LogitCache(tmp_path / "t")
    run(data, 1, mlp(5), method="kl", teacher_cache=t_cache)
    plain, _ = run(data, 3, mlp(5), method="kl")
    reused, _ = run(data, 3, mlp(5), method="kl", teacher_cache=t_cache)
    assert t_cache.reads == 2
    assert_same_rows(plain, reused)


def test_a_damaged_epoch_file_is_recomputed(data, tmp_path):
    t_cache = LogitCache(tmp_path / "t")
    run(data, 1, mlp(5), method="kl", teacher_cache=t_cache)
    (tmp_path / "t" / "e1.pt").write_bytes(b"truncated")
    torch.save(torch.zeros(7, 10), tmp_path / "t" / "e2.pt")  # wrong length: another stream's file
    plain, _ = run(data, 1, mlp(5), method="kl")
    again, _ = run(data, 1, mlp(5), method="kl", teacher_cache=t_cache)
    assert t_cache.reads == 0 and t_cache.writes == 4
    assert_same_rows(plain, again)


class Moves(Counting):
    """Counts requests to move it. Test double for a GPU: on the CPU a move changes nothing, so the request
    is what shows that a job would have put the model in device memory."""

    def __init__(self, model):
        super().__init__(model)
        self.moves = 0

    def to(self, *args, **kwargs):
        self.moves += 1
        return super().to(*args, **kwargs)


def test_a_teacher_read_from_the_cache_never_goes_to_the_device(data, tmp_path):
    tr, ev = data
    t_cache = LogitCache(tmp_path / "t")

    def job(teacher):
        ok = correct(teacher, ev)
        teacher.moves = 0  # what the correctness pass did is not the job's
        run_transfer(TransferJob(cnn(1), teacher, "kl", HP, 0, tr, ev, CFG, CFG, correct(cnn(1), ev), ok),
                     teacher_cache=t_cache)
        return teacher.moves

    assert job(Moves(mlp(5))) >= 1  # computes both epochs
    assert job(Moves(mlp(5))) == 0  # reads both
    (tmp_path / "t" / "e2.pt").write_bytes(b"truncated")
    assert job(Moves(mlp(5))) >= 1  # epoch 2 must be computed again, so the teacher goes to the device


def test_feature_methods_refuse_a_teacher_cache(data, tmp_path):
    with pytest.raises(ValueError, match="cannot read cached logits"):
        run(data, 1, mlp(5), method="cd", teacher_cache=LogitCache(tmp_path / "t"))


def payload(student, teacher, method="kl_dp", seed=0, **extra):
    return {"student": {"name": student}, "teacher": {"name": teacher}, "method": method, "seed": seed,
            "hp": {"batch_size": 32, "augment": True, "epochs": 2}, "image_size": 32, **extra}


def test_auto_caches_streams_used_twice_and_orders_jobs_to_compute_each_once():
    jobs = [(f"j{i}", payload(s, t)) for i, (s, t) in enumerate([("a", "c"), ("a", "d"), ("b", "c"), ("b", "d")])]
    plan = plan_streams(jobs, "auto", "tk", n_transfer=1000, num_classes=10, max_bytes=1e9)
    assert set(plan.streams) == {"j0", "j1", "j2", "j3"}
    assert all(set(s) == {"teacher", "s0"} for s in plan.streams.values())
    assert set(plan.uses.values()) == {2}  # a, b as s0 twice; c, d as teacher twice
    order = [j["id"] for j in plan.order([{"id": jid} for jid, _ in jobs])]
    assert order[:2] == ["j0", "j3"]  # (a,c) and (b,d) compute all four streams; the other two only read
    assert plan_streams(jobs, "off", "tk", 1000, 10, 1e9).streams == {}


def test_auto_leaves_out_single_use_large_and_feature_streams():
    jobs = [("j0", payload("a", "c")), ("j1", payload("b", "c", method="kl")), ("j2", payload("a", "d", seed=1)),
            ("j3", payload("e", "c", method="crd"))]
    plan = plan_streams(jobs, "auto", "tk", 1000, 10, max_bytes=1e9)
    # c teaches j0 and j1 with one stream; a's s0 streams differ by seed; crd reads features
    assert plan.streams == {"j0": {"teacher": job_streams(jobs[0][1], "tk")["teacher"]},
                            "j1": {"teacher": job_streams(jobs[1][1], "tk")["teacher"]}}
    assert stream_bytes(1000, 10, jobs[0][1]["hp"]) == 992 * 10 * 4 * 2
    small = plan_streams(jobs, "auto", "tk", 1000, 10, max_bytes=1000)
    assert small.streams == {} and small.skipped_large == 1


def test_a_stream_is_removed_when_its_last_job_ends(tmp_path):
    jobs = [("j0", payload("a", "c", method="kl")), ("j1", payload("b", "c", method="kl"))]
    plan = plan_streams(jobs, "auto", "tk", 1000, 10, 1e9)
    key = plan.streams["j0"]["teacher"]
    (tmp_path / key / "cpu-fp32").mkdir(parents=True)
    plan.release("j0", tmp_path)
    assert (tmp_path / key).exists()
    plan.release("j1", tmp_path)
    assert not (tmp_path / key).exists()


def test_the_spec_names_the_policies_on_a_typo():
    from zoo_sweep.config.spec import parse_spec
    from zoo_sweep.errors import UserError
    from zoo_sweep.pipeline.plan import check_names

    assert parse_spec({"name": "x"}).transfer.teacher_cache == "auto"
    assert parse_spec({"name": "x", "transfer": {"teacher_cache": "off"}}).transfer.teacher_cache == "off"
    with pytest.raises(UserError, match=r"unknown \[transfer\] teacher_cache 'on'; known: auto, off"):
        check_names(parse_spec({"name": "x", "transfer": {"teacher_cache": "on"}}))


@pytest.mark.parametrize("options", [{"augment": "paper"}, {"augment": "paper", "inputs": "student"}])
def test_the_papers_augmentation_and_inputs_keep_cached_logits_exact(data, tmp_path, options):
    """The "paper" augmentation draws from the data stream a fixed number of times per batch, on any data: a
    job that reads the teacher's and s0's logits back trains exactly as one that computes them."""
    hp = dataclasses.replace(HP, **options)
    plain, s_plain = run(data, 1, mlp(5), hp=hp)
    t_cache, s0_cache = LogitCache(tmp_path / "t"), LogitCache(tmp_path / "s0")
    first, _ = run(data, 1, mlp(5), hp=hp, teacher_cache=t_cache, s0_cache=s0_cache)
    second, s_second = run(data, 1, Counting(mlp(5)), hp=hp, teacher_cache=t_cache, s0_cache=s0_cache)
    assert (t_cache.writes, t_cache.reads, s0_cache.reads) == (2, 2, 2)
    assert_same_rows(plain, first)
    assert_same_rows(plain, second)
    for (k, v1), v2 in zip(s_plain.state_dict().items(), s_second.state_dict().values()):
        assert torch.equal(v1, v2), k
    other, _ = run(data, 1, mlp(5), hp=HP)  # the shift augmentation: another stream, other results
    assert other[-1]["train_loss"] != plain[-1]["train_loss"]


def test_the_stream_names_its_augmentation_and_under_student_inputs_the_student():
    base = payload("a", "c")
    paper = {**base, "hp": {**base["hp"], "augment": "paper"}}
    student_inputs = {**base, "hp": {**base["hp"], "inputs": "student"}}
    other_student = {**student_inputs, "student": {"name": "b"}}
    keys = [job_streams(p, "tk")["teacher"] for p in (base, paper, student_inputs, other_student)]
    assert len(set(keys)) == 4  # under student inputs the teacher's stream depends on the student's geometry
    # the shift stream of a job planned before augment named its kind keeps its key
    assert job_streams(payload("b", "c"), "tk")["teacher"] == keys[0]
