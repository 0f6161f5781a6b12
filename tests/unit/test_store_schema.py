"""The store's columns come from the metric names the lower layers declare, and those names are what the
metrics code computes: one declaration each, nothing written twice."""

from __future__ import annotations

import numpy as np

from zoo_sweep.science.complementary import (
    pairs_frame,  # torch: imported with the module, not in a test
)
from zoo_sweep.science.pair_metrics import CLASS_COUNTS, PAIR_METRICS, TOP_P
from zoo_sweep.storage.schema import pairs, transfer_results
from zoo_sweep.transfer.result_metrics import (
    CLASS_RATE_METRICS,
    EVAL_METRICS,
    TRAINING_METRICS,
    TRANSFER_METRICS,
)


def test_pair_columns_are_what_compare_computes():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 50)
    preds = np.stack([np.where(rng.random(50) < 0.7, labels, rng.integers(0, 4, 50)) for _ in range(3)])
    df = pairs_frame(["a", "b", "c"], preds, labels, rng.random((3, 50)).astype(np.float32), 4)
    assert set(df.columns) == {"student", "teacher", *PAIR_METRICS, *CLASS_COUNTS}
    assert [c.name for c in pairs.columns] == ["eval_set", "student", "teacher", *PAIR_METRICS, *CLASS_COUNTS]
    # exact counts, then the same in the paper's convention (tests/unit/test_complementary.py holds both)
    assert CLASS_COUNTS == (*(f"top{p}_classes" for p in TOP_P), *(f"top{p}_classes_paper" for p in TOP_P))


def test_transfer_columns_are_what_a_transfer_reports():
    from zoo_sweep.transfer.metrics import transfer_metrics

    got = transfer_metrics([True, False, False, True], [True, True, False, False], [False, True, True, True])
    assert tuple(got) == EVAL_METRICS
    with_labels = transfer_metrics([True, False, False, True], [True, True, False, False], [False, True, True, True],
                                   labels=[0, 1, 1, 0], num_classes=2)
    assert tuple(with_labels)[:len(EVAL_METRICS)] == EVAL_METRICS
    assert sorted(tuple(with_labels)[len(EVAL_METRICS):]) == sorted(CLASS_RATE_METRICS)
    assert TRANSFER_METRICS == EVAL_METRICS + CLASS_RATE_METRICS + TRAINING_METRICS
    keys = ["job_id", "epoch", "final", "eval_set", "student", "teacher", "method", "seed"]
    assert [c.name for c in transfer_results.columns] == keys + list(TRANSFER_METRICS)


def test_common_hyper_parameters_are_declared_and_unchanged():
    """TRANSFER_HP (part of every transfer job's id) is the keys every method reads (TrainingParams) and xekl's
    alpha, in every id since before methods declared keys of their own. Options added later (inputs,
    lr_scaling) are left out of a job's hp at their older behaviour (config.params.job_hp), so the ids of jobs
    planned before them stay (tests/unit/test_job_ids_golden.py)."""
    from dataclasses import fields

    from zoo_sweep.config.methods import TrainingParams
    from zoo_sweep.pipeline.plan import TRANSFER_HP

    assert TRANSFER_HP == ("epochs", "batch_size", "lr", "momentum", "weight_decay", "temperature", "alpha", "augment",
                           "inputs", "lr_scaling")
    assert set(TRANSFER_HP) == {f.name for f in fields(TrainingParams)} | {"alpha"}


def test_docs_list_every_declared_metric_as_declared():
    from pathlib import Path

    from zoo_sweep.storage.schema import metric_tables

    page = (Path(__file__).resolve().parents[2] / "docs" / "store.md").read_text()
    assert metric_tables() in page, "docs/store.md is stale: python -m zoo_sweep.storage.schema --write docs/store.md"
