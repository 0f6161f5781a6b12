"""Sweep specs: the shipped ones parse, and mistakes are reported by name before anything runs."""

from pathlib import Path

import pytest

from zoo_sweep.config.spec import parse_spec
from zoo_sweep.errors import UserError
from zoo_sweep.pipeline.plan import check_names, load_sweep

JOBS = Path(__file__).resolve().parents[2] / "jobs"


@pytest.mark.parametrize("path", sorted(JOBS.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_specs_parse(path):
    spec = load_sweep(path)
    assert spec.name
    # every shipped spec transfers, except the measure-only flip studies ([transfer] methods = [])
    assert spec.transfer.methods or path.name.endswith("-flips.toml")


def test_digest_ignores_where_the_spec_came_from():
    a = parse_spec({"name": "x"}, "a.toml")
    b = parse_spec({"name": "x"}, "b.toml")
    assert a.digest == b.digest
    assert parse_spec({"name": "x", "transfer": {"epochs": 3}}).digest != a.digest


@pytest.mark.parametrize("doc, message", [
    ({"name": "x", "transfer": {"methods": ["kl", "bogus"]}}, "unknown method 'bogus' in [transfer] methods"),
    ({"name": "x", "transfer": {"epoch": 3}}, "unknown key(s) epoch in [transfer]"),
    ({"name": "x", "transfer": {"epochs": "3"}}, "epochs must be an integer"),
    ({"name": "x", "transfer": {"alpha": 1.5}}, "[transfer] alpha must be <= 1, got 1.5"),
    ({"name": "x", "pairs": {"policy": "most"}}, "unknown [pairs] policy 'most'"),
    ({"name": "x", "data": {"eval": "imagenet"}}, "must be 'digits:eval'"),
    ({"name": "x", "zoo": {"source": "hub"}}, "unknown [zoo] source 'hub'"),
    ({"name": "x", "extra": 1}, "unknown top-level key(s) extra"),
])
def test_spec_errors_name_the_problem(doc, message):
    with pytest.raises(UserError) as e:
        check_names(parse_spec(doc))
    assert message in str(e.value)


def test_the_spec_reference_in_the_docs_is_the_schema():
    from zoo_sweep.config.reference import markdown

    page = (JOBS.parent / "docs" / "specs.md").read_text()
    assert markdown() in page, "docs/specs.md is stale: python -m zoo_sweep.config.reference --write docs/specs.md"


def test_the_method_tables_in_the_docs_are_the_declarations():
    from zoo_sweep.config.reference import COMMAND, controls_markdown, methods_markdown

    page = (JOBS.parent / "docs" / "methods.md").read_text()
    for block in (methods_markdown(), controls_markdown()):
        assert block in page, f"docs/methods.md is stale: {COMMAND}"
