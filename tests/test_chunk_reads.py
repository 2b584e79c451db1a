"""The fast paths of the per-chunk tasks (every feature kept, every sample used) give what the general paths give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scalable_assoc.engine.tasks import kept_columns, model_block, sum_block
from scalable_assoc.io.store import read_block, write_store_blocks
from scalable_assoc.stats.transforms import apply_transform


@pytest.fixture
def small_store(tmp_path: Path) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(5)
    values = rng.exponential(size=(30, 12)) * (rng.random((30, 12)) < 0.6)
    values[4, 7] = np.nan
    ids = [f"S{i}" for i in range(30)]
    write_store_blocks(tmp_path / "s.zarr", ids, [f"F{j}" for j in range(12)], lambda a, b: values[:, a:b], "test", "0" * 64, 6)
    return tmp_path / "s.zarr", values


@pytest.mark.parametrize("kept_all", [True, False])
@pytest.mark.parametrize("all_samples", [True, False])
def test_sums_and_clr_block_match_their_definition(small_store: tuple[Path, np.ndarray], kept_all: bool, all_samples: bool) -> None:
    path, values = small_store
    kept = np.ones(6, dtype=bool) if kept_all else np.array([True, False, True, True, False, True])
    positions = np.arange(30) if all_samples else np.array([3, 0, 4, 9, 17, 29])
    expected_raw = values[positions][:, 6:12][:, kept]
    assert np.array_equal(kept_columns(read_block(path, 6, 12, positions), kept), expected_raw, equal_nan=True)
    pseudocount = 0.01
    total, count = sum_block(path, 6, 12, positions, kept, "clr", pseudocount)
    logged = np.log(expected_raw + pseudocount)
    np.testing.assert_allclose(total, np.nansum(logged, axis=1), rtol=1e-13)
    assert np.array_equal(count, (~np.isnan(expected_raw)).sum(axis=1))
    block = model_block(path, 6, 12, positions, kept, "transformed", "clr", pseudocount, (total, count), 0.0)
    np.testing.assert_allclose(block.values, logged - (total / count)[:, None], rtol=1e-13, atol=1e-13)
    assert np.array_equal(np.isnan(block.values), np.isnan(expected_raw))
    assert np.array_equal(block.present, expected_raw > 0)


def test_clr_leaves_its_input_unchanged() -> None:
    block = np.array([[1.0, np.nan, 0.0], [2.0, 3.0, 4.0]])
    before = block.copy()
    apply_transform(block, "clr", 0.5, np.array([1.0, 2.0]), np.array([2, 3]))
    assert np.array_equal(block, before, equal_nan=True)
