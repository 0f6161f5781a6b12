"""gpus_per_job = "auto": the rule that turns measured images/s into jobs per GPU, the remembered measurements,
and how the spec and the launch flag say it."""

import tomllib

import pytest
from conftest import micro_spec

from zoo_sweep.config.spec import parse_spec as parse_doc
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline import share
from zoo_sweep.pipeline.options import LaunchOptions


@pytest.mark.parametrize("rates, k", [
    ({1: 1000.0, 2: 1900.0, 4: 3000.0, 8: 3100.0}, 4),  # 8 adds 3 %: not worth it
    ({1: 1000.0, 2: 1099.0}, 1),  # just under the 10 % a doubling must add
    ({1: 1000.0, 2: 1100.0, 4: 1300.0}, 4),  # exactly 10 %, then 18 %
    ({1: 1000.0, 2: 1800.0, 4: None}, 2),  # 4 failed (out of memory)
    ({1: 1000.0, 2: 900.0, 4: 5000.0}, 1),  # stops at the first doubling that does not pay
    ({1: 1000.0}, 1),
])
def test_each_doubling_must_add_ten_percent(rates, k):
    assert share.choose(rates) == k
    assert share.Share("NVIDIA H100", "kl_dp a -> b", rates).gpus_per_job == 1 / k


def test_a_measurement_is_remembered_per_job_speed_options_and_gpu(tmp_path):
    paths = Paths(tmp_path)
    key = share.memo_key(_job(), {"compile": False, "fused": False}, "NVIDIA H200")
    assert share.remembered(paths, key) is None
    share.remember(paths, key, share.Share("NVIDIA H200", "kl_dp a -> b", {1: 900.0, 2: 1700.0, 4: None}))
    found = share.remembered(paths, key)
    assert found.remembered and found.rates == {1: 900.0, 2: 1700.0, 4: None} and found.jobs_per_gpu == 2
    assert "2 job(s) per GPU (gpus_per_job 0.5); remembered from an earlier launch on NVIDIA H200" in found.line()
    assert "4: failed" in found.line()
    for other in (share.memo_key(_job(), {"compile": True, "fused": False}, "NVIDIA H200"),
                  share.memo_key(_job(), {"compile": False, "fused": False}, "NVIDIA H100"),
                  share.memo_key(_job(method="kl"), {"compile": False, "fused": False}, "NVIDIA H200")):
        assert other != key and share.remembered(paths, other) is None


def _job(method: str = "kl_dp", student: str = "a", teacher: str = "b", multi: bool = False):
    from zoo_sweep.pipeline.jobs import Job, TransferPayload
    from zoo_sweep.zoo.entry import ModelEntry

    s, t = (ModelEntry(n, "resnet18", "digits", None) for n in (student, teacher))
    p = TransferPayload(student=s, teacher=t, method=method, seed=0, hp={"batch_size": 64}, eval="digits:eval",
                        transfer="digits:transfer", image_size=32, class_map=None, teachers=(t,) if multi else None)
    return Job.new({"student": student, "teacher": teacher, "method": method, "multi": multi}, p)


def test_the_job_measured_is_the_single_teacher_job_with_the_most_work_per_image():
    params = {"a": 1_000, "b": 2_000, "big": 50_000}
    jobs = [_job(), _job(student="big", multi=True), _job(student="big"), _job(teacher="big", student="a")]
    assert share.heaviest(jobs, params) is jobs[2]  # 52,000 units against 51,000; the multi-teacher one is not measured
    assert share.heaviest([jobs[1]], params) is None


def parse_spec(text: str):
    return parse_doc(tomllib.loads(text))


def test_the_spec_and_the_flag_say_auto_or_a_share():
    spec = parse_spec(micro_spec(run={"gpus_per_job": "auto"}))
    assert spec.run.gpus_per_job == "auto"
    assert parse_spec(micro_spec(run={"gpus_per_job": 0.25})).run.gpus_per_job == 0.25
    with pytest.raises(UserError, match=r'\[run\] gpus_per_job must be a number > 0 or "auto"'):
        parse_spec(micro_spec(run={"gpus_per_job": "fast"}))
    assert LaunchOptions(gpus_per_job="auto").check().gpus_per_job == "auto"
    assert LaunchOptions(gpus_per_job="0.5").check().gpus_per_job == 0.5
    for bad, line in (("fast", '--gpus-per-job must be a number > 0 or "auto", got \'fast\''),
                      ("0", "--gpus-per-job must be a number > 0, got 0")):
        with pytest.raises(UserError, match=line):
            LaunchOptions(gpus_per_job=bad).check()
