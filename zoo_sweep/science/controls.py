"""Controls: what a student becomes without a teacher's knowledge, to tell knowledge transfer apart from "the
student simply trained longer".

A control job runs once per student and seed, never per pair, with the same optimiser, schedule, inputs and
epochs as the sweep's transfer jobs, and names the student as its own teacher: ``labels`` trains the student
on the labels alone, ``self_dist`` distils it from its frozen self. Its rows are ordinary transfer rows.

``delta_over_controls`` pairs each single-teacher method row with the control row of the same student, seed
and epoch: Δ over the control is the method's Δ minus the control's. ``convergence`` says per student, and for
the zoo, whether training on the labels alone still improves the students (then part of any method's Δ is
continued training). Plain numpy / pandas; the control names come in as an argument (the transfer layer's
catalog knows them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from zoo_sweep.science import stats

LABELS = "labels"
NOT_CONVERGED = "not converged"
CONVERGED = "converged within noise"
CANNOT_TELL = "cannot tell"
LABELS_HURT = "label training hurts"
NO_LABELS = "no labels control"
TOO_FEW = "too few students"
STUDENT_COLUMNS = ["student", "seeds", "labels_delta", "labels_seed_sd", "noise_sd", "noise", "verdict"]


def over_column(control: str) -> str:
    return f"delta_over_{control}"


def split_controls(rows: pd.DataFrame, controls) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(method rows, control rows) of transfer rows: a control row is a run of a control (a name in
    ``controls``) with the student as its own teacher; a method row has another model as teacher (a pair never
    has one model twice). Multi-teacher rows (``multi_teacher`` 1, as the report's and the store's queries
    mark them) are neither."""
    r = single_teacher(rows)
    if r.empty:
        return r, r
    own = r["teacher"] == r["student"]
    return r[~own], r[own & r["method"].isin(list(controls))]


