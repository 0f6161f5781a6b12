"""Stage 3: which measured pairs get a transfer job (pair policies of a sweep spec)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

import numpy as np
import pandas as pd

from zoo_sweep.config.spec import PairSpec

PolicyFn = Callable[[pd.DataFrame, dict, PairSpec, np.random.Generator, tuple | None], pd.DataFrame]
POLICIES: dict[str, PolicyFn] = {}  # [pairs] policy name -> rows of the sorted pairs frame it keeps


def policy(name: str):
    def deco(fn: PolicyFn) -> PolicyFn:
        POLICIES[name] = fn
        return fn
    return deco


def select_pairs(pairs: pd.DataFrame, families: dict[str, str], spec: PairSpec,
                 history: tuple[pd.DataFrame, pd.DataFrame, str] | None = None) -> list[tuple[str, str]]:
    """Ordered (student, teacher) pairs; ``pairs`` has student and teacher columns, plus acc_gap for
    'stratified' and rho_pos for 'top_ck'. The same inputs always give the same pairs, so re-planning adds
    no new jobs. ``max_pairs`` caps policies that do not rank (a seeded sample)."""
    df = pairs.sort_values(["student", "teacher"]).reset_index(drop=True)
    rng = np.random.default_rng(spec.seed)
    df = POLICIES[spec.policy](df, families, spec, rng, history)
    if spec.max_pairs is not None and len(df) > spec.max_pairs:
        df = df.loc[sorted(rng.choice(df.index.to_numpy(), size=spec.max_pairs, replace=False).tolist())]
    return list(zip(df["student"], df["teacher"]))


@policy("all")
def _all(df, families, spec, rng, history):
    return df


@policy("explicit")
def _explicit(df, families, spec, rng, history):
    return df[df["student"].map(lambda n: _matches(n, spec.students))
              & df["teacher"].map(lambda n: _matches(n, spec.teachers))]


@policy("predicted_gain")
def _predicted_gain(df, families, spec, rng, history):
    # learn from finished transfers (history: models, transfer results, method); each launch picks the
    # best unrun pairs, so the selection grows as results come in (falls back to top_ck without any)
    from zoo_sweep.science.gains import rank_pairs

    models_df, results_df, method = history if history is not None else (pd.DataFrame(), pd.DataFrame(), "")
    return rank_pairs(df, models_df, results_df, method).head(spec.max_pairs)


@policy("top_ck")
def _top_ck(df, families, spec, rng, history):
    # most complementary knowledge first; ties broken by name so the choice is stable
    return df.sort_values(["rho_pos", "student", "teacher"], ascending=[False, True, True]).head(spec.max_pairs)


@policy("stratified")
def _stratified(df, families, spec, rng, history):
    # bins of accuracy gap x family combination, so a small budget still covers weaker and stronger
    # teachers of every family instead of whatever pairs come first
    gap_bin = pd.cut(df["acc_gap"], bins=list(spec.gap_bins), labels=False, include_lowest=True)
    combo = df["student"].map(families) + ">" + df["teacher"].map(families)
    keep = []
    for _, group in df.groupby([gap_bin.fillna(-1), combo], sort=True):
        take = min(spec.per_bin, len(group))
        keep.extend(rng.choice(group.index.to_numpy(), size=take, replace=False).tolist())
    return df.loc[sorted(keep)]


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def needs_measurement(policy: PairSpec) -> bool:
    """Whether the selection depends on stage-2 metrics (then transfer jobs are added after compare)."""
    return policy.policy not in ("all", "explicit")


def all_pairs(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame([(s, t) for s in names for t in names if s != t], columns=["student", "teacher"])
