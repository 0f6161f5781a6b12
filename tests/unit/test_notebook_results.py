"""``zoo_sweep.Results``: a store read as pandas frames from a notebook. A small real SQLite store written through
the launcher's own Store calls; the frames hold what was written, Δ over a control is the method's Δ minus the
control's for the same student, seed and epoch within the sweep, and nothing a notebook does changes, creates
or upgrades a store."""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import zoo_sweep
from zoo_sweep import UserError
from zoo_sweep.report import notebook
from zoo_sweep.report.queries import final_transfers
from zoo_sweep.storage import store as store_mod
from zoo_sweep.storage.store import Store

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
RUNAWAY = "with recursive c(x) as (select 1 union all select x + 1 from c) select count(*) from c"
WRITES = ["delete from models", "drop table pairs", "update jobs set state = 'pending'",
          "insert into sweeps (name, spec, spec_hash, created_at, updated_at) values ('x', '{}', 'h', 0, 0)",
          "attach database '{folder}/other.db' as other", "pragma journal_mode = wal", "vacuum"]

MODELS = {  # name: (family, params, accuracy)
    "a": ("cnn", 1000, 90.5), "b": ("mlp", 2000, 85.25), "c": ("transformer", 3000, 80.0)}
PAIRS = [("a", "b", 4.5, 10.0), ("b", "a", -4.5, 14.0), ("a", "c", 10.5, 6.0), ("c", "a", -10.5, 16.5)]
# (job, method, student, teacher, seed, Δ at epoch 1, Δ at epoch 2 (final), teachers of a multi-teacher job)
S1 = [("kl-ab0", "kl", "a", "b", 0, 1.0, 2.0, None),
      ("kl-ab1", "kl", "a", "b", 1, 0.5, 3.0, None),
      ("dp-ac0", "kl_dp", "a", "c", 0, 0.2, 1.5, None),
      ("kl-ba0", "kl", "b", "a", 0, -1.0, -2.0, None),
      ("kl-ca0", "kl", "c", "a", 0, 0.3, 0.6, None),  # student c has no control: no Δ over it
      ("lab-a0", "labels", "a", "a", 0, 0.4, 0.5, None),
      ("lab-a1", "labels", "a", "a", 1, 0.1, 1.0, None),
      ("lab-b0", "labels", "b", "b", 0, -0.5, 0.25, None),
      ("par-a0", "parallel", "a", "b+c", 0, 5.0, 7.0, ["b", "c"])]
# a second sweep sharing the job kl-ab0, whose labels control of student a (other settings) is another job
S2 = [S1[0], ("lab2-a0", "labels", "a", "a", 0, 2.0, 3.0, None)]
CONTROLS = {"labels"}


def _rows(job):
    job_id, method, student, teacher, seed, d1, d2, _ = job
    return [{"job_id": job_id, "epoch": e, "final": e == 2, "eval_set": "e", "student": student, "teacher": teacher,
             "method": method, "seed": seed, "delta": d, "s0_acc": MODELS[student][2],
             "student_acc": MODELS[student][2] + d, "knowledge_gain": 3.0 + e, "knowledge_loss": 1.0}
            for e, d in ((1, d1), (2, d2))]


def _build(db: Path) -> Path:
    """A store as a launch leaves it: two sweeps planned, the models predicted, the pairs compared and every
    transfer job recorded, each through the Store call the launcher uses."""
    store = Store(f"sqlite:///{db}")
    plan = [{"name": n, "eval_set": "e", "arch": f"arch_{n}", "family": f, "params": p, "ident": f"id-{n}"}
            for n, (f, p, _) in MODELS.items()]
    for name, jobs in (("s1", S1), ("s2", S2)):
        rows = [{"id": j[0], "kind": "transfer", "payload": "{}"} for j in jobs]
        if name == "s1":
            rows += [{"id": f"pred-{n}", "kind": "predict", "payload": "{}"} for n in MODELS]
            rows.append({"id": "cmp", "kind": "compare", "payload": "{}"})
        store.write_plan({"name": name, "spec": json.dumps({"name": name}), "spec_hash": f"h-{name}",
                          "path": f"jobs/{name}.toml"}, plan, rows, name)
    for n, (f, p, acc) in MODELS.items():
        store.finish_job(f"pred-{n}", model_rows=[{"name": n, "eval_set": "e", "arch": f"arch_{n}", "family": f,
                                                   "params": p, "accuracy": acc, "record": f"records/{n}.npz"}])
    store.write_pairs("cmp", [{"eval_set": "e", "student": s, "teacher": t, "acc_gap": g, "rho_pos": rho}
                              for s, t, g, rho in PAIRS])
    for job in {j[0]: j for j in S1 + S2}.values():
        store.finish_job(job[0], results=_rows(job), seconds=1.0, teachers=job[7])
    store.dispose()
    return db


