"""The report: every panel and table on the micro sweep and on a richer synthetic store (multi-teacher runs,
enough pairs for predicted_gain's held-out check), the SQL it shows, and the HTML page in headless Chromium."""

from __future__ import annotations

import io
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import assert_png, run_cli
from PIL import Image

MICRO_PANELS = ("ck_vs_gap", "concentration", "delta_vs_gap", "gain_loss", "student_success", "student_properties")
ALL_PANELS = MICRO_PANELS + ("multi_teacher", "predicted_gain")
FAMILIES = ("cnn", "transformer", "mlp")


def synth_store(path: Path | str, n_models: int = 8, methods=("kl", "kl_dp"), multi: bool = True, seed: int = 0,
                names: list[str] | None = None):
    """A store holding one finished sweep written row by row, no Ray: every model pair measured, two methods
    run on most pairs (kl_dp better than kl), and (optionally) some multi-teacher runs (label "t1+t2", their
    teachers in job_teachers). ``path``: a SQLite file or a store URL."""
    from zoo_sweep.storage import store as st

    rng = np.random.default_rng(seed)
    store = st.Store(path if "://" in str(path) else f"sqlite:///{path}")
    names = names or [f"m{i}" for i in range(n_models)]
    n_models = len(names)
    acc = dict(zip(names, rng.uniform(60, 95, n_models)))
    models = [{"name": n, "eval_set": "e", "arch": n, "family": FAMILIES[i % 3], "params": int(10 ** rng.uniform(4, 7)),
               "accuracy": acc[n], "record": None} for i, n in enumerate(names)]
    pairs, results, teachers = [], [], []
    for s in names:
        for t in names:
            if s == t:
                continue
            rho = rng.uniform(2, 20)
            pairs.append({"eval_set": "e", "student": s, "teacher": t, "acc_student": acc[s], "acc_teacher": acc[t],
                          "acc_gap": acc[t] - acc[s], "rho_pos": rho, "rho_neg": rng.uniform(2, 20),
                          "agreement": 80.0, "oracle_acc": 95.0, "ensemble_acc": 90.0,
                          "flip_entropy": rng.uniform(1.2, 2.3), "top2_classes": 1, "top5_classes": 1,
                          "top20_classes": 2, "top50_classes": int(rng.integers(3, 6))})
            for j, m in enumerate(methods):
                if rng.random() < 0.15:
                    continue  # a few pairs not run yet
                delta = 0.1 * (acc[t] - acc[s]) + 0.1 * rho - 1.5 + 2.0 * j + rng.normal(0, 0.4)
                results.append(_result(f"{s}-{t}-{m}", s, t, m, delta, acc[s]))
    if multi:
        for s in names[:3]:
            t1, t2 = [n for n in names if n != s][:2]
            for mode, shift in (("parallel", 0.0), ("soup", -1.0)):
                results.append(_result(f"{s}-multi-{mode}", s, f"{t1}+{t2}", mode, rng.normal(1.5 + shift, 0.3),
                                       acc[s]))
                teachers += [{"job_id": f"{s}-multi-{mode}", "position": i, "teacher": t}
                             for i, t in enumerate((t1, t2))]
    _write(store, models, pairs, results, teachers)
    return store


def _write(store, models, pairs, results, teachers=()):
    """One finished sweep "synth": its models, pairs, transfer rows (any epochs) and their jobs."""
    import sqlalchemy as sa

    from zoo_sweep.storage import store as st

    jobs = sorted({r["job_id"] for r in results})
    with store.engine.begin() as conn:
        conn.execute(st.sweeps.insert(), [{"name": "synth", "spec": "{}", "spec_hash": "x", "path": None,
                                           "created_at": time.time(), "updated_at": time.time()}])
        conn.execute(st.models.insert(), models)
        conn.execute(st.pairs.insert(), pairs)
        conn.execute(st.transfer_results.insert(), results)
        conn.execute(st.sweep_jobs.insert(), [{"sweep": "synth", "job_id": j} for j in jobs])
        conn.execute(sa.insert(st.jobs), [{"id": j, "kind": "transfer", "payload": "{}", "state": "done",
                                           "attempts": 1, "created_at": time.time()} for j in jobs])
        if teachers:
            conn.execute(st.job_teachers.insert(), list(teachers))


