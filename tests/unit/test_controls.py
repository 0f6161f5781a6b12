"""Controls: Δ over a control on small frames computed by hand, and the convergence rule on constructed sweeps
(converged, not converged, one seed with and without the sweep's seed noise)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from zoo_sweep.science import controls as ctl
from zoo_sweep.science import stats

NAMES = ["labels", "self_dist"]


def _row(method, student, teacher, seed, delta, epoch=2, final=True, multi=0):
    return {"method": method, "student": student, "teacher": teacher, "seed": seed, "epoch": epoch,
            "final": final, "delta": delta, "multi_teacher": multi}


def test_delta_over_controls_is_the_difference_with_the_same_student_seed_and_epoch():
    rows = pd.DataFrame([
        _row("kl", "a", "b", 0, 3.0), _row("kl", "a", "b", 1, 4.0), _row("kl", "b", "a", 0, -1.0),
        _row("kl", "a", "b", 0, 9.0, epoch=1, final=False),
        _row("labels", "a", "a", 0, 1.0), _row("labels", "a", "a", 1, 2.5), _row("labels", "b", "b", 0, 0.5),
        _row("labels", "a", "a", 0, 0.2, epoch=1, final=False),
        _row("self_dist", "a", "a", 0, -0.5),
        _row("parallel", "a", "b+c", 0, 7.0, multi=1),  # multi-teacher: not a method row
    ])
    got = ctl.delta_over_controls(rows, NAMES)
    key = list(zip(got["method"], got["student"], got["teacher"], got["seed"], got["epoch"]))
    assert key == [("kl", "a", "b", 0, 2), ("kl", "a", "b", 1, 2), ("kl", "b", "a", 0, 2), ("kl", "a", "b", 0, 1)]
    np.testing.assert_allclose(got["delta_over_labels"], [3.0 - 1.0, 4.0 - 2.5, -1.0 - 0.5, 9.0 - 0.2])
    # self_dist ran for student a, seed 0, last epoch only: the other rows have no control to subtract
    np.testing.assert_allclose(got["delta_over_self_dist"], [3.0 + 0.5, np.nan, np.nan, np.nan])
    assert list(got.columns[-2:]) == ["delta_over_labels", "delta_over_self_dist"]
    assert ctl.present(rows, NAMES) == NAMES and ctl.present(rows, ["self_dist", "labels"]) == ["self_dist", "labels"]


def test_rows_without_their_control_get_nan_and_absent_controls_no_column():
    rows = pd.DataFrame([_row("kl", "a", "b", 0, 3.0), _row("kl", "a", "b", 1, 4.0), _row("kl", "c", "b", 0, 1.0),
                         _row("labels", "a", "a", 0, 1.0)])
    got = ctl.delta_over_controls(rows, NAMES)
    np.testing.assert_allclose(got["delta_over_labels"], [2.0, np.nan, np.nan])  # seed 1, student c: none
    assert "delta_over_self_dist" not in got
    none = ctl.delta_over_controls(rows[rows["method"] == "kl"], NAMES)
    assert not [c for c in none.columns if c.startswith("delta_over_")] and len(none) == 3
    assert ctl.delta_over_controls(rows.iloc[:0], NAMES).empty


def test_a_control_name_with_another_teacher_is_a_method_row():
    """An older sweep ran self_dist per pair (a real teacher named): those rows are pairs of a method, not
    controls; only a run with the student as its own teacher is one."""
    rows = pd.DataFrame([_row("self_dist", "a", "b", 0, 0.3), _row("labels", "a", "a", 0, 1.0)])
    methods, controls = ctl.split_controls(rows, NAMES)
    assert list(methods["method"]) == ["self_dist"] and list(controls["method"]) == ["labels"]
    assert ctl.delta_over_controls(rows, NAMES)["delta_over_labels"].tolist() == [pytest.approx(-0.7)]


def test_seed_averaged_pair_rows_match_on_the_student():
    """Rows without seed and epoch (transfer_pairs rows, seeds averaged) match their student's control."""
    rows = pd.DataFrame([{"method": "kl", "student": "a", "teacher": "b", "delta": 2.0},
                         {"method": "labels", "student": "a", "teacher": "a", "delta": 0.5}])
    assert ctl.delta_over_controls(rows, NAMES)["delta_over_labels"].tolist() == [1.5]


def _labels(deltas: dict[str, list[float]], extra=()) -> pd.DataFrame:
    """Final labels runs: student -> its Δ per seed; ``extra``: other rows (e.g. method runs)."""
    rows = [_row("labels", s, s, i, d) for s, ds in deltas.items() for i, d in enumerate(ds)]
    rows += [_row("labels", s, s, 0, 50.0, epoch=1, final=False) for s in deltas]  # not the final epoch: ignored
    return pd.DataFrame(rows + list(extra))


