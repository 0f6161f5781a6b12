"""The paper-reproduction specs plan what they promise: the paper's 20 x 20 ImageNet grid (less the one model
that is both student and teacher paired with itself) with the reference recipe (a dry run: timm's registry, no
weights, no data), and every ordered digits pair x the seven methods."""

from collections import Counter
from pathlib import Path

import timm  # noqa: F401  (imported at collection: torch's first import starts a process, which unit tests may not)

from zoo_sweep.paths import Paths
from zoo_sweep.pipeline.plan import is_control, load_sweep, make_plan

JOBS = Path(__file__).resolve().parents[2] / "jobs"
METHODS = ["kl", "xekl", "xekl_mcl", "kl_dp", "kl_dp_unsup", "cd", "crd"]
PAPER_TEACHERS = ["resmlp_36_224.fb_in1k", "resnext101_32x8d.fb_swsl_ig1b_ft_in1k", "mixnet_s.ft_in1k"]


def pairs_per_method(plan):
    out = {}
    for j in plan.transfer_jobs:
        if is_control(j):
            continue
        p = j.payload.to_dict()
        if "teachers" not in p:
            out.setdefault(p["method"], set()).add((p["student"]["name"], p["teacher"]["name"]))
    return out


def test_imagenet_paper_is_twenty_students_by_twenty_teachers_with_the_reference_recipe(tmp_path):
    spec = load_sweep(JOBS / "imagenet-paper.toml")
    p, t = spec.pairs, spec.transfer
    assert p.policy == "explicit" and len(set(p.students)) == 20 and len(set(p.teachers)) == 20
    # the three teachers the reference's history names (rows 77, 302, 232); row 77 is also a student
    assert set(PAPER_TEACHERS) <= set(p.teachers)
    assert set(p.students) & set(p.teachers) == {"resmlp_36_224.fb_in1k"}
    assert (t.augment, t.inputs, t.xe_on, t.lr_scaling, t.seeds, t.lr, t.batch_size, t.epochs) == \
        ("paper", "student", "probs", "linear", (123,), 1e-4, 256, 20)
    assert (t.mcl_kl_mean, t.mcl_schedule, t.mcl_reset, t.cd_form, t.crd_form, t.teacher_bn) == \
        ("kept", "reference", "reference", "reference", "reference", "train")
    plan = make_plan(spec, Paths(tmp_path), dry_run=True)
    by_method = pairs_per_method(plan)
    assert sorted(by_method) == sorted(METHODS)
    for pairs in by_method.values():  # every student with every teacher but itself: 399
        assert pairs == {(s, te) for s in p.students for te in p.teachers if s != te} and len(pairs) == 399
    families = {m.name: m.family for m in plan.models}
    assert sorted(families[s] for s in p.students).count("mlp") == 7
    assert sorted(families[s] for s in p.students).count("transformer") == 6
    assert Counter(families[te] for te in p.teachers) == {"transformer": 7, "cnn": 7, "mlp": 6}  # as its comment says


def test_digits_paper_is_every_ordered_pair_by_the_seven_methods(tmp_path):
    spec = load_sweep(JOBS / "digits-paper.toml")
    plan = make_plan(spec, Paths(tmp_path), dry_run=True)
    by_method = pairs_per_method(plan)
    assert sorted(by_method) == sorted(METHODS) and all(len(v) == 72 for v in by_method.values())
    t = spec.transfer
    assert (t.xe_on, t.mcl_kl_mean, t.mcl_schedule, t.cd_form, t.crd_form, t.teacher_bn) == \
        ("probs", "kept", "reference", "reference", "reference", "train")
