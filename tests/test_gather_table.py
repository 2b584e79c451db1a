"""The Arrow gather (results/gather.py) against the pandas operations it replaced, and TSVs written from Arrow tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_assoc.io.atomic import write_tsv, write_tsv_table
from scalable_assoc.results.columns import PARTIAL_SCHEMA
from scalable_assoc.results.gather import (
    ENCODED_PARTIAL_SCHEMA,
    assemble_results,
    assemble_table,
    combined_codes,
    encode_labels,
    first_appearance,
    first_seen_groups,
    read_chunk,
    results_frame,
    results_table,
    significant_table,
    sorted_by_family_q,
    sorted_table_by_family_q,
)


def _partial() -> pa.Table:
    rows = {
        "layer": ["b", "a", "a", "b", "a", "a"],
        "feature": ["x", "z", "y", "y", "x", "w"],
        "exposure": ["e", "e", "f", "e", "e", "f"],
        "adjustment": ["base"] * 6,
        "model": ["lm"] * 6,
        "n": [10, 11, None, 13, 14, 15],
        "p": [0.01, np.nan, 0.2, 0.001, 0.03, 0.04],
        "beta": [1.0, np.nan, 2.0, 3.0, 4.0, 5.0],
        "status": ["ok", "constant feature", "ok", "ok", "ok", "ok"],
    }
    columns = {f.name: pa.array(rows.get(f.name, [None] * 6), type=f.type, from_pandas=True) for f in PARTIAL_SCHEMA}
    # a NaN that is not null: the frame reads it as missing, the file must have a null as from the frame
    columns["se"] = pa.array([np.nan, 1.0, 2.0, 3.0, 4.0, 5.0], type=pa.float64())
    return pa.table(columns, schema=PARTIAL_SCHEMA)


def test_combined_codes_are_equal_exactly_for_equal_combinations_and_never_overflow():
    rng = np.random.default_rng(5)
    for sizes in ([3, 100_000, 4, 2], [2**40, 2**40, 2**40, 5]):  # the second overflows int64 unless compacted
        columns = [(rng.integers(-1, min(size, 7), 5_000), size) for size in sizes]
        key = combined_codes(columns)
        tuples = pd.Series(list(zip(*(codes for codes, _ in columns), strict=True)))
        expected = tuples.factorize()[0]
        assert np.array_equal(pd.Series(key).factorize()[0], expected)  # same groups, in order of first appearance
        assert np.array_equal(first_appearance(key)[0], expected)
        order = np.lexsort([codes for codes, _ in reversed(columns)])  # the key sorts as the combinations
        assert np.all(np.diff(key[order]) >= 0)


def test_first_seen_groups_match_pandas_ngroup():
    table = pa.table({"a": ["u", "v", "u", None, "w", "v"], "b": ["1", "1", "1", "2", "2", "2"], "c": ["k"] * 6})
    frame = table.to_pandas()
    for by in (["a"], ["b", "a"], ["b"], ["c", "b"], ["missing"], []):
        columns = [c for c in by if c in frame.columns]
        expected = frame.groupby(columns, sort=False).ngroup().to_numpy() if columns else np.zeros(6, dtype=np.int64)
        np.testing.assert_array_equal(first_seen_groups(table, by), expected)


def test_results_orders_and_files_as_from_the_frame(tmp_path):
    results = assemble_results(_partial(), ["a", "b"], ["e", "f"], ["base"], {"a": ["w", "x", "y", "z"], "b": ["x", "y"]}, ["layer"])
    assert list(results["layer"] + results["feature"]) == ["ax", "az", "aw", "ay", "bx", "by"]
    assert results["q"].dtype == "Float64" and results["n"].dtype == "Int64"
    assert results["q"].isna().tolist() == [False, True, False, False, False, False]
    table = results_table(results)
    assert table["se"].null_count == 1
    from_arrow = results_table(results_frame(table))
    assert from_arrow.equals(table)
    write_tsv(tmp_path / "frame.tsv", sorted_by_family_q(results, ["layer"]))
    write_tsv_table(tmp_path / "table.tsv", sorted_table_by_family_q(table, ["layer"]), lambda: sorted_by_family_q(results, ["layer"]))
    assert (tmp_path / "table.tsv").read_bytes() == (tmp_path / "frame.tsv").read_bytes()
    significant = results[results["q"].lt(0.05).fillna(False).to_numpy(dtype=bool)].sort_values("q", kind="stable")
    assert results_frame(significant_table(table, 0.05))["feature"].tolist() == significant["feature"].tolist()


def test_tsv_table_falls_back_to_pandas_for_text_that_needs_quoting(tmp_path):
    frame = pd.DataFrame({"feature": ["tab\there", "plain"], "beta": [1.5, None]})
    write_tsv(tmp_path / "frame.tsv", frame)
    write_tsv_table(tmp_path / "table.tsv", pa.Table.from_pandas(frame, preserve_index=False), lambda: frame)
    assert (tmp_path / "table.tsv").read_bytes() == (tmp_path / "frame.tsv").read_bytes()
    assert b'"tab\there"' in (tmp_path / "table.tsv").read_bytes()


def test_chunks_read_with_encoded_labels_assemble_to_the_same_table(tmp_path):
    partial = _partial()
    orders = (["a", "b"], ["e", "f"], ["base"], {"a": ["w", "x", "y", "z"], "b": ["x", "y"]}, ["layer", "exposure"])
    # Two chunks whose label dictionaries differ (values and order), as two chunk files have them.
    halves = [partial.slice(0, 2), partial.slice(2)]
    paths = []
    for i, half in enumerate(halves):
        paths.append(tmp_path / f"c{i}.parquet")
        pq.write_table(half, paths[-1])
    encoded = pa.concat_tables([read_chunk(path, encoded_labels=True) for path in paths])
    assert encoded.schema == ENCODED_PARTIAL_SCHEMA
    assert encoded["layer"].chunks[0].dictionary.to_pylist() != encoded["layer"].chunks[1].dictionary.to_pylist()
    expected = assemble_table(partial, *orders)
    assert assemble_table(encoded, *orders).equals(expected)
    assert assemble_table(encode_labels(partial), *orders).equals(expected)
    # A file whose columns are in another order goes through the schema, encoded all the same.
    pq.write_table(partial.select(list(reversed(partial.column_names))), tmp_path / "reordered.parquet")
    reordered = read_chunk(tmp_path / "reordered.parquet", encoded_labels=True)
    assert reordered.schema == ENCODED_PARTIAL_SCHEMA
    assert reordered.drop_columns(["se"]).equals(encode_labels(partial).drop_columns(["se"]))  # se holds a NaN (never equal)
