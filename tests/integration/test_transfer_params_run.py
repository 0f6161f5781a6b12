"""Method parameters and multi-teacher keys of [transfer]: paper defaults, and one clear message per mistake,
at parse time when the spec alone shows it, at plan time when it needs the zoo or the class count."""


import pytest

from zoo_sweep.config.spec import parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.plan import make_plan


def _plan(tmp_path, zoo=None, transfer=None):
    spec = parse_spec({"name": "x", "zoo": zoo or {"source": "digits", "recipe": "micro"},
                       "transfer": transfer or {}})
    return make_plan(spec, Paths(tmp_path))


@pytest.mark.parametrize("transfer, message", [
    ({"top_k": 11}, "top_k = 11 is larger than the 10 classes of digits:eval"),
    ({"methods": ["xekl_mcl"]}, "mcl_top_k = 100 (the paper's ImageNet value) is larger than the 10 classes"),
    ({"multi_teacher": ["soup"], "multi_students": ["cnn_micro"], "teachers": ["vit_micro"]},
     "needs at least two teachers"),
    ({"multi_teacher": ["soup"], "multi_students": ["cnn_micro"], "teachers": ["vit_micro", "ghost"]},
     "teachers names ghost, not in the zoo"),
])
def test_plan_time_checks_need_the_class_count_or_the_zoo(tmp_path, transfer, message):
    with pytest.raises(UserError) as e:
        _plan(tmp_path, transfer=transfer)
    assert message in str(e.value)


def test_multi_teacher_jobs_and_per_method_parameters(tmp_path):
    plan = _plan(tmp_path, transfer={"methods": ["kl", "xekl_mcl"], "mcl_top_k": 5, "top_k": 3, "controls": [],
                                     "multi_teacher": ["parallel", "sequential_asc", "soup"],
                                     "multi_students": ["cnn_micro"]})
    payloads = [j.payload.to_dict() for j in plan.transfer_jobs]
    single = [p for p in payloads if "teachers" not in p]
    multi = [p for p in payloads if "teachers" in p]
    assert len(single) == 6 * 2 and len(multi) == 3
    kl = next(p for p in single if p["method"] == "kl")
    mcl = next(p for p in single if p["method"] == "xekl_mcl")
    assert kl["hp"]["top_k"] == 3 and "tau" not in kl["hp"]  # a changed tau re-runs MCL jobs only
    assert mcl["hp"]["mcl_top_k"] == 5 and mcl["hp"]["tau"] == 0.9999
    for p in multi:
        assert [t["name"] for t in p["teachers"]] == ["vit_micro", "mlp_micro"]  # every other model
        assert p["teacher"]["name"] == "vit_micro" and p["multi_method"] == "kl_dp"
    assert len({j.id for j in plan.transfer_jobs}) == len(plan.transfer_jobs)
