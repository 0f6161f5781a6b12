"""The suite itself: pytest's default import mode imports each test module by its file name alone, so two tiers
holding a module of the same name stop collection of the whole suite (`make test`), while each tier run alone
(`make test-fast`) still passes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_name_of_its_own():
    names = Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert len(names) > 10  # the walk found the suite
    assert [n for n, k in names.items() if k > 1] == []