def _result(job, s, t, m, delta, acc_s=70.0, seed=0, epoch=1, final=True):
    gain = max(delta, 0) + 1.0
    return {"job_id": job, "epoch": epoch, "final": final, "eval_set": "e", "student": s, "teacher": t, "method": m,
            "seed": seed, "student_acc": acc_s + delta, "s0_acc": acc_s, "delta": delta, "knowledge_gain": gain,
            "knowledge_loss": gain - delta, "rho_pos_before": 10.0, "rho_pos_after": 8.0, "rho_pos_change": -2.0,
            "transfer_rate_sample": 30.0, "damage_rate": 5.0, "teacher_share": 50.0, "train_loss": 0.1}


# 4 students: fewer than 5, so every interval over students is a t interval over student means
STUDENTS = ("s0", "s1", "s2", "s3")
UNCONVERGED = (2.0, 2.4, 1.6, 2.2)  # each student's labels Δ at the last epoch, seeds averaged
CONVERGED = (-0.3, 0.3, -0.2, 0.2)
SEED_OFFSETS = (-0.5, 0.0, 0.5)  # every run's seed luck: a seed-to-seed SD of 0.5
# per method: its Δ over labels at the last epoch, and each student's deviation from it (summing to 0)
EFFECTS = {"good": (1.5, (0.3, -0.3, 0.1, -0.1)), "flat": (0.0, (0.2, -0.2, 0.1, -0.1))}
EPOCHS = 3


def controlled_store(path, labels=UNCONVERGED):
    """A finished sweep with controls: 4 students, every ordered pair run by "good" (Δ over labels 1.5 by
    construction) and "flat" (Δ over labels 0: no better than training on the labels), seeds 0-2, 3 epochs, and
    one labels and one self_dist run per student and seed (the student as its own teacher). A run's Δ at epoch e
    is its student's labels Δ (``labels``, growing with e) plus the method's effect (growing with e), the
    student's deviation, the teacher's (0.1, -0.1, 0 in turn) and the seed's."""
    from zoo_sweep.storage import store as st

    store = st.Store(f"sqlite:///{path}")
    acc = dict(zip(STUDENTS, (80.0, 75.0, 70.0, 65.0)))
    models = [{"name": n, "eval_set": "e", "arch": n, "family": FAMILIES[i % 3], "params": 10 ** (4 + i),
               "accuracy": acc[n], "record": None} for i, n in enumerate(STUDENTS)]
    pairs = [{"eval_set": "e", "student": s, "teacher": t, "acc_student": acc[s], "acc_teacher": acc[t],
              "acc_gap": acc[t] - acc[s], "rho_pos": 5.0 + i, "rho_neg": 4.0, "agreement": 80.0, "oracle_acc": 95.0,
              "ensemble_acc": 90.0, "flip_entropy": 1.5, "top2_classes": 1, "top5_classes": 1, "top20_classes": 2,
              "top50_classes": 4} for i, (s, t) in enumerate((s, t) for s in STUDENTS for t in STUDENTS if s != t)]
    results = []
    for i, s in enumerate(STUDENTS):
        for seed, luck in enumerate(SEED_OFFSETS):
            for e in range(1, EPOCHS + 1):
                f = e / EPOCHS
                base = labels[i] * f + luck
                row = {"acc_s": acc[s], "seed": seed, "epoch": e, "final": e == EPOCHS}
                results.append(_result(f"{s}-labels-{seed}", s, s, "labels", base, **row))
                results.append(_result(f"{s}-self_dist-{seed}", s, s, "self_dist", 0.2 * labels[i] * f + luck / 2,
                                       **row))
                teachers = [t for t in STUDENTS if t != s]
                for m, (effect, dev) in EFFECTS.items():
                    for t, tdev in zip(teachers, (0.1, -0.1, 0.0)):
                        results.append(_result(f"{s}-{t}-{m}-{seed}", s, t, m,
                                               base + (effect + dev[i] + tdev) * f, **row))
    _write(store, models, pairs, results)
    return store


