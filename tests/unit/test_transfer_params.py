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


# ------------------------------------------------------------------ reference-code options
from zoo_sweep.config.params import CHOICES, LEGACY, job_hp  # noqa: E402
from zoo_sweep.pipeline.plan import TRANSFER_HP, method_hp  # noqa: E402
from zoo_sweep.transfer.catalog import CATALOG  # noqa: E402


@pytest.mark.parametrize("value, kind", [(True, "shift"), (False, "none"), ("paper", "paper"), ("none", "none")])
def test_augment_names_its_kind_and_older_specs_still_read(value, kind):
    assert parse_spec({"name": "x", "transfer": {"augment": value}}).transfer.augment == kind


@pytest.mark.parametrize("transfer, message", [
    ({"augment": "flip"}, "[transfer] augment must be one of 'paper', 'shift', 'none', got 'flip'"),
    ({"augment": 1}, '[transfer] augment must be "paper", "shift" or "none"'),
    ({"xe_on": "probabilities"}, "[transfer] xe_on must be one of 'logits', 'probs', got 'probabilities'"),
    ({"inputs": "teacher"}, "[transfer] inputs must be one of 'own', 'student'"),
    ({"crd_form": "nce"}, "[transfer] crd_form must be one of 'infonce', 'reference'"),
])
def test_bad_option_values_are_named(transfer, message):
    with pytest.raises(UserError) as e:
        parse_spec({"name": "x", "transfer": transfer})
    assert message in str(e.value)


def test_jobs_of_specs_without_the_newer_options_keep_their_ids():
    """The hyper-parameters a job hashes, for a spec that uses no option added with the reference forms,
    are exactly those planned before the options existed (ids, results and cached streams stay valid)."""
    t = parse_spec({"name": "x"}).transfer
    old_common = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "alpha", "augment")
    old_params = {"kl": ("top_k",), "xekl": ("top_k",), "flip_avg": ("top_k",),
                  "xekl_mcl": ("mcl_alpha", "mcl_top_k", "tau", "mcl_every", "mcl_lr"), "cd": ("cd_weight", "cd_xe"),
                  "crd": ("crd_weight", "crd_xe", "crd_dim", "crd_negatives", "crd_temperature")}
    for method, params in old_params.items():
        assert method_hp(t, method) == {**{k: getattr(t, k) for k in old_common + params}, "augment": True}
    none = parse_spec({"name": "x", "transfer": {"augment": False}}).transfer
    assert method_hp(none, "kl")["augment"] is False


def test_every_option_reaches_the_jobs_that_read_it_and_reads_back():
    options = {"augment": "paper", "inputs": "student", "lr_scaling": "linear", "xe_on": "probs",
               "mcl_kl_mean": "kept", "mcl_schedule": "reference", "mcl_reset": "reference",
               "flip_avg_neutral": "student_logits", "cd_form": "reference", "crd_form": "reference",
               "teacher_bn": "train"}
    assert set(options) == set(CHOICES)
    t = parse_spec({"name": "x", "transfer": options}).transfer
    readers = {k: [m for m, info in CATALOG.items() if k in info.params] for k in options}
    for key in options:
        assert key in TRANSFER_HP or readers[key], key  # common, or listed by the methods that read it
    assert readers["xe_on"] == ["xekl", "xekl_mcl"] and readers["teacher_bn"] == ["cd", "crd"]
    for method in ("kl", "xekl", "xekl_mcl", "flip_avg", "cd", "crd"):
        hp = method_hp(t, method)
        back = TransferParams.from_dict(hp)
        for k in hp:
            assert getattr(back, k) == getattr(t, k), (method, k)
        assert hp["augment"] == "paper" and hp["inputs"] == "student"
    # a payload written before an option existed reads back as the behaviour it had then
    old = TransferParams.from_dict({"augment": True, "batch_size": 64})
    assert old.augment == "shift" and all(getattr(old, k) == v for k, v in LEGACY.items())
    assert job_hp(old, ["augment", "inputs"]) == {"augment": True}