def test_convergence_rule_on_a_converged_zoo():
    # means -0.3, 0.3, -0.2, 0.2; every student's seeds spread +-0.5: SD 0.5 > |mean|
    conv = ctl.convergence(_labels({s: [m - 0.5, m, m + 0.5] for s, m in zip("abcd", (-0.3, 0.3, -0.2, 0.2))}))
    st = conv.students.set_index("student")
    np.testing.assert_allclose(st["labels_delta"], [-0.3, 0.3, -0.2, 0.2])
    np.testing.assert_allclose(st["labels_seed_sd"], 0.5)
    assert (st["noise"] == "its seeds").all() and (st["seeds"] == 3).all()
    assert (st["verdict"] == ctl.CONVERGED).all() and conv.not_converged == []
    assert conv.verdict == ctl.CONVERGED and conv.zoo.contains(0) and conv.zoo.n == 4
    assert conv.zoo.estimate == pytest.approx(0.0, abs=1e-12) and conv.zoo.method == "t over 4 student means"
    assert conv.lines()[0] == "a: labels Δ -0.30 (over 3 seeds, seed SD 0.50): converged within noise"


def test_convergence_rule_on_an_unconverged_zoo():
    means = dict(zip("abcd", (2.0, 2.4, 1.6, 0.3)))
    conv = ctl.convergence(_labels({s: [m - 0.5, m, m + 0.5] for s, m in means.items()}))
    assert conv.verdict == ctl.NOT_CONVERGED and conv.zoo.lo > 0
    # the t interval over 4 student means, by hand
    m = np.array(list(means.values()))
    half = stats.t_quantile(0.975, 3) * m.std(ddof=1) / 2
    assert (conv.zoo.lo, conv.zoo.hi) == (pytest.approx(m.mean() - half), pytest.approx(m.mean() + half))
    assert conv.not_converged == ["a", "b", "c"]  # d: 0.3 is within its seed SD 0.5
    assert conv.lines()[0] == "a: labels Δ +2.00 (over 3 seeds, seed SD 0.50): not converged"


def test_label_training_that_hurts_is_no_sign_of_unconverged_students():
    conv = ctl.convergence(_labels({s: [m - 0.1, m + 0.1] for s, m in zip("abc", (-2.0, -1.5, -2.5))}))
    assert conv.verdict == ctl.LABELS_HURT and conv.zoo.hi < 0 and conv.not_converged == []


def test_one_seed_uses_the_sweeps_pooled_seed_noise():
    """One labels run per student: its seed noise is the sweep's pooled seed-to-seed SD of Δ over the runs with
    two or more seeds (here: two method pairs with seeds 0 and 1)."""
    methods = [_row("kl", "a", "b", 0, 1.0), _row("kl", "a", "b", 1, 2.0),  # SD 0.707
               _row("kl", "b", "a", 0, 0.0), _row("kl", "b", "a", 1, 2.0),  # SD 1.414
               _row("kl", "c", "a", 0, 5.0),  # one seed: no degrees of freedom
               _row("parallel", "a", "b+c", 0, 0.0, multi=1), _row("parallel", "a", "b+c", 1, 90.0, multi=1)]
    conv = ctl.convergence(_labels({"a": [1.0], "b": [0.9], "c": [3.0]}, methods))
    pooled = math.sqrt((0.5 + 2.0) / 2)  # the multi-teacher runs are left out
    assert conv.pooled_sd == pytest.approx(pooled)
    st = conv.students.set_index("student")
    assert (st["noise"] == "pooled over the sweep").all() and st["labels_seed_sd"].isna().all()
    np.testing.assert_allclose(st["noise_sd"], pooled)
    assert st["verdict"].tolist() == [ctl.CONVERGED, ctl.CONVERGED, ctl.NOT_CONVERGED]  # 1.0, 0.9 < 1.118 < 3.0
    assert conv.lines()[2] == "c: labels Δ +3.00 (1 seed; the sweep's pooled seed SD 1.12): not converged"


def test_one_seed_without_any_seed_noise_cannot_tell():
    conv = ctl.convergence(_labels({"a": [1.2], "b": [5.0]}, [_row("kl", "a", "b", 0, 1.0)]))
    assert math.isnan(conv.pooled_sd)
    assert conv.students["verdict"].tolist() == [ctl.CANNOT_TELL] * 2 and conv.cannot_tell == ["a", "b"]
    assert conv.students["noise_sd"].isna().all()
    assert conv.lines()[1] == "b: labels Δ +5.00 (1 seed; no seed noise measured in this sweep): cannot tell"


def test_convergence_without_labels_runs_or_with_one_student():
    conv = ctl.convergence(pd.DataFrame([_row("kl", "a", "b", 0, 1.0), _row("self_dist", "a", "a", 0, 0.1)]))
    assert conv.verdict == ctl.NO_LABELS and conv.students.empty and conv.lines() == []
    one = ctl.convergence(_labels({"a": [1.0, 3.0]}))
    assert one.verdict == ctl.TOO_FEW and one.zoo.estimate == 2.0 and math.isnan(one.zoo.lo)
    assert one.not_converged == ["a"]  # 2.0 > its seed SD 1.41
