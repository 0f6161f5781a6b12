"""Stage 3: which measured pairs get a transfer job (pair policies of a sweep spec)."""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd

from .spec import PairSpec


def select_pairs(pairs: pd.DataFrame, families: dict[str, str], policy: PairSpec,
                 history: tuple[pd.DataFrame, pd.DataFrame, str] | None = None) -> list[tuple[str, str]]:
    """Ordered (student, teacher) pairs; ``pairs`` has student and teacher columns, plus acc_gap for
    'stratified' and rho_pos for 'top_ck'. The same inputs always give the same pairs, so re-planning adds
    no new jobs."""
    df = pairs.sort_values(["student", "teacher"]).reset_index(drop=True)
    rng = np.random.default_rng(policy.seed)
    if policy.policy == "explicit":
        df = df[df["student"].map(lambda n: _matches(n, policy.students))
                & df["teacher"].map(lambda n: _matches(n, policy.teachers))]
    elif policy.policy == "predicted_gain":
        # learn from finished transfers (history: models, transfer results, method); each launch picks the
        # best unrun pairs, so the selection grows as results come in (falls back to top_ck without any)
        from .gains import rank_pairs

        models_df, results_df, method = history if history is not None else (pd.DataFrame(), pd.DataFrame(), "")
        ranked = rank_pairs(df, models_df, results_df, method)
        return list(zip(ranked["student"], ranked["teacher"]))[: policy.max_pairs]
    elif policy.policy == "top_ck":
        # most complementary knowledge first; ties broken by name so the choice is stable
        df = df.sort_values(["rho_pos", "student", "teacher"], ascending=[False, True, True]).head(policy.max_pairs)
        return list(zip(df["student"], df["teacher"]))
    elif policy.policy == "stratified":
        # bins of accuracy gap x family combination, so a small budget still covers weaker and stronger
        # teachers of every family instead of whatever pairs come first
        gap_bin = pd.cut(df["acc_gap"], bins=list(policy.gap_bins), labels=False, include_lowest=True)
        combo = df["student"].map(families) + ">" + df["teacher"].map(families)
        keep = []
        for _, group in df.groupby([gap_bin.fillna(-1), combo], sort=True):
            take = min(policy.per_bin, len(group))
            keep.extend(rng.choice(group.index.to_numpy(), size=take, replace=False).tolist())
        df = df.loc[sorted(keep)]
    if policy.max_pairs is not None and len(df) > policy.max_pairs:
        df = df.loc[sorted(rng.choice(df.index.to_numpy(), size=policy.max_pairs, replace=False).tolist())]
    return list(zip(df["student"], df["teacher"]))


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def needs_measurement(policy: PairSpec) -> bool:
    """Whether the selection depends on stage-2 metrics (then transfer jobs are added after compare)."""
    return policy.policy not in ("all", "explicit")


def all_pairs(names: list[str]) -> pd.DataFrame:
    return pd.DataFrame([(s, t) for s in names for t in names if s != t], columns=["student", "teacher"])
