"""What fit tasks derive from a held model block is derived once per worker, travels without it, and counts as before."""

from __future__ import annotations

import pickle
from types import SimpleNamespace
from typing import cast

import numpy as np

from scalable_assoc.engine.blocks import PRESENCE_SLAB_ROWS, ModelBlock
from scalable_assoc.engine.prepare import PreparedAnalysis
from scalable_assoc.engine.tasks import design_carriers
from scalable_assoc.models.ols import prepare_block


def _block(rng: np.random.Generator) -> ModelBlock:
    values = rng.normal(size=(40, 7))
    values[rng.random(values.shape) < 0.1] = np.nan
    return ModelBlock(values, rng.random(values.shape) < 0.6)


def test_prepared_block_is_made_once_and_left_behind_when_moved() -> None:
    block = _block(np.random.default_rng(3))
    prepared = block.prepared()
    assert block.prepared() is prepared
    expected = prepare_block(block.values)
    assert np.array_equal(prepared.values, expected.values) and np.array_equal(prepared.missing, expected.missing)
    moved = pickle.loads(pickle.dumps(block))  # as a transfer to another worker
    assert "_prepared" not in vars(moved)
    assert np.array_equal(moved.values, block.values, equal_nan=True) and np.array_equal(moved.present, block.present)


def test_carrier_counts_are_those_of_the_rows() -> None:
    rng = np.random.default_rng(4)
    block = _block(rng)
    rows = [np.array([0, 3, 3, 5, 9, 12, 39]), np.arange(10, 30)]  # a repeated row counts twice, as indexing does
    groups = [
        [
            SimpleNamespace(binary=True, exposure=np.array([1, 0, 1, 1, 0, 0, 1.0])),
            SimpleNamespace(binary=False, exposure=rng.normal(size=7)),
        ],
        [SimpleNamespace(binary=True, exposure=(rng.random(20) < 0.5).astype(float))],
    ]
    found = design_carriers(block, rows, cast(list[list[PreparedAnalysis]], groups))
    for design_rows, group, (n_present, n_cases) in zip(rows, groups, found, strict=True):
        present = block.present[design_rows]
        assert np.array_equal(n_present, np.count_nonzero(present, axis=0))
        for analysis, counted in zip(group, n_cases, strict=True):
            expected = np.count_nonzero(present[analysis.exposure == 1], axis=0) if analysis.binary else np.full(7, -1)
            assert np.array_equal(counted, expected)
            assert counted.dtype == np.int64


def test_present_counts_are_exact_over_slabs_of_rows_and_for_large_weights() -> None:
    rng = np.random.default_rng(5)
    n = 2 * PRESENCE_SLAB_ROWS + 300  # a partial last slab
    block = ModelBlock(np.zeros((n, 9)), rng.random((n, 9)) < 0.4)
    weights = rng.integers(0, 4, size=(5, n))
    assert np.array_equal(block.present_counts(weights), weights @ block.present.astype(np.int64))
    # Row sums beyond float32's whole numbers (2**24): counted in float64, still exact.
    large = rng.integers(0, 2**22, size=(2, n))
    assert float(large.sum(axis=1).max()) >= 2**24
    assert np.array_equal(block.present_counts(large), large @ block.present.astype(np.int64))
    assert block.present_counts(np.zeros((0, n), dtype=np.int64)).shape == (0, 9)
