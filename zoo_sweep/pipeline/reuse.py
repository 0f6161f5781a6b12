"""How much forward work the launcher's logit reuse (``teacher_cache = "auto"``) can save, in closed form.

Reuse only removes teacher and s0 forward passes: every student still trains in every job. A model that is both
a student and a teacher (all-pairs sweeps) shares one stream across its two roles, and a model never learns from
itself. docs/gpus.md ("teacher reuse") gives the floors these functions compute; bench/teacher_cache.py and
bench/gpu_check.py print the estimate next to each measured ratio. No torch: the method facts come from the
catalog.
"""

from __future__ import annotations

from collections import Counter

from zoo_sweep.transfer.catalog import CATALOG


def pairs(students: list[str], teachers: list[str]) -> list[tuple[str, str]]:
    """The (student, teacher) jobs of a sweep, students outer; a model never learns from itself."""
    return [(s, t) for s in students for t in teachers if s != t]


def reuse_floor(students, teachers, method: str, cost_ms: dict[str, float], steps_per_job: int, off_s: float) -> float:
    """The lowest auto/off a sweep can reach, estimated: the "off" time less the forward passes the cache saves
    (``cost_ms``: one forward pass over one batch per model; a model's one stream serves both its roles)."""
    roles = [[t] + ([s] if CATALOG[method].needs_s0 else []) for s, t in pairs(students, teachers)]
    uses = Counter(m for r in roles for m in r)  # a model's stream serves its uses in either role
    saved_ms = sum(cost_ms[m] * (n - 1) for m, n in uses.items()) * steps_per_job
    return 1 - saved_ms / 1000 / off_s
