"""Method parameters and multi-teacher keys of [transfer]: paper defaults, and one clear message per mistake,
at parse time when the spec alone shows it, at plan time when it needs the zoo or the class count."""

import json

import pytest

from zoo_sweep import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.plan import make_plan
from zoo_sweep.spec import TransferSpec, parse_spec
from zoo_sweep.transfer.train import TransferParams


def test_paper_defaults():
    t = TransferSpec()
    assert (t.mcl_alpha, t.mcl_top_k, t.tau, t.mcl_every, t.mcl_lr) == (0.68, 100, 0.9999, 2, 0.01)
    assert (t.cd_weight, t.cd_xe, t.crd_weight, t.crd_xe, t.crd_dim, t.crd_negatives) == (10, 0.1, 0.8, 1, 128, 4096)
    assert t.top_k == 0
    # every method parameter of the spec reaches the training loop under the same name
    names = set(TransferParams.__dataclass_fields__)
    assert {"top_k", "mcl_alpha", "tau", "mcl_every", "cd_weight", "crd_negatives"} <= names


@pytest.mark.parametrize("transfer, message", [
    ({"alpha": -0.1}, "alpha must lie in [0, 1]"),
    ({"mcl_alpha": 2.0}, "mcl_alpha must lie in [0, 1]"),
    ({"tau": 1.0}, "tau must lie in (0, 1)"),
    ({"tau": 0.0}, "tau must lie in (0, 1)"),
    ({"top_k": -1}, "top_k and mcl_top_k must be >= 0"),
    ({"mcl_every": 0}, "mcl_every, crd_dim and crd_negatives must be >= 1"),
    ({"methods": ["kl", "nope"]}, "unknown method 'nope'"),
    ({"methods": ["parallel"]}, "'parallel' is a multi-teacher mode"),
    ({"multi_teacher": ["ensemble"], "multi_students": ["a"]}, "unknown multi-teacher mode 'ensemble'"),
    ({"multi_teacher": ["soup"]}, "multi_teacher needs multi_students"),
    ({"multi_teacher": ["soup"], "multi_students": ["vit_a"], "teachers": ["vit_a", "mixer_a"]},
     "teachers contains the student vit_a"),
    ({"multi_method": "parallel"}, "multi_method must be a single-teacher method"),
])
def test_bad_method_parameters_are_named(transfer, message):
    with pytest.raises(UserError) as e:
        parse_spec({"name": "x", "transfer": transfer})
    assert message in str(e.value)


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


def test_models_with_another_class_count_than_the_data_are_refused(tmp_path):
    zoo = {"source": "timm", "models": ["resnet10t", "resnet14t"], "allow_random_weights": True, "num_classes": 5}
    with pytest.raises(UserError, match="10 classes of digits:eval"):
        _plan(tmp_path, zoo=zoo)


def test_multi_teacher_jobs_and_per_method_parameters(tmp_path):
    plan = _plan(tmp_path, transfer={"methods": ["kl", "xekl_mcl"], "mcl_top_k": 5, "top_k": 3,
                                     "multi_teacher": ["parallel", "sequential_asc", "soup"],
                                     "multi_students": ["cnn_micro"]})
    payloads = [json.loads(j["spec"]) for j in plan.transfer_jobs]
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
    assert len({j["id"] for j in plan.transfer_jobs}) == len(plan.transfer_jobs)