@pytest.fixture
def db(tmp_path, monkeypatch):
    monkeypatch.delenv(store_mod.WAL_ENV, raising=False)  # the default rollback journal
    monkeypatch.delenv("ZOO_SWEEP_DB", raising=False)
    return _build(tmp_path / "zoo.db")


@pytest.fixture
def results(db):
    r = zoo_sweep.Results(f"sqlite:///{db}")
    yield r
    r.close()


def _snapshot(db: Path) -> tuple[bytes, int, list[str]]:
    return db.read_bytes(), db.stat().st_mtime_ns, sorted(os.listdir(db.parent))


def _expected_over(jobs, epoch: int) -> dict[str, float]:
    """Job -> its Δ minus the Δ of the labels run of the same student and seed at ``epoch`` (NaN: none), for
    the single-teacher method jobs of one sweep, from the rows as written."""
    delta = {j[0]: (j[5] if epoch == 1 else j[6]) for j in jobs}
    control = {(j[2], j[4]): delta[j[0]] for j in jobs if j[1] in CONTROLS}
    return {j[0]: delta[j[0]] - control.get((j[2], j[4]), np.nan)
            for j in jobs if j[1] not in CONTROLS and j[7] is None}


def test_results_is_exported_lazily_and_importing_the_package_stays_cheap(monkeypatch):
    for name in [m for m in sys.modules if m == "zoo_sweep" or m.startswith("zoo_sweep.")]:
        monkeypatch.delitem(sys.modules, name)
    for heavy in ("pandas", "sqlalchemy", "numpy"):
        monkeypatch.setitem(sys.modules, heavy, None)  # importing one now raises ImportError
    fresh = importlib.import_module("zoo_sweep")
    assert "Results" not in vars(fresh) and fresh.UserError.__name__ == "UserError"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        fresh.Nope  # noqa: B018
    monkeypatch.undo()
    assert zoo_sweep.Results is notebook.Results
    from zoo_sweep import Results

    assert Results is notebook.Results


def test_frames_hold_what_was_written(results):
    m = results.models
    assert m["name"].tolist() == ["a", "b", "c"]
    assert m[["family", "params", "accuracy", "arch", "record", "ident"]].values.tolist() == [
        [f, p, acc, f"arch_{n}", f"records/{n}.npz", f"id-{n}"] for n, (f, p, acc) in MODELS.items()]
    p = results.pairs
    assert sorted(zip(p["student"], p["teacher"], p["acc_gap"], p["rho_pos"])) == sorted(PAIRS)
    assert p["eval_set"].eq("e").all() and p["agreement"].isna().all()  # not written: NULL
    s = results.sweeps
    assert s["name"].tolist() == ["s1", "s2"]
    assert [json.loads(x) for x in s["spec"]] == [{"name": "s1"}, {"name": "s2"}]
    assert s["path"].tolist() == ["jobs/s1.toml", "jobs/s2.toml"]

    t = results.transfers("s1")
    assert len(t) == len(S1) and t["final"].astype(bool).all() and set(t["sweep"]) == {"s1"}
    assert t.columns[0] == "sweep"
    written = {r["job_id"]: r for j in S1 for r in _rows(j) if r["final"]}
    for row in t.to_dict("records"):
        w = written[row["job_id"]]
        for k in ("epoch", "student", "teacher", "method", "seed", "delta", "s0_acc", "student_acc",
                  "knowledge_gain", "knowledge_loss"):
            assert row[k] == pytest.approx(w[k]), (row["job_id"], k)
    assert t.set_index("job_id")["multi_teacher"].to_dict() == {j[0]: int(j[7] is not None) for j in S1}

    c = results.curves("s1")
    assert len(c) == 2 * len(S1) and sorted(set(c["epoch"])) == [1, 2]
    every = {(r["job_id"], r["epoch"]): r["delta"] for j in S1 for r in _rows(j)}
    assert {(r.job_id, r.epoch): r.delta for r in c.itertuples()} == pytest.approx(every)


