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
    import sqlalchemy as sa

    from zoo_sweep.storage import store as st

    rng = np.random.default_rng(seed)
    store = st.Store(path if "://" in str(path) else f"sqlite:///{path}")
    names = names or [f"m{i}" for i in range(n_models)]
    n_models = len(names)
    acc = dict(zip(names, rng.uniform(60, 95, n_models)))
    models = [{"name": n, "eval_set": "e", "arch": n, "family": FAMILIES[i % 3], "params": int(10 ** rng.uniform(4, 7)),
               "accuracy": acc[n], "record": None} for i, n in enumerate(names)]
    pairs, results, sj, teachers = [], [], [], []
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
                teachers += [{"job_id": f"{s}-multi-{mode}", "position": i, "teacher": t} for i, t in enumerate((t1, t2))]
    for r in results:
        sj.append({"sweep": "synth", "job_id": r["job_id"]})
    with store.engine.begin() as conn:
        conn.execute(st.sweeps.insert(), [{"name": "synth", "spec": "{}", "spec_hash": "x", "path": None,
                                           "created_at": time.time(), "updated_at": time.time()}])
        conn.execute(st.models.insert(), models)
        conn.execute(st.pairs.insert(), pairs)
        conn.execute(st.transfer_results.insert(), results)
        conn.execute(st.sweep_jobs.insert(), sj)
        conn.execute(sa.insert(st.jobs), [{"id": r["job_id"], "kind": "transfer", "payload": "{}", "state": "done",
                                           "attempts": 1, "created_at": time.time()} for r in results])
        if teachers:
            conn.execute(st.job_teachers.insert(), teachers)
    return store


def _result(job, s, t, m, delta, acc_s=70.0):
    gain = max(delta, 0) + 1.0
    return {"job_id": job, "epoch": 1, "final": True, "eval_set": "e", "student": s, "teacher": t, "method": m,
            "seed": 0, "student_acc": acc_s + delta, "s0_acc": acc_s, "delta": delta, "knowledge_gain": gain,
            "knowledge_loss": gain - delta, "rho_pos_before": 10.0, "rho_pos_after": 8.0, "rho_pos_change": -2.0,
            "transfer_rate_sample": 30.0, "damage_rate": 5.0, "teacher_share": 50.0, "train_loss": 0.1}


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
        assert (methods[f"{col}_lo"] <= methods[col] + 1e-9).all() and (methods[col] <= methods[f"{col}_hi"] + 1e-9).all()


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
    assert keys == {"models", "pairs", "transfer_pairs", "multi_teacher", "multi_teachers"}
    assert all(t.sql for t in rep.tables)  # every table names the query its rows come from
    rows = {}
    for k in keys:
        filled = rep.sql_text(k)
        assert ":sweep" not in filled and ":eval_set" not in filled
        rows[k] = store.query(filled)
        pd.testing.assert_frame_equal(rows[k], store.query(SQL[k], rep.params))
    tables = {t.key: t.data for t in rep.tables}
    pd.testing.assert_frame_equal(rows["models"], tables["models_view"])
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
        conn.execute(st.transfer_results.insert(), seed1 + early)
        conn.execute(st.sweep_jobs.insert(), [{"sweep": "synth", "job_id": r["job_id"]} for r in seed1])
    raw = store.query("select r.*, (select count(*) from job_teachers jt where jt.job_id = r.job_id) as multi_teacher "
                      "from transfer_results r")
    want: dict[tuple, list] = {}
    for r in raw.itertuples():
        if r.final and not r.multi_teacher:
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

    cmd = synth["report"].sql_command("transfer_pairs")
    argv = shlex.split(cmd)
    assert argv[:2] == ["zoo-sweep", "--db"]
    r = run_cli(*argv[1:], "--format", "csv")
    assert r.returncode == 0, r.stderr
    got = pd.read_csv(io.StringIO(r.stdout), float_precision="round_trip")
    want = synth["store"].query(synth["report"].sql_text("transfer_pairs"))
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
