"""Method parameters and multi-teacher keys of [transfer]: paper defaults, and one clear message per mistake,
at parse time when the spec alone shows it, at plan time when it needs the zoo or the class count."""


import pytest

from zoo_sweep.config.spec import TransferSpec, parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.plan import check_names, make_plan
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
    ({"alpha": -0.1}, "[transfer] alpha must be >= 0, got -0.1"),
    ({"mcl_alpha": 2.0}, "[transfer] mcl_alpha must be <= 1, got 2.0"),
    ({"tau": 1.0}, "[transfer] tau must be < 1, got 1.0"),
    ({"tau": 0.0}, "[transfer] tau must be > 0, got 0.0"),
    ({"top_k": -1}, "[transfer] top_k must be >= 0, got -1"),
    ({"mcl_every": 0}, "[transfer] mcl_every must be >= 1, got 0"),
    ({"methods": ["kl", "nope"]}, "unknown method 'nope' in [transfer] methods"),
    ({"methods": ["parallel"]}, "'parallel' is a multi-teacher mode"),
    ({"multi_teacher": ["ensemble"], "multi_students": ["a"]}, "unknown multi-teacher mode 'ensemble'"),
    ({"multi_teacher": ["soup"]}, "multi_teacher needs multi_students"),
    ({"multi_teacher": ["soup"], "multi_students": ["vit_a"], "teachers": ["vit_a", "mixer_a"]},
     "teachers contains the student vit_a"),
    ({"multi_method": "parallel"}, "unknown [transfer] multi_method 'parallel'"),
])
def test_bad_method_parameters_are_named(transfer, message):
    with pytest.raises(UserError) as e:
        check_names(parse_spec({"name": "x", "transfer": transfer}))
    assert message in str(e.value)


def _plan(tmp_path, zoo=None, transfer=None):
    spec = parse_spec({"name": "x", "zoo": zoo or {"source": "digits", "recipe": "micro"},
                       "transfer": transfer or {}})
    return make_plan(spec, Paths(tmp_path))


def test_models_with_another_class_count_than_the_data_are_refused(tmp_path):
    zoo = {"source": "timm", "models": ["resnet10t", "resnet14t"], "allow_random_weights": True, "num_classes": 5}
    with pytest.raises(UserError, match="10 classes of digits:eval"):
        _plan(tmp_path, zoo=zoo)