def test_delta_over_the_control_is_the_difference_within_the_sweep(results):
    for sweep, jobs in (("s1", S1), ("s2", S2)):
        t = results.transfers(sweep).set_index("job_id")
        want = _expected_over(jobs, epoch=2)
        got = t["delta_over_labels"].to_dict()
        assert set(k for k, v in got.items() if not np.isnan(v)) == {k for k, v in want.items() if not np.isnan(v)}
        for job, value in want.items():
            assert got[job] == pytest.approx(value, nan_ok=True), (sweep, job)
        # controls and multi-teacher runs are kept, without a Δ over a control
        assert t.loc[[j[0] for j in jobs if j[1] in CONTROLS or j[7]], "delta_over_labels"].isna().all()
    s1 = results.transfers("s1").set_index("job_id")["delta_over_labels"]
    assert s1["kl-ab0"] == pytest.approx(2.0 - 0.5) and s1["kl-ab1"] == pytest.approx(3.0 - 1.0)
    assert s1["kl-ba0"] == pytest.approx(-2.0 - 0.25) and np.isnan(s1["kl-ca0"])
    # the shared job is measured against its own sweep's control: s2 trained a's labels control differently
    assert results.transfers("s2").set_index("job_id").loc["kl-ab0", "delta_over_labels"] == pytest.approx(2.0 - 3.0)

    curves = results.curves("s1")
    first = curves[curves["epoch"] == 1].set_index("job_id")["delta_over_labels"].to_dict()
    for job, value in _expected_over(S1, epoch=1).items():
        assert first[job] == pytest.approx(value, nan_ok=True), job
    assert first["kl-ab0"] == pytest.approx(1.0 - 0.4) and first["kl-ba0"] == pytest.approx(-1.0 + 0.5)


def test_every_sweep_at_once_and_the_reports_rows(results, db):
    every = results.transfers()
    assert sorted(every["sweep"].unique()) == ["s1", "s2"] and len(every) == len(S1) + len(S2)
    for sweep in ("s1", "s2"):
        one = results.transfers(sweep)
        pd.testing.assert_frame_equal(every[every["sweep"] == sweep].reset_index(drop=True), one)
        # the report's own final rows, the same ones; the last epoch of each curve is the transfers row
        store = Store(f"sqlite:///{db}", create=False)
        report = final_transfers(store, sweep)
        store.dispose()
        assert sorted(report["job_id"]) == sorted(one["job_id"])
        curves = results.curves(sweep)
        final = curves[curves["final"].astype(bool)].reset_index(drop=True)
        pd.testing.assert_frame_equal(final, one)
    assert len(results.curves()) == 2 * (len(S1) + len(S2))


def test_query_takes_parameters_and_refuses_writes_leaving_the_file_as_it_was(db):
    before = _snapshot(db)
    with zoo_sweep.Results(f"sqlite:///{db}") as r:
        got = r.query("select name from models where family = :f or params > :p order by name", f="cnn", p=2500)
        assert got["name"].tolist() == ["a", "c"]
        r.models, r.pairs, r.sweeps, r.transfers(), r.curves("s2")  # noqa: B018
        for sql in WRITES:
            with pytest.raises(UserError, match="query failed"):
                r.query(sql.replace("{folder}", str(db.parent)))
        with pytest.raises(UserError, match="no sweep named 'nope' in the store \\(sweeps: s1, s2\\)"):
            r.transfers("nope")
        with pytest.raises(UserError, match="no sweep named 'nope'"):
            r.curves("nope")
    assert _snapshot(db) == before  # bytes, mtime, and no file beside it (no journal, no other.db)
    assert len(zoo_sweep.Results(f"sqlite:///{db}").models) == len(MODELS)  # every row still there