@pytest.fixture(scope="module")
def controlled(tmp_path_factory):
    from zoo_sweep.report.build import make_report

    root = tmp_path_factory.mktemp("controlled")
    out = {}
    for name, labels in (("unconverged", UNCONVERGED), ("converged", CONVERGED)):
        store = controlled_store(root / f"{name}.db", labels)
        out[name] = {"store": store, "dir": root / name,
                     "report": make_report(store, "synth", "e", root / name, num_classes=10, n_boot=200)}
    return out


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from zoo_sweep.report.build import make_report
    from zoo_sweep.science import gains

    root = tmp_path_factory.mktemp("synth")
    store = synth_store(root / "zoo.db")
    built = []
    with pytest.MonkeyPatch.context() as mp:  # counts how often the report builds the pair features
        mp.setattr(gains, "pair_features", lambda *a, _f=gains.pair_features: built.append(1) or _f(*a))
        rep = make_report(store, "synth", "e", root / "report", num_classes=10, n_boot=500)
    return {"store": store, "report": rep, "dir": root / "report", "features_built": len(built)}


def test_micro_report_writes_every_panel(micro, tmp_path):
    from zoo_sweep.report.build import make_report

    rep = make_report(micro["store"], "micro", "digits:eval", tmp_path, num_classes=10, n_boot=500)
    drawn = {p.key for p in rep.panels if p.path}
    assert drawn >= set(MICRO_PANELS)
    for key in MICRO_PANELS:
        assert_png(tmp_path / f"{key}.png")
    # 3 models -> 6 pairs per method: too few to check predicted_gain on held-out pairs, and no multi-teacher runs
    assert not (tmp_path / "multi_teacher.png").exists()
    assert any("no multi-teacher runs" in f for f in rep.findings)
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(drawn)
    assert "no multi-teacher runs" in html
    methods = pd.read_csv(tmp_path / "methods.csv")
    assert set(methods["method"]) == {"kl", "kl_dp"} and (methods["pairs"] == 6).all()
    for col in ("mean_delta", "success", "student_success", "mean_gain", "mean_loss"):
        assert (methods[f"{col}_lo"] <= methods[col] + 1e-9).all()
        assert (methods[col] <= methods[f"{col}_hi"] + 1e-9).all()


def test_concentration_panel_draws_each_pairs_per_class_flips(micro, tmp_path):
    """What the concentration panel plots, against per-class positive flips counted here from the micro zoo's
    prediction records: the scatter, the medians of the top-p % class counts and the uniform references."""
    import matplotlib.pyplot as plt

    from zoo_sweep.pipeline.launch import eval_labels
    from zoo_sweep.report.build import pairs_table
    from zoo_sweep.report.plots_ck import (
        HEXBIN_ABOVE,
        concentration_data,
        concentration_figure,
        plot_concentration,
    )
    from zoo_sweep.science.complementary import TOP_P
    from zoo_sweep.science.records import load_record

    k, store = 10, micro["store"]
    y = eval_labels(micro["spec"], micro["paths"])
    records = store.query("select name, record from models where eval_set = 'digits:eval'")
    pred = {r.name: load_record(r.record)["pred"] for r in records.itertuples()}
    want = []
    for s in pred:
        for t in pred:
            pos = (pred[t] == y) & (pred[s] != y)
            if s == t or not pos.any():
                continue
            c = np.sort(np.bincount(y[pos], minlength=k))[::-1]
            share = c[c > 0] / c.sum()
            reach = np.cumsum(c) * 100  # integers: "holds p %" without rounding
            want.append({"student": s, "teacher": t, "rho_pos": pos.mean() * 100,
                         "flip_entropy": -(share * np.log(share)).sum(),
                         **{f"top{p}_classes": int(np.argmax(reach >= p * c.sum())) + 1 for p in TOP_P}})
    want = pd.DataFrame(want).sort_values(["student", "teacher"], ignore_index=True)
    assert len(want) == 6

    pairs = pairs_table(store, "digits:eval")
    drawn = concentration_data(pairs)
    got = pairs.loc[drawn.index, ["student", "teacher"]].join(drawn)
    got = got.sort_values(["student", "teacher"], ignore_index=True)
    pd.testing.assert_frame_equal(got, want, check_dtype=False)

    fig = concentration_figure(pairs, k)
    a1, a2 = fig.axes
    xy = sorted(map(tuple, a1.collections[0].get_offsets()))
    np.testing.assert_allclose(xy, sorted(zip(want["rho_pos"], want["flip_entropy"])))
    assert [ln.get_ydata()[0] for ln in a1.lines] == [pytest.approx(math.log(k))]
    assert [a.xy for a in a2.texts] == [(i, np.median(want[f"top{p}_classes"])) for i, p in enumerate(TOP_P, 1)]
    assert [list(ln.get_ydata()) for ln in a2.lines if ln.get_label().startswith("uniform")] == [[1, 1, 2, 5]]
    plt.close(fig)

    big = pairs.sample(HEXBIN_ABOVE + 1, replace=True, random_state=0)  # too many points to scatter: hexbins
    fig = concentration_figure(big, k)
    assert fig.axes[0].collections[0].get_array().sum() == len(big)
    plt.close(fig)
    for empty in (pairs.iloc[:0], pairs.drop(columns="flip_entropy")):  # nothing measured / no per-class metrics
        assert concentration_data(empty).empty
        fig = concentration_figure(empty, None)
        assert [t.get_text() for ax in fig.axes for t in ax.texts] == ["no pairs with per-class flip counts"] * 2
        plt.close(fig)
    assert_png(plot_concentration(pairs, k, tmp_path / "c.png"))


