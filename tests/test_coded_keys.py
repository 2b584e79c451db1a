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


def test_dictionary_column_unifies_chunk_dictionaries_as_arrow_does() -> None:
    """Chunks with their own (some repeated, some new) dictionaries: the indices and dictionary of combine_chunks."""
    import pyarrow as pa

    rng = np.random.default_rng(5)
    names = [f"s__{i}" for i in range(40)]
    chunks = []
    previous = None
    for _ in range(12):
        if previous is None or rng.random() < 0.5:  # a new dictionary, or the previous one again (a row group's batches)
            previous = pa.array([names[i] for i in rng.permutation(40)[: rng.integers(1, 30)]])
        indices = pa.array(rng.integers(0, len(previous), rng.integers(0, 20)).astype(np.int32))
        chunks.append(pa.DictionaryArray.from_arrays(indices, previous))
    table = pa.table({"feature": pa.chunked_array(chunks)})
    combined = table.column("feature").combine_chunks()
    indices, values = coded_keys.dictionary_column(table, "feature", "test")
    np.testing.assert_array_equal(indices, combined.indices.to_numpy(zero_copy_only=False))
    assert values == combined.dictionary.to_pylist()
    plain = pa.table({"feature": pa.chunked_array([pa.array(["b", "a"]), pa.array(["c", "b"])])})
    indices, values = coded_keys.dictionary_column(plain, "feature", "test")
    assert values == ["b", "a", "c"] and indices.tolist() == [0, 1, 2, 0]