def test_a_runaway_query_stops_at_the_time_limit(db):
    r = zoo_sweep.Results(f"sqlite:///{db}", timeout=0.3)
    with pytest.raises(UserError, match=r"ran longer than 0.3 s.*Results\(url, timeout=SECONDS\)"):
        r.query(RUNAWAY)
    assert r.query("select count(*) as n from sweeps")["n"].tolist() == [2]  # the connection still reads
    with pytest.raises(UserError, match="timeout must be a positive number"):
        zoo_sweep.Results(f"sqlite:///{db}", timeout=0)


def test_a_missing_store_is_one_line_and_no_file(tmp_path, monkeypatch):
    monkeypatch.delenv("ZOO_SWEEP_DB", raising=False)
    missing = tmp_path / "sub" / "zoo.db"
    with pytest.raises(UserError, match=re.escape(f"no store at {missing}: give the store's URL") + ".*zoo-sweep demo"):
        zoo_sweep.Results(f"sqlite:///{missing}")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=re.escape(f"no store at results/zoo.db (in the current folder {tmp_path})")):
        zoo_sweep.Results()  # the command line's default store
    assert sorted(os.listdir(tmp_path)) == []  # neither the file nor its folder was made


def test_no_argument_opens_the_store_the_command_line_uses(db, tmp_path, monkeypatch):
    (tmp_path / "results").mkdir()
    shutil.copy(db, tmp_path / "results" / "zoo.db")
    monkeypatch.chdir(tmp_path)
    assert zoo_sweep.Results().sweeps["name"].tolist() == ["s1", "s2"]
    other = tmp_path / "other.db"
    s = Store(f"sqlite:///{other}")
    s.write_plan({"name": "only", "spec": "{}", "spec_hash": "h", "path": None}, [], [], "only")
    s.dispose()
    monkeypatch.setenv("ZOO_SWEEP_DB", f"sqlite:///{other}")
    assert zoo_sweep.Results().sweeps["name"].tolist() == ["only"]
    assert zoo_sweep.Results().transfers().empty and "delta" in zoo_sweep.Results().transfers().columns


def test_stores_it_cannot_read_are_refused_unchanged(tmp_path):
    old = tmp_path / "v1.db"
    shutil.copy(FIXTURES / "store_v1.db", old)
    empty = tmp_path / "empty.db"
    empty.touch()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database " * 100)
    before = {p: _snapshot(p) for p in (old, empty, junk)}
    cases = [(old, "store schema is version 1, this zoo-sweep needs .*zoo-sweep db upgrade"),
             (empty, "no zoo-sweep store in .*empty.db \\(the database is empty\\)"),
             (junk, "not a zoo-sweep store: .*junk.db is not an SQLite database")]
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            zoo_sweep.Results(f"sqlite:///{path}")
    assert {p: _snapshot(p) for p in before} == before  # never upgraded, never created


def test_to_duckdb_without_duckdb_says_how_to_get_it(results, monkeypatch):
    monkeypatch.setitem(sys.modules, "duckdb", None)  # as where DuckDB is not installed
    with pytest.raises(UserError, match="pip install duckdb"):
        results.to_duckdb()


def test_to_duckdb_holds_every_table(results):
    pytest.importorskip("duckdb", reason="DuckDB is optional (not a dependency); its error path is tested above")
    con = results.to_duckdb()
    tables = {r[0] for r in con.execute("show tables").fetchall()}
    assert tables == {"sweeps", "models", "jobs", "sweep_jobs", "pairs", "transfer_results", "job_teachers"}
    n = con.execute("select count(*) from transfer_results where final").fetchone()[0]
    assert n == len({j[0] for j in S1 + S2})