def test_synthetic_report_has_every_panel(synth):
    rep, out = synth["report"], synth["dir"]
    assert {p.key for p in rep.panels if p.path} == set(ALL_PANELS)
    for key in ALL_PANELS:
        assert_png(out / f"{key}.png")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(ALL_PANELS)
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained
    mt = pd.read_csv(out / "multi_teacher.csv")
    assert len(mt) == 6 and mt["teachers"].str.contains("+", regex=False).all() and mt["best_single"].notna().all()
    assert set(pd.read_csv(out / "multi_teacher_summary.csv")["method"]) == {"parallel", "soup"}
    assert len(pd.read_csv(out / "multi_teacher_differences.csv")) == 1
    held = pd.read_csv(out / "predicted_gain_heldout.csv").set_index("method")
    assert held.loc["kl_dp", "spearman"] > 0.3  # the synthetic delta is predictable from the pair features
    nxt = pd.read_csv(out / "next_pairs.csv")
    assert set(nxt["policy"]) == {"predicted_gain"} and set(nxt["method"]) == {"kl", "kl_dp"}
    # kl_dp is 2 points better by construction: the report says so; the two methods are told apart
    diffs = pd.read_csv(out / "method_differences.csv")
    assert diffs.loc[0, "delta"] == "distinguishable"
    assert any("distinguishable" in f for f in rep.findings)
    assert synth["features_built"] == 1  # once for every method's ranking and held-out check
    # the teacher's side beside the student's: the synthetic delta grows with the teacher's accuracy
    corr = pd.read_csv(out / "correlations.csv").set_index(["method", "property"])
    assert corr.loc[("kl_dp", "teacher accuracy"), "spearman_lo"] > 0
    assert corr.loc[("kl_dp", "log10 teacher params"), "pairs"] > 0
    eta = corr.xs("teacher x student family", level="property")["eta"]
    assert ((eta >= 0) & (eta <= 1)).all() and corr["eta"].notna().sum() == 3 * 2  # 3 categories x 2 methods
    # an older sweep: no controls and one seed. The report says once that gains cannot be told from continued
    # training, and draws no epoch panel; the rest reads as before
    from html import escape

    from zoo_sweep.report.build import EMPTY
    from zoo_sweep.report.findings import NO_LABELS

    assert rep.findings[0] == NO_LABELS and sum("labels" in f for f in rep.findings) == 1
    assert escape(EMPTY["control_by_epoch"]) in html and pd.read_csv(out / "controls.csv").empty
    methods = pd.read_csv(out / "methods.csv")
    assert methods["delta_over_labels"].isna().all() and (methods["seeds"] == 1).all()
    assert methods["delta_seed_sd"].isna().all() and "delta_over_self_dist" not in methods


def _final_rows(store) -> pd.DataFrame:
    return store.query("select * from transfer_results where final")


