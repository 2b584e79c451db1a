"""Lining up cohorts' rows on integer key codes, and TSV written from Arrow tables in slices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.results import coded_keys
from scalable_assoc.results.coded_keys import composite, decompose, duplicated_rows, line_up


def _expected(per_cohort: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """What drop_duplicates and get_indexer gave: keys in order of first appearance over the cohorts."""
    keys = pd.unique(np.concatenate(per_cohort))
    index = pd.Index(keys)
    return np.asarray(keys), [index.get_indexer(k) for k in per_cohort]


@pytest.mark.parametrize("dense", [True, False])
def test_line_up_keeps_the_order_of_first_appearance(dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not dense:  # the hashed path, used for key spaces much larger than the rows
        monkeypatch.setattr(coded_keys, "_DENSE_FACTOR", -(10**9))
    rng = np.random.default_rng(3)
    space = 5_000
    per_cohort = [rng.permutation(space)[: rng.integers(100, 3_000)] for _ in range(4)]
    keys, rows = line_up(per_cohort, space)
    want_keys, want_rows = _expected(per_cohort)
    np.testing.assert_array_equal(keys, want_keys)
    for got, want in zip(rows, want_rows, strict=True):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dense", [True, False])
def test_duplicated_rows_finds_every_copy(dense: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not dense:
        monkeypatch.setattr(coded_keys, "_DENSE_FACTOR", -(10**9))
    keys = np.array([7, 3, 9, 3, 1, 7, 7])
    np.testing.assert_array_equal(duplicated_rows(keys, 10), [0, 1, 3, 5, 6])
    assert duplicated_rows(np.array([4, 2, 8]), 10).size == 0


def test_composite_keys_decompose() -> None:
    codes = {"a": np.array([0, 2, 1]), "b": np.array([4, 0, 3])}
    key = composite(codes, ["a", "b"], [3, 5])
    np.testing.assert_array_equal(key, [4, 10, 8])
    a, b = decompose(key, [3, 5])
    np.testing.assert_array_equal(a, codes["a"])
    np.testing.assert_array_equal(b, codes["b"])
