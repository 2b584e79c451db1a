"""results.table_files: the TSV of an Arrow table, streamed (one thread) or in slices (several), is write_tsv's bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from scalable_assoc.io.atomic import write_tsv
from scalable_assoc.results.table_files import write_table_parquet, write_table_tsv


@pytest.mark.parametrize("threads", [None, 1, 2, 3])
def test_tsv_streamed_or_in_slices_equals_write_tsv(tmp_path: Path, threads: int) -> None:
    frame = pd.DataFrame(
        {
            "feature": pd.array(["s__A", "s__B", "PWY-1: x y", "s__D", "s__E"], dtype="str"),
            "k": np.array([2, 3, 5, 1, 4], dtype=np.int64),
            "beta": [0.1, np.nan, -1.5e-300, 1 / 3, 2.0],
            "q": [np.nan, 0.5, 1.0, 1e-12, 0.25],
        }
    )
    write_tsv(tmp_path / "pandas.tsv", frame)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    write_table_tsv(tmp_path / "arrow.tsv", table, slice_rows=2, threads=threads)  # three slices, header once
    assert (tmp_path / "arrow.tsv").read_bytes() == (tmp_path / "pandas.tsv").read_bytes()
    assert (tmp_path / "arrow.tsv").read_text().count("feature") == 1


@pytest.mark.parametrize("threads", [1, 2])
def test_text_needing_quotes_falls_back_to_pandas(tmp_path: Path, threads: int) -> None:
    frame = pd.DataFrame({"feature": pd.array(["s__A", "tab\there"], dtype="str"), "beta": [1.0, np.nan]})
    write_tsv(tmp_path / "pandas.tsv", frame)
    write_table_tsv(tmp_path / "arrow.tsv", pa.Table.from_pandas(frame, preserve_index=False), threads=threads)
    assert (tmp_path / "arrow.tsv").read_bytes() == (tmp_path / "pandas.tsv").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrow.tsv", "pandas.tsv"]  # no temporary file left


def test_parquet_keeps_values_and_schema_and_writes_floats_plain(tmp_path: Path) -> None:
    table = pa.table(
        {
            "feature": pa.array(["s__A", "s__B", "s__A"], pa.large_string()),
            "k": pa.array([2, 3, 2], pa.int64()),
            "beta": pa.array([0.5, None, 0.5], pa.float64()),
        }
    )
    write_table_parquet(tmp_path / "t.parquet", table)
    back = pq.read_table(tmp_path / "t.parquet")
    assert back.equals(table) and back.schema.equals(table.schema)
    group = pq.ParquetFile(tmp_path / "t.parquet").metadata.row_group(0)
    encodings = {group.column(i).path_in_schema: group.column(i).encodings for i in range(group.num_columns)}
    assert not any("DICTIONARY" in e for e in encodings["beta"])
    assert any("DICTIONARY" in e for e in encodings["feature"])