def test_delta_over_a_control_is_the_stored_difference(controlled):
    """The methods table's Δ over labels and over self_dist are, per method, the mean over pairs of each run's Δ
    minus its student's control run of the same seed, computed here from the stored rows; the epoch table's
    last epoch is the same number; controls are not methods anywhere a pair is."""
    c = controlled["unconverged"]
    out, rows = c["dir"], _final_rows(c["store"])
    ctl = rows[rows["teacher"] == rows["student"]].set_index(["method", "student", "seed"])["delta"]
    runs = rows[rows["teacher"] != rows["student"]]
    methods = pd.read_csv(out / "methods.csv").set_index("method")
    assert set(methods.index) == {"flat", "good"}
    for name in ("labels", "self_dist"):
        over = runs["delta"].to_numpy() - [ctl[(name, s, seed)] for s, seed in zip(runs["student"], runs["seed"])]
        want = runs.assign(over=over).groupby(["method", "student", "teacher"])["over"].mean().groupby("method").mean()
        for m in ("flat", "good"):
            assert methods.loc[m, f"delta_over_{name}"] == pytest.approx(want[m], abs=1e-3)
    assert methods.loc["good", "delta_over_labels"] == pytest.approx(1.5, abs=1e-3)
    assert (methods["students"] == 4).all() and (methods["seeds"] == 3).all() and (methods["pairs"] == 12).all()
    assert methods["delta_seed_sd"].to_numpy() == pytest.approx([0.5, 0.5], abs=1e-3)
    by_epoch = pd.read_csv(out / "delta_over_control_by_epoch.csv")
    assert sorted(set(by_epoch["epoch"])) == [1, 2, 3] and set(by_epoch["control"]) == {"labels", "self_dist"}
    last = by_epoch[(by_epoch["epoch"] == EPOCHS) & (by_epoch["control"] == "labels")].set_index("method")
    assert last["delta_over"].to_dict() == pytest.approx(methods["delta_over_labels"].to_dict(), abs=1e-3)
    good = by_epoch[(by_epoch["method"] == "good") & (by_epoch["control"] == "labels")].sort_values("epoch")
    assert good["delta_over"].to_numpy() == pytest.approx([0.5, 1.0, 1.5], abs=1e-3)  # still rising
    assert_png(out / "control_by_epoch.png")
    assert "control_by_epoch.png" in (out / "report.html").read_text()
    # the controls table, and no control among the pair tables' methods
    controls = pd.read_csv(out / "controls.csv").set_index("control")
    assert controls.loc["labels", "mean_delta"] == pytest.approx(np.mean(UNCONVERGED), abs=1e-3)
    assert controls.loc["labels", "delta_seed_sd"] == pytest.approx(0.5, abs=1e-3)
    assert list(controls.index) == ["labels", "self_dist"] and (controls["students"] == 4).all()
    for key in ("delta_by_gap", "families", "correlations", "next_pairs", "predicted_gain_heldout"):
        assert set(pd.read_csv(out / f"{key}.csv")["method"]) <= {"flat", "good"}, key
    pairs = c["store"].query(c["report"].sql_text("transfer_pairs"))
    assert len(pairs) == 2 * 12 and (pairs["teacher"] != pairs["student"]).all() and (pairs["seeds"] == 3).all()


def test_intervals_over_few_students_are_t_intervals(controlled):
    """4 students: the methods table's intervals are t intervals over the student means (the note says so), and
    the by-student difference is stats.hierarchical_paired_diff over the runs both methods made."""
    from zoo_sweep.science import stats

    c = controlled["unconverged"]
    methods = next(t for t in c["report"].tables if t.key == "methods")
    assert "t over 4 student means" in methods.note and (methods.data["interval"] == "t over 4 student means").all()
    rows = _final_rows(c["store"])
    good = rows[rows["method"] == "good"].sort_values(["student", "teacher", "seed"])
    m = good.groupby("student")["delta"].mean()  # each student's 3 pairs x 3 seeds, equally weighted
    half = stats.t_quantile(0.975, 3) * m.std(ddof=1) / 2
    got = methods.data.set_index("method").loc["good"]
    assert (got["mean_delta_lo"], got["mean_delta_hi"]) == (pytest.approx(m.mean() - half, abs=1e-3),
                                                            pytest.approx(m.mean() + half, abs=1e-3))
    flat = rows[rows["method"] == "flat"].sort_values(["student", "teacher", "seed"])
    want = stats.hierarchical_paired_diff(flat["delta"], good["delta"], flat["student"], flat["teacher"],
                                          flat["seed"], n_boot=200)
    diff = pd.read_csv(c["dir"] / "method_differences.csv").iloc[0]
    assert (diff["method_a"], diff["method_b"], diff["students"]) == ("flat", "good", 4)
    assert (diff["delta_diff_by_student"], diff["delta_diff_by_student_lo"], diff["delta_diff_by_student_hi"]) == \
        (pytest.approx(want.estimate), pytest.approx(want.lo), pytest.approx(want.hi))