def single_teacher(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` less the multi-teacher rows (``multi_teacher`` 1)."""
    if rows.empty or "multi_teacher" not in rows:
        return rows
    return rows[pd.to_numeric(rows["multi_teacher"]).fillna(0) == 0]


def _keys(rows: pd.DataFrame) -> list[str]:
    """What a method row and its control share: the student, and the seed and epoch when the rows have them
    (seed-averaged pair rows have neither)."""
    return [k for k in ("student", "seed", "epoch") if k in rows]


def delta_over_controls(rows: pd.DataFrame, controls) -> pd.DataFrame:
    """The single-teacher method rows of ``rows`` (final rows or every epoch's), each with
    ``delta_over_<control>`` = its Δ minus the Δ of that control's run on the same student, seed and epoch,
    for each name in ``controls`` with rows here (in that order). A row without a matching control run gets NaN.
    Two runs of one control for the same student, seed and epoch are averaged."""
    methods, ctl = split_controls(rows, controls)
    methods = methods.reset_index(drop=True)
    if methods.empty:
        return methods
    keys = _keys(rows)
    delta = pd.to_numeric(methods["delta"], errors="coerce")
    out = {}
    for c in controls:
        runs = ctl[ctl["method"] == c]
        if runs.empty:
            continue
        ref = runs.assign(delta=pd.to_numeric(runs["delta"], errors="coerce")).groupby(keys)["delta"].mean()
        matched = methods[keys].merge(ref.rename("_ref").reset_index(), on=keys, how="left")["_ref"].to_numpy(float)
        out[over_column(c)] = delta.to_numpy(float) - matched
    return methods.assign(**out)


def present(rows: pd.DataFrame, controls) -> list[str]:
    """The names in ``controls`` that have control rows in ``rows``, in that order."""
    _, ctl = split_controls(rows, controls)
    have = set(ctl["method"]) if len(ctl) else set()
    return [c for c in controls if c in have]


@dataclass(frozen=True)
class Convergence:
    """Whether the students were converged, per student (``students``: ``STUDENT_COLUMNS``) and for the zoo
    (``zoo``: the labels control's mean Δ over students; ``verdict``)."""

    students: pd.DataFrame
    zoo: stats.CI
    verdict: str
    pooled_sd: float = float("nan")  # seed-to-seed SD of Δ over the sweep's runs with ≥ 2 seeds

    @property
    def not_converged(self) -> list[str]:
        return list(self.students.loc[self.students["verdict"] == NOT_CONVERGED, "student"])

    @property
    def cannot_tell(self) -> list[str]:
        return list(self.students.loc[self.students["verdict"] == CANNOT_TELL, "student"])

    def lines(self) -> list[str]:
        """One line per student, e.g. "cnn_a: labels Δ +1.20 over 3 seeds, seed SD 0.40: not converged"."""
        return [student_line(r) for r in self.students.itertuples(index=False)]


def student_line(r) -> str:
    """One student's row of ``Convergence.students`` as a line."""
    if r.seeds >= 2:
        how = f"over {r.seeds} seeds, seed SD {r.labels_seed_sd:.2f}"
    elif r.noise_sd == r.noise_sd:
        how = f"1 seed; the sweep's pooled seed SD {r.noise_sd:.2f}"
    else:
        how = "1 seed; no seed noise measured in this sweep"
    return f"{r.student}: labels Δ {r.labels_delta:+.2f} ({how}): {r.verdict}"


def convergence(rows: pd.DataFrame, labels: str = LABELS, n_boot: int = stats.N_BOOT, level: float = stats.LEVEL,
                seed: int = stats.SEED) -> Convergence:
    """Were the students converged? From transfer rows (their final rows are used: ``final`` when the rows have
    it) holding the ``labels`` control runs (the student as its own teacher).

    The rule, fixed before any data was seen. Per student: its labels control's mean Δ over seeds
    (``labels_delta``) against its seed noise (``noise_sd``). With two or more seeds the noise is the standard
    deviation of its labels Δ between seeds (``labels_seed_sd``, ddof 1); with one seed it is the sweep's pooled
    seed-to-seed SD of Δ (``stats.seed_sd`` over every single-teacher and control run, one unit per student,
    teacher and method, units with ≥ 2 seeds), and without any repeated seed in the sweep there is none. The
    student is "not converged" when ``labels_delta`` > ``noise_sd``: training on the labels alone, as long as
    a transfer job trains, improves it by more than its seed noise; otherwise "converged within noise"; with no
    noise to compare with, "cannot tell" (never a guess).

    For the zoo: the labels control's mean Δ over students with ``stats.hierarchical_mean`` (students
    resampled; a t interval below 5 students). Its interval above 0: "not converged"; covering 0: "converged
    within noise"; below 0: "label training hurts" (training on the labels lowers accuracy: no sign of
    unconverged students); one student: "too few students"; no labels rows: "no labels control".
    """
    r = rows
    if len(r) and "final" in r:
        r = r[r["final"].astype(bool)]
    _, ctl = split_controls(r, [labels])
    if ctl.empty:
        return Convergence(pd.DataFrame(columns=STUDENT_COLUMNS), stats.NAN_CI, NO_LABELS)
    runs = single_teacher(r)  # every single-teacher and control run
    units = runs["student"].astype(str) + "\x1f" + runs["teacher"].astype(str) + "\x1f" + runs["method"].astype(str)
    pooled = stats.seed_sd(pd.to_numeric(runs["delta"], errors="coerce"), units)
    d = ctl.assign(delta=pd.to_numeric(ctl["delta"], errors="coerce")).dropna(subset=["delta"])
    out = []
    for student, g in d.groupby("student", sort=True):
        # two runs of one seed (a job run twice) are one seed's result, not seed noise
        x = g.groupby("seed")["delta"].mean() if "seed" in g else g["delta"]
        n, mean = len(x), float(x.mean())
        own = float(x.std(ddof=1)) if n >= 2 else float("nan")
        noise_sd, noise = (own, "its seeds") if n >= 2 else (pooled, "pooled over the sweep")
        if noise_sd != noise_sd:
            verdict, noise = CANNOT_TELL, "none"
        else:
            verdict = NOT_CONVERGED if mean > noise_sd else CONVERGED
        out.append({"student": student, "seeds": n, "labels_delta": mean, "labels_seed_sd": own,
                    "noise_sd": noise_sd, "noise": noise, "verdict": verdict})
    # the rows of a student are its seeds: pairs = its own name (its teacher) averages them
    zoo = stats.hierarchical_mean(d["delta"], d["student"], d["teacher"], None, n_boot, level, seed)
    if np.isnan(zoo.lo):
        verdict = TOO_FEW
    else:
        verdict = NOT_CONVERGED if zoo.lo > 0 else LABELS_HURT if zoo.hi < 0 else CONVERGED
    return Convergence(pd.DataFrame(out, columns=STUDENT_COLUMNS), zoo, verdict, pooled)
