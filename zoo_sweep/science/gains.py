"""Where to find gains before paying for them: learn Δ_transf from finished transfers, rank the pairs not run yet.

A small regression model (ridge by default, gradient boosting on request) is fitted per method on the
finished single-teacher transfer results, with features taken from the pairs table (ρ_pos, ρ_neg, accuracy
gap, both accuracies, per-class flip entropy) and the models table (families, log10 of the parameter counts).
With too few finished results the ranking falls back to ``top_ck``: most complementary knowledge (ρ_pos) first.

``rank_pairs`` is the pair policy ``predicted_gain``; ``heldout_rank_correlation`` says how far to trust it
(Spearman between predicted and measured Δ_transf on finished pairs held out of the fit).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from zoo_sweep.science.stats import spearman

NUMERIC = ["rho_pos", "rho_neg", "acc_gap", "acc_student", "acc_teacher", "flip_entropy",
           "log_params_student", "log_params_teacher"]
CATEGORICAL = ["family_student", "family_teacher"]
MIN_RESULTS = 5  # finished pairs of a method needed before a model is fitted; fewer: top_ck
RANK_COLUMNS = ["rank", "student", "teacher", "predicted_delta", "rho_pos", "acc_gap", "policy"]


def pair_features(pairs_df: pd.DataFrame, models_df: pd.DataFrame) -> pd.DataFrame:
    """The pairs rows with the model features added (families, log10 parameter counts)."""
    df = pairs_df.copy()
    for col in ("rho_pos", "rho_neg", "acc_gap", "flip_entropy"):
        if col not in df:
            df[col] = np.nan
    m = models_df.drop_duplicates("name").set_index("name") if len(models_df) else pd.DataFrame(
        columns=["family", "params", "accuracy"])
    for side in ("student", "teacher"):
        names = df[side]
        df[f"family_{side}"] = names.map(m["family"]).fillna("unknown").astype(str) if "family" in m else "unknown"
        params = pd.to_numeric(names.map(m["params"]), errors="coerce") if "params" in m else np.nan
        df[f"log_params_{side}"] = np.log10(pd.Series(params, index=df.index, dtype=float).where(lambda p: p > 0))
        if f"acc_{side}" not in df:
            acc = names.map(m["accuracy"]) if "accuracy" in m else np.nan
            df[f"acc_{side}"] = pd.to_numeric(acc, errors="coerce")
    return df


def per_pair(results: pd.DataFrame) -> pd.DataFrame:
    """Transfer rows -> one row per (method, student, teacher): the final epoch (when the table has a ``final``
    column), single-teacher jobs only (no controls), numeric columns averaged over seeds. Rows of stored jobs (with a
    ``job_id``) say which are multi-teacher in ``multi_teacher`` (1: its teachers are in the store's
    job_teachers table; storage.store.final_results adds it). Rows of the report's ``transfer_pairs`` query,
    the same filter in SQL, pass unchanged."""
    if results.empty:
        return results
    r = results
    if "final" in r:
        r = r[r["final"].astype(bool)]
    r = r[r["student"] != r["teacher"]]  # controls name the student as its own teacher: not pairs
    if "multi_teacher" in r:
        r = r[pd.to_numeric(r["multi_teacher"]).fillna(0) == 0]
    elif "job_id" in r:
        raise ValueError("transfer rows of stored jobs need their multi_teacher column (multi-teacher jobs are "
                         "not pairs): read them with zoo_sweep.storage.store.final_results")
    if not r.duplicated(["method", "student", "teacher"]).any():
        return r.reset_index(drop=True)
    num = [c for c in r.columns if c not in ("method", "student", "teacher") and r[c].dtype.kind in "if"
           and c not in ("epoch", "seed", "final", "multi_teacher")]
    return r.groupby(["method", "student", "teacher"], as_index=False, sort=False)[num].mean()


def finished_pairs(results_df: pd.DataFrame, method: str) -> pd.DataFrame:
    """One row per (student, teacher) with the measured delta of ``method`` (``per_pair``), pairs without
    a delta left out."""
    cols = ["student", "teacher", "delta"]
    if results_df is None or results_df.empty:
        return pd.DataFrame(columns=cols)
    r = results_df[results_df["method"] == method]
    # a column of NULLs comes back from SQL as objects: per_pair averages numbers only
    r = per_pair(r.assign(delta=pd.to_numeric(r["delta"], errors="coerce")))
    r = r[r["delta"].notna()]
    return r.sort_values(["student", "teacher"], kind="mergesort")[cols].reset_index(drop=True)


def make_model(kind: str = "ridge", seed: int = 0):
    """The regression pipeline on ``design`` matrices: median imputation, scaling, then ridge (alpha chosen
    by efficient leave-one-out) or a small gradient-boosting model."""
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if kind == "ridge":
        from sklearn.linear_model import RidgeCV

        reg = RidgeCV(alphas=np.logspace(-2, 3, 21))
    elif kind == "gbm":
        from sklearn.ensemble import GradientBoostingRegressor

        reg = GradientBoostingRegressor(n_estimators=150, max_depth=2, learning_rate=0.05, subsample=0.8,
                                        random_state=seed)
    else:
        raise ValueError(f"unknown model {kind!r}: ridge or gbm")
    return make_pipeline(SimpleImputer(strategy="median", keep_empty_features=True), StandardScaler(), reg)


def design(feats: pd.DataFrame, categories: dict[str, list[str]]) -> np.ndarray:
    """Numeric features as they are (NaN where missing) and one column per family of student and teacher."""
    cols = [feats[c].to_numpy(dtype=float) for c in NUMERIC]
    for c in CATEGORICAL:
        v = feats[c].to_numpy(dtype=object)
        cols += [(v == cat).astype(float) for cat in categories[c]]
    return np.column_stack(cols) if len(feats) else np.empty((0, len(cols)))


def _categories(feats: pd.DataFrame) -> dict[str, list[str]]:
    return {c: sorted(feats[c].astype(str).unique()) for c in CATEGORICAL}


def _training_set(pairs_df, models_df, results_df, method, feats):
    if feats is None:
        feats = pair_features(pairs_df, models_df)
    done = finished_pairs(results_df, method)
    train = feats.merge(done, on=["student", "teacher"], how="inner")
    return feats, done, train


def rank_pairs(pairs_df: pd.DataFrame, models_df: pd.DataFrame, results_df: pd.DataFrame, method: str, *,
               model: str = "ridge", min_results: int = MIN_RESULTS, seed: int = 0,
               features: pd.DataFrame | None = None) -> pd.DataFrame:
    """Pairs of ``pairs_df`` with no finished ``method`` result, best predicted Δ_transf first.

    ``pairs_df``: rows of the pairs table (one eval set; student, teacher, rho_pos, rho_neg, acc_gap, ...).
    ``models_df``: rows of the models table (name, family, params, accuracy). ``results_df``: rows of
    transfer_results (student, teacher, method, delta; ``final`` honoured when present).
    Returns columns rank (1 = run first), student, teacher, predicted_delta (points; NaN under the
    fallback), rho_pos, acc_gap, policy ("predicted_gain", or "top_ck" when fewer than ``min_results``
    finished pairs of the method exist). ``df.attrs["policy"]``, ``df.attrs["note"]`` (one line saying what
    was done and why) and ``df.attrs["n_train"]`` describe the ranking. Deterministic for the same inputs.
    ``features``: ``pair_features(pairs_df, models_df)`` when the caller already has it: it is the same for
    every method, so a caller ranking several methods builds it once.
    """
    feats, done, train = _training_set(pairs_df, models_df, results_df, method, features)
    key = pd.MultiIndex.from_frame(feats[["student", "teacher"]])
    ran = key.isin(pd.MultiIndex.from_frame(done[["student", "teacher"]])) if len(done) else np.zeros(len(feats), bool)
    todo = feats[~ran].copy()
    if len(train) >= min_results and train["delta"].nunique() > 1:
        cats = _categories(feats)
        fitted = make_model(model, seed).fit(design(train, cats), train["delta"].to_numpy())
        todo["predicted_delta"] = fitted.predict(design(todo, cats)) if len(todo) else []
        policy = "predicted_gain"
        note = (f"predicted_gain: {model} model fitted on {len(train)} finished {method} pair(s); "
                f"{len(todo)} unrun pair(s) ranked by predicted delta")
        todo = todo.sort_values(["predicted_delta", "rho_pos", "student", "teacher"],
                                ascending=[False, False, True, True], kind="mergesort")
    else:
        todo["predicted_delta"] = np.nan
        policy = "top_ck"
        why = "no finished" if len(train) == 0 else f"only {len(train)} finished"
        note = (f"{why} {method} result(s) to learn from (need {min_results}): "
                f"{len(todo)} unrun pair(s) ranked by top_ck (most rho_pos first)")
        todo = todo.sort_values(["rho_pos", "student", "teacher"], ascending=[False, True, True], kind="mergesort")
    todo["policy"] = policy
    todo["rank"] = np.arange(1, len(todo) + 1)
    out = todo[RANK_COLUMNS].reset_index(drop=True)
    out.attrs.update(policy=policy, note=note, n_train=int(len(train)), method=method, model=model)
    return out


@dataclass
class HeldOut:
    """Held-out quality of ``predicted_gain`` for one method, over ``repeats`` random splits of the finished
    pairs (``test_size`` of them held out each time): the mean Spearman between predicted and measured delta,
    the 2.5-97.5 % range over splits, and the same for the top_ck baseline (rank by rho_pos)."""

    method: str
    n_pairs: int
    n_test: int
    repeats: int
    spearman: float = float("nan")
    spearman_lo: float = float("nan")
    spearman_hi: float = float("nan")
    top_ck_spearman: float = float("nan")
    note: str = ""
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)  # out-of-split predictions

    def as_row(self) -> dict:
        return {"method": self.method, "finished_pairs": self.n_pairs, "held_out": self.n_test,
                "splits": self.repeats, "spearman": self.spearman, "spearman_lo": self.spearman_lo,
                "spearman_hi": self.spearman_hi, "top_ck_spearman": self.top_ck_spearman, "note": self.note}


def heldout_rank_correlation(pairs_df: pd.DataFrame, models_df: pd.DataFrame, results_df: pd.DataFrame,
                             method: str, *, test_size: float = 0.3, repeats: int = 20, model: str = "ridge",
                             seed: int = 0, min_results: int = MIN_RESULTS,
                             features: pd.DataFrame | None = None) -> HeldOut:
    """Spearman rank correlation between predicted and measured Δ_transf on finished pairs held out of the
    fit, averaged over ``repeats`` seeded random splits. NaN (with a note) when there are fewer than
    ``min_results`` + 2 finished pairs (a fit needs ``min_results``, a rank correlation at least 2).
    ``features``: as for ``rank_pairs``."""
    feats, _, train = _training_set(pairs_df, models_df, results_df, method, features)
    cats = _categories(feats)
    X, y = design(train, cats), train["delta"].to_numpy(dtype=float)
    n = len(train)
    n_test = max(2, int(round(test_size * n)))
    if n - n_test < min_results or n < min_results + 2:
        return HeldOut(method, n, 0, 0, note=f"{n} finished pair(s): too few for a held-out split "
                                             f"(need {min_results + 2})")
    rng = np.random.default_rng(seed)
    rhos, base, preds = [], [], []
    for rep in range(repeats):
        perm = rng.permutation(n)
        te, tr = perm[:n_test], perm[n_test:]
        test = train.iloc[te]
        if np.unique(y[tr]).size < 2:
            continue
        p = make_model(model, seed + rep).fit(X[tr], y[tr]).predict(X[te])
        rhos.append(spearman(p, test["delta"]))
        base.append(spearman(test["rho_pos"], test["delta"]))
        preds.append(pd.DataFrame({"student": test["student"].to_numpy(), "teacher": test["teacher"].to_numpy(),
                                   "delta": test["delta"].to_numpy(), "predicted_delta": p, "split": rep}))
    r = np.array(rhos, dtype=float)
    r = r[~np.isnan(r)]
    if r.size == 0:
        return HeldOut(method, n, n_test, 0, note="measured deltas are constant: no ranking to check")
    b = np.array(base, dtype=float)
    return HeldOut(method, n, n_test, int(r.size), float(r.mean()), float(np.quantile(r, 0.025)),
                   float(np.quantile(r, 0.975)), float(np.nanmean(b)) if np.isfinite(b).any() else float("nan"),
                   note=f"{model}, {r.size} random splits, {n_test} of {n} pairs held out each",
                   predictions=pd.concat(preds, ignore_index=True))