def test_findings_tell_transfer_from_training_longer(controlled):
    """First finding: were the students converged (labels Δ clearly > 0 in one zoo, about 0 in the other). Then
    a method clearly above the labels control transfers knowledge; one at the control is no better."""
    un, co = (controlled[k]["report"].findings for k in ("unconverged", "converged"))
    assert un[0].startswith("The students were not converged: training on the labels alone") and \
        "t over 4 student means" in un[0]
    for s in STUDENTS:
        assert f"{s} (labels Δ" in un[0]
    assert un[0].count("not converged: its gains are mostly continued training") == 4
    assert co[0].startswith("Over the zoo the students were converged within noise") and "covers 0" in co[0]
    assert "No student's labels Δ exceeds its seed noise." in co[0] and "continued training" not in co[0]
    for f in (un, co):
        good = next(x for x in f if x.startswith("good: mean Δ_transf"))
        flat = next(x for x in f if x.startswith("flat: mean Δ_transf"))
        assert "transfers knowledge: Δ over labels 1.50 [" in good, good
        assert "no better than training on the labels (Δ over labels " in flat, flat  # 0 by construction
        assert "transfers knowledge" not in flat and "Δ over self_dist" in flat
        assert not any(x.startswith("No labels control") for x in f)
    conv = pd.read_csv(controlled["unconverged"]["dir"] / "convergence.csv")
    assert conv["verdict"].tolist() == ["not converged"] * 4
    assert conv["labels_delta"].to_numpy() == pytest.approx(UNCONVERGED) and conv["noise"].eq("its seeds").all()
    assert pd.read_csv(controlled["converged"]["dir"] / "convergence.csv")["verdict"].eq("converged within noise").all()


def test_indistinguishable_methods_are_reported(tmp_path):
    from zoo_sweep.report.build import make_report

    store = synth_store(tmp_path / "zoo.db", n_models=5, methods=("a", "b"), multi=False)
    import sqlalchemy as sa

    from zoo_sweep.storage import store as st

    with store.engine.begin() as conn:  # method b: a copy of a plus noise, no real difference
        conn.execute(sa.delete(st.transfer_results).where(st.transfer_results.c.method == "b"))
        rows = [dict(r._mapping) for r in conn.execute(sa.select(st.transfer_results))]
        rng = np.random.default_rng(1)
        conn.execute(st.transfer_results.insert(), [{**r, "job_id": r["job_id"] + "-b", "method": "b",
                                                     "delta": r["delta"] + rng.normal(0, 0.05)} for r in rows])
        conn.execute(st.sweep_jobs.insert(), [{"sweep": "synth", "job_id": r["job_id"] + "-b"} for r in rows])
    rep = make_report(store, "synth", "e", tmp_path / "rep", n_boot=500)
    assert any("a vs b: not distinguishable" in f for f in rep.findings), rep.findings
    assert "not distinguishable" in (tmp_path / "rep" / "report.html").read_text()


def test_a_difference_carried_by_few_students_is_not_firmly_distinguishable(tmp_path):
    """Method b = method a plus one offset per student: over pairs the difference looks firm, but it rests on
    5 students' luck; with students resampled its interval covers 0, and the report says so."""
    from zoo_sweep.report.build import make_report

    store = synth_store(tmp_path / "zoo.db", n_models=5, methods=("a", "b"), multi=False)
    import sqlalchemy as sa

    from zoo_sweep.storage import store as st

    offsets = dict(zip([f"m{i}" for i in range(5)], [2.0, 1.5, -0.5, 0.8, -0.3]))
    with store.engine.begin() as conn:
        conn.execute(sa.delete(st.transfer_results).where(st.transfer_results.c.method == "b"))
        rows = [dict(r._mapping) for r in conn.execute(sa.select(st.transfer_results))]
        assert set(offsets) == {r["student"] for r in rows}
        rng = np.random.default_rng(2)
        conn.execute(st.transfer_results.insert(), [{**r, "job_id": r["job_id"] + "-b", "method": "b",
                                                     "delta": r["delta"] + offsets[r["student"]]
                                                     + rng.normal(0, 0.05)} for r in rows])
        conn.execute(st.sweep_jobs.insert(), [{"sweep": "synth", "job_id": r["job_id"] + "-b"} for r in rows])
    rep = make_report(store, "synth", "e", tmp_path / "rep", n_boot=500)
    diffs = pd.read_csv(tmp_path / "rep" / "method_differences.csv").iloc[0]
    assert (diffs["method_a"], diffs["students"]) == ("a", 5)
    assert diffs["delta"] == "distinguishable" and diffs["delta_by_student"] == "not distinguishable"
    assert diffs["delta_diff_by_student_hi"] - diffs["delta_diff_by_student_lo"] > \
        diffs["delta_diff_hi"] - diffs["delta_diff_lo"]
    assert any("a vs b" in f and "5 students resampled" in f and "not firmly distinguishable" in f
               for f in rep.findings), rep.findings


def test_every_shown_query_reruns(synth):
    """The SQL shown for each table, parameters filled in, gives the rows the table was computed from."""
    from zoo_sweep.report.build import SQL, method_summary

    rep, store = synth["report"], synth["store"]
    keys = {k for t in rep.tables for k in t.sql}
    assert keys == {"models", "pairs", "transfers", "transfer_pairs", "transfer_epochs", "multi_teacher",
                    "multi_teachers"}
    assert all(t.sql for t in rep.tables)  # every table names the query its rows come from
    rows = {}
    for k in keys:
        filled = rep.sql_text(k)
        assert ":sweep" not in filled and ":eval_set" not in filled
        rows[k] = store.query(filled)
        pd.testing.assert_frame_equal(rows[k], store.query(SQL[k], rep.params))
    tables = {t.key: t.data for t in rep.tables}
    pd.testing.assert_frame_equal(rows["models"], tables["models_view"])
    pd.testing.assert_frame_equal(method_summary(rows["transfers"], n_boot=500), tables["methods"])
    # one seed: the pairs' rows (seeds averaged) give the same table
    pd.testing.assert_frame_equal(method_summary(rows["transfer_pairs"], n_boot=500), tables["methods"])
    ck = tables["ck_summary"].set_index("quantity")
    for col in ("rho_pos", "rho_neg"):
        assert ck.loc[col, "pairs"] == len(rows["pairs"]) == 8 * 7
        assert (ck.loc[col, "min"], ck.loc[col, "max"]) == (rows["pairs"][col].min(), rows["pairs"][col].max())
    shown = tables["multi_teacher"][["method", "student", "teachers", "seeds", "delta", "knowledge_gain",
                                     "knowledge_loss"]]
    pd.testing.assert_frame_equal(rows["multi_teacher"], shown)
    html = (synth["dir"] / "report.html").read_text()
    assert "sj.sweep = &#x27;synth&#x27;" in html  # the values, not the placeholders


def test_final_row_filter_is_the_same_in_sql_and_pandas(tmp_path):
    """The report's transfer_pairs query, gains.per_pair and gains.finished_pairs keep the same rows: the final
    epoch of single-teacher jobs, averaged over seeds."""
    import sqlalchemy as sa

    from zoo_sweep.report.build import transfer_pairs
    from zoo_sweep.science.gains import finished_pairs, per_pair
    from zoo_sweep.storage import store as st

    store = synth_store(tmp_path / "zoo.db", n_models=4)
    with store.engine.begin() as conn:
        rows = [dict(r._mapping) for r in conn.execute(sa.select(st.transfer_results))]
        seed1 = [{**r, "job_id": r["job_id"] + "-s1", "seed": 1, "delta": r["delta"] + 1.0} for r in rows[::2]]
        early = [{**r, "epoch": 0, "final": False, "delta": 99.0} for r in rows]
        control = [{**rows[0], "job_id": "ctl", "teacher": rows[0]["student"], "method": "labels"}]
        conn.execute(st.transfer_results.insert(), seed1 + early + control)
        conn.execute(st.sweep_jobs.insert(), [{"sweep": "synth", "job_id": r["job_id"]} for r in seed1 + control])
    raw = store.query("select r.*, (select count(*) from job_teachers jt where jt.job_id = r.job_id) as multi_teacher "
                      "from transfer_results r")
    want: dict[tuple, list] = {}
    for r in raw.itertuples():
        if r.final and not r.multi_teacher and r.student != r.teacher:  # a control is no pair
            want.setdefault((r.method, r.student, r.teacher), []).append(r.delta)
    assert any(len(v) == 2 for v in want.values()) and any("+" in t for t in raw["teacher"])
    mean = {k: np.mean(v) for k, v in want.items()}
    sql, pandas = transfer_pairs(store, "synth"), per_pair(raw)
    for got in (sql, pandas):
        assert dict(zip(zip(got["method"], got["student"], got["teacher"]), got["delta"])) == pytest.approx(mean)
    assert dict(zip(zip(sql["method"], sql["student"], sql["teacher"]), sql["seeds"])) == \
        {k: len(v) for k, v in want.items()}
    for m in ("kl", "kl_dp"):
        done = finished_pairs(raw, m)
        assert dict(zip(zip(done["student"], done["teacher"]), done["delta"])) == \
            pytest.approx({(s, t): d for (mm, s, t), d in mean.items() if mm == m})


def test_cli_report_reruns_shown_query(synth, tmp_path):
    """`zoo-sweep query` accepts the command the report prints."""
    import shlex

    cmd = synth["report"].sql_command("transfers")
    argv = shlex.split(cmd)
    assert argv[:2] == ["zoo-sweep", "--db"]
    r = run_cli(*argv[1:], "--format", "csv")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(io.StringIO(r.stdout), float_precision="round_trip")
    want = synth["store"].query(synth["report"].sql_text("transfers"))
    assert len(got) > 50
    pd.testing.assert_frame_equal(got, want, check_dtype=False, check_exact=True)
    # the rows printed are those the methods table was computed from
    from zoo_sweep.report.build import method_summary

    methods = next(t.data for t in synth["report"].tables if t.key == "methods")
    pd.testing.assert_frame_equal(method_summary(got, n_boot=500), methods)


def test_cli_report_prints_the_tables(micro, tmp_path):
    r = run_cli("--db", micro["db"], "--home", micro["home"], "report", str(micro["spec_path"]),
                "--out", str(tmp_path / "rep"))
    assert r.returncode == 0, r.stderr
    for title in ("Transfer per method", "Are two methods distinguishable?", "Transfer by student family",
                  "How well predicted_gain ranks", "no multi-teacher runs", "report.html"):
        assert title in r.stdout, title
    assert (tmp_path / "rep" / "report.html").is_file()


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (Debian: apt-get install -y chromium); "
                                                ".ci/run installs it")
def test_html_renders_in_headless_chromium(synth, tmp_path):
    shot = tmp_path / "shot.png"
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        r = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                            "--no-first-run", "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", f"--user-data-dir={profile}", f"--screenshot={shot}",
                            "--window-size=1200,2000", (synth["dir"] / "report.html").resolve().as_uri()],
                           capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert shot.is_file(), r.stderr[-2000:]
    with Image.open(shot) as im:
        g = np.asarray(im.convert("L"))
    assert g.shape[0] >= 1000 and g.shape[1] >= 1000
    assert (g < 200).mean() > 0.01, "the screenshot is (nearly) blank"  # text and plots, not a white page
    assert len(np.unique(g)) > 50


def test_report_of_a_sweep_without_results(tmp_path):
    """Planned but nothing measured or run yet: every section says why it is empty, nothing crashes."""
    from zoo_sweep.report.build import make_report
    from zoo_sweep.storage.store import Store

    store = Store(f"sqlite:///{tmp_path / 'zoo.db'}")
    rep = make_report(store, "nothing", "e", tmp_path / "rep", n_boot=100)
    assert not [p for p in rep.panels if p.path]
    html = (tmp_path / "rep" / "report.html").read_text()
    assert "no measured pairs" in html and "no finished single-teacher transfer results" in html
    assert "no multi-teacher runs" in html and "top_ck" in html
