"""The fast path of the TSV/CSV readers (pyarrow, io.text_values) against pandas' reader: the same values, bit for bit, and
pandas' words for every error, also when pyarrow hands over to pandas part-way through a table."""

from __future__ import annotations

import gzip
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from scalable_assoc.errors import DataError
from scalable_assoc.io import text_values
from scalable_assoc.io.store import read_block, write_table_stream
from scalable_assoc.io.tables import stream_abundance_table

HUMANN = Path(__file__).parent / "data" / "humann" / "pathabundance_joined.tsv"

#: Cells as written: decimals, exponents, signs, pandas' NA strings and empty cells (missing), whitespace around numbers.
CELLS = ["0", "1.5", "2e-3", "1E+2", "+3", "0.1", ".5", "7.", "NA", "", "nan", "N/A", " 4 ", "1e-320", "9007199254740993"]


def test_na_strings_are_pandas_defaults() -> None:
    """The cells the fast path reads as missing are exactly those pandas reads as missing."""
    from pandas._libs.parsers import STR_NA_VALUES

    assert set(text_values.PANDAS_NA_STRINGS) == set(STR_NA_VALUES)


def _metaphlan(path: Path, rows: int, samples: int, rng: np.random.Generator, line_end: str = "\n") -> Path:
    header = "clade_name\t" + "\t".join(f"S{j}" for j in range(samples))
    lines = ["#mpa_vJan21", header]
    for i in range(rows):
        clade = f"k__B|s__Sp{i}" if i % 3 else f"k__B|g__G{i}"
        lines.append(clade + "\t" + "\t".join(rng.choice(CELLS, samples)))
    path.write_text(line_end.join(lines) + line_end)
    return path


def _wide(path: Path, samples: int, features: int, rng: np.random.Generator, separator: str = "\t") -> Path:
    lines = [separator.join(["sample_id", *(f"F{j}" for j in range(features))])]
    lines += [separator.join([f"S{i}", *rng.choice(CELLS, features)]) for i in range(samples)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _both(path: Path, tmp_path: Path, monkeypatch, caplog, **options) -> tuple[np.ndarray, np.ndarray]:
    """The values of ``path`` read by the fast path (never handing over) and by pandas alone."""
    out = []
    for fast in (True, False):
        monkeypatch.setattr(text_values, "FAST_PATH", fast)
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io"):
            stream = stream_abundance_table(path, scratch=tmp_path, **options)
            store = write_table_stream(tmp_path / f"{path.name}-{fast}.zarr", stream, "x", chunk_features=3)
        handed_over = [r.getMessage() for r in caplog.records if "by pandas" in r.getMessage()]
        assert bool(handed_over) != fast, handed_over  # the fast path read everything; pandas, with it off
        out.append(read_block(store.path, 0, store.n_features))
    return out[0], out[1]


@pytest.mark.parametrize("block", [300, 1 << 20])  # many text blocks (a few lines each), or one
def test_fast_path_values_are_pandas_values_bit_for_bit(tmp_path, monkeypatch, caplog, block) -> None:
    """MetaPhlAn (also with CRLF ends and gzip), wide TSV and CSV, HUMAnN: identical stores with and without the fast path."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", block)
    rng = np.random.default_rng(5)
    tables = [
        _metaphlan(tmp_path / "mpa.tsv", 40, 9, rng),
        _metaphlan(tmp_path / "crlf.tsv", 40, 9, rng, line_end="\r\n"),
        _wide(tmp_path / "wide.tsv", 50, 7, rng),
        _wide(tmp_path / "wide.csv", 50, 7, rng, separator=","),
    ]
    gz = tmp_path / "mpa_gz.tsv.gz"
    gz.write_bytes(gzip.compress(tables[0].read_bytes()))
    for table in [*tables, gz]:
        fast, pandas = _both(table, tmp_path, monkeypatch, caplog)
        np.testing.assert_array_equal(fast.view(np.int64), pandas.view(np.int64))
        assert np.isnan(fast).any()
    fast, pandas = _both(HUMANN, tmp_path, monkeypatch, caplog)
    np.testing.assert_array_equal(fast.view(np.int64), pandas.view(np.int64))


@pytest.mark.parametrize("bad", ["abc", "-1", "inf", "NAN", '"2"'])
def test_a_bad_cell_late_in_the_table_is_named_in_pandas_words(tmp_path, monkeypatch, bad) -> None:
    """pyarrow hands over at the block holding the cell; the message is the one pandas alone gives."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 300)
    rng = np.random.default_rng(6)
    mpa = _metaphlan(tmp_path / "mpa.tsv", 40, 9, rng)
    lines = mpa.read_text().splitlines()
    lines[-2] = lines[-2].rsplit("\t", 1)[0] + "\t" + bad  # a species row (the last row is a genus row)
    mpa.write_text("\n".join(lines) + "\n")
    wide = _wide(tmp_path / "wide.tsv", 60, 7, rng)
    lines = wide.read_text().splitlines()
    lines[-3] = lines[-3].rsplit("\t", 1)[0] + "\t" + bad
    wide.write_text("\n".join(lines) + "\n")
    for table in (mpa, wide):
        fast, pandas = (_outcome(table, tmp_path, monkeypatch, on) for on in (True, False))
        if isinstance(pandas, str):
            assert fast == pandas and not (tmp_path / "out.zarr").exists()
        else:  # a quoted number is a number to pandas
            assert bad == '"2"'
            np.testing.assert_array_equal(fast, pandas)


@pytest.mark.parametrize("block", [300, 1 << 20])
def test_rows_of_other_ranks_are_left_unparsed(tmp_path, monkeypatch, caplog, block) -> None:
    """Cells of genus rows that the fast path would hand over to pandas for (text, negative, NaN written as a number,
    -0) do not stop it when species are read: it parses only the rows kept, as pandas checks only those. The values
    are pandas' alone, bit for bit."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", block)
    mpa = _metaphlan(tmp_path / "mpa.tsv", 40, 9, np.random.default_rng(9))
    lines = mpa.read_text().splitlines()
    for row, bad in zip((0, 9, 21, 30, 39), ("abc", "-1", "NAN", "-0", "1e400"), strict=True):  # rows i % 3 == 0: genera
        assert "|g__" in lines[row + 2]
        lines[row + 2] = lines[row + 2].rsplit("\t", 1)[0] + "\t" + bad
    mpa.write_text("\n".join(lines) + "\n")
    fast, pandas = _both(mpa, tmp_path, monkeypatch, caplog)
    np.testing.assert_array_equal(fast.view(np.int64), pandas.view(np.int64))


def test_blank_lines_of_a_crlf_table_are_not_rows(tmp_path, monkeypatch, caplog) -> None:
    """Rows are counted per block of text to select the kept ones: a blank line (a lone carriage return with CRLF
    line ends) at a block's start, middle or end is no row, as pandas skips it; the values are pandas' alone."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 300)
    mpa = _metaphlan(tmp_path / "crlf.tsv", 40, 9, np.random.default_rng(10), line_end="\r\n")
    lines = mpa.read_bytes().split(b"\r\n")
    for at in (30, 21, 12, 5, 3):
        lines[at:at] = [b"", b""] if at % 2 else [b""]
    mpa.write_bytes(b"\r\n".join(lines))
    fast, pandas = _both(mpa, tmp_path, monkeypatch, caplog)
    np.testing.assert_array_equal(fast.view(np.int64), pandas.view(np.int64))


def _outcome(table: Path, tmp_path: Path, monkeypatch, fast: bool) -> str | np.ndarray:
    """The store's values (as int64 bits), or the error's message."""
    monkeypatch.setattr(text_values, "FAST_PATH", fast)
    shutil.rmtree(tmp_path / "out.zarr", ignore_errors=True)
    try:
        store = write_table_stream(tmp_path / "out.zarr", stream_abundance_table(table, scratch=tmp_path), "x", chunk_features=3)
    except DataError as error:
        return str(error)
    return read_block(store.path, 0, store.n_features).view(np.int64)


@pytest.mark.parametrize("cell", ["-0", "123456789012345678901", "NAN", "1e400"])
def test_cells_pandas_reads_its_own_way_go_to_pandas(tmp_path, monkeypatch, cell) -> None:
    """'-0' in a column of whole numbers is +0.0 for pandas, a 21-digit number makes a column of text: the same as pandas alone."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 300)
    table = tmp_path / "t.tsv"
    rows = [f"S{i}\t{i}\t{cell if i == 30 else i + 1}\t{'' if i == 31 else 2}" for i in range(40)]
    table.write_text("sample_id\tF1\tF2\tF3\n" + "\n".join(rows) + "\n")
    fast, pandas = (_outcome(table, tmp_path, monkeypatch, on) for on in (True, False))
    if isinstance(pandas, str):
        assert fast == pandas
    else:
        np.testing.assert_array_equal(fast, pandas)


def test_quoted_and_missing_ids_go_to_pandas(tmp_path, monkeypatch) -> None:
    """A quoted sample ID (unquoted by pandas) and an NA clade (refused by pandas): as pandas alone reads them."""
    wide = tmp_path / "quoted.tsv"
    wide.write_text('sample_id\tF1\tF2\n"S1"\t1\t2\nS2\t3\t4\n')
    stream = stream_abundance_table(wide, scratch=tmp_path)
    assert stream.sample_ids == ("S1", "S2")
    np.testing.assert_array_equal(np.hstack(list(stream.blocks(2))), [[1, 2], [3, 4]])
    mpa = tmp_path / "na.tsv"
    pd.DataFrame({"clade_name": ["k__B|s__A", "NA"], "S1": [1.0, 2.0], "S2": [3.0, 4.0]}).to_csv(mpa, sep="\t", index=False)
    fast, pandas = (_outcome(mpa, tmp_path, monkeypatch, on) for on in (True, False))
    assert isinstance(pandas, str) and fast == pandas


@pytest.mark.parametrize("change", ["short", "long", "blank_lines", "every_row_long"])
def test_metaphlan_row_lengths_checked_in_the_clade_pass(tmp_path, monkeypatch, change) -> None:
    """Field counts taken with the clades (one pass) give what the separate line check gave: its message naming the
    line, or the values pandas alone reads (blank lines are skipped). Every row one field longer than the header is
    refused as pandas refuses it, not read shifted by one sample."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 300)
    mpa = _metaphlan(tmp_path / "mpa.tsv", 40, 9, np.random.default_rng(8))
    lines = mpa.read_text().splitlines()
    if change == "short":
        lines[30] = lines[30].rsplit("\t", 1)[0]
    elif change == "long":
        lines[25] += "\t0.5"
    elif change == "every_row_long":
        lines = [line if line.startswith(("#", "clade_name")) else line + "\t0.5" for line in lines]
    else:
        lines[20:20] = ["", ""]
    mpa.write_text("\n".join(lines) + "\n")
    fast, pandas = (_outcome(mpa, tmp_path, monkeypatch, on) for on in (True, False))
    if change in ("short", "long"):
        assert isinstance(pandas, str) and f"line {31 if change == 'short' else 26} (clade row) has" in pandas
        assert fast == pandas
    elif change == "every_row_long":
        assert isinstance(pandas, str) and "not a well-formed table" in pandas
        assert fast == pandas
    else:
        np.testing.assert_array_equal(fast, pandas)


def test_humann_rows_one_field_longer_than_the_header_are_refused_as_pandas_refuses_them(tmp_path, monkeypatch) -> None:
    """Not read with every value one sample to the left (the fast path did, while pandas refuses the table)."""
    header, *rows = HUMANN.read_text().splitlines()
    table = tmp_path / "humann_long_rows.tsv"
    table.write_text("\n".join([header, *(row + "\t1.5" for row in rows)]) + "\n")
    fast, pandas = (_outcome(table, tmp_path, monkeypatch, on) for on in (True, False))
    assert isinstance(pandas, str) and "not a well-formed table" in pandas
    assert fast == pandas


def test_in_order_keeps_the_order_and_raises_an_error_in_its_turn() -> None:
    """Items finishing out of order come back in order; an error comes after every item before it; stopping early
    leaves the items not yet drawn undrawn."""
    import time

    def work(item: int) -> int:
        time.sleep(0.002 * (item % 3 == 0))  # every third item finishes after the next
        if item == 7:
            raise ValueError("item 7")
        return item * 10

    got: list[int] = []
    with pytest.raises(ValueError, match="item 7"):
        for value in text_values.in_order(iter(range(20)), work, 3):
            got.append(value)
    assert got == [0, 10, 20, 30, 40, 50, 60]
    drawn: list[int] = []

    def items():
        for item in range(100):
            drawn.append(item)
            yield item

    results = text_values.in_order(items(), lambda item: item, 2)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    results.close()
    assert len(drawn) <= 3 + 2  # the items yielded and at most the threads' share ahead


def test_values_are_parsed_in_the_c_library_heap(tmp_path) -> None:
    """Not in pyarrow's default pool (mimalloc), which kept more of the freed memory: the cast's output is the system
    pool's while a few rows are cast, and the values held are NumPy's copies (the C library's heap too)."""
    table = tmp_path / "wide.tsv"
    rows = [f"S{i}\t" + "\t".join(f"{i}.{j}" for j in range(30)) for i in range(2000)]
    table.write_text("sample_id\t" + "\t".join(f"F{j}" for j in range(30)) + "\n" + "\n".join(rows) + "\n")
    layout = text_values.TextTable(table, "\t", 1, 31)
    default_before = pa.default_memory_pool().bytes_allocated()
    held = [values for _, values in text_values.row_values(layout, 1)]
    assert sum(values.nbytes for values in held) == 2000 * 30 * 8
    assert all(values.flags.owndata and values.flags.c_contiguous for values in held)
    assert pa.default_memory_pool().bytes_allocated() == default_before
    assert pa.system_memory_pool().max_memory() >= 8 * 2 * 31 * (text_values.CAST_SLOTS // (2 * 31))  # the rows cast at once


#: Cells the cast reads (or leaves to the CSV reader): every form of number either reader might take, and near misses.
CAST_CELLS = [
    *CELLS,
    *("0.0011405", "1e-05", "1E-5", "5e+00", "0001.5", "1.7976931348623157e308", "2.2250738585072014e-308", "4.9e-324"),
    *("0x10", "1_000", "1,5", "1.5.2", "e5", "1e", "-", "+", ".", "+.5", "-1", "-0", "-0.0", "inf", "+inf", "Infinity", "NAN"),
    *("nan(1)", "NaN", "-nan", "1.#IND", "#N/A", "null", "None", "<NA>", "\u0661", "1\u00a0", "\t", " ", "1 ", " 1"),
]


def _cast_cells(cells: list[str]) -> np.ndarray | None:
    """The cells of one line ``ID<tab>cells...`` read by the cast (None where it leaves the block to the CSV reader)."""
    layout = text_values.TextTable(Path("t.tsv"), "\t", 1, len(cells) + 1)
    text = ("ID\t" + "\t".join(cells) + "\n").encode()
    try:
        read = text_values._cast_block(text, layout, 1, None, 0, False)
    except text_values.Declined:
        return np.array([])  # refused outright (a negative value): compared with the CSV path's refusal below
    return None if read is None else read[2].ravel()


def _csv_cells(cells: list[str]) -> np.ndarray | None:
    """The same cells read by the one-column CSV reader and its checks (None where it declines them)."""
    try:
        values, missing = text_values._one_column(("\n".join(cells) + "\n").encode(), "\t")
        return text_values._checked(values, missing, Path("t.tsv"))
    except (pa.ArrowInvalid, text_values.Declined):
        return None


def test_the_cast_reads_a_cell_as_the_csv_reader_does_or_leaves_it_to_it() -> None:
    """Each cell the cast reads is the CSV reader's number, bit for bit; a cell it does not take (NA strings, blanks,
    text, NaN) leaves its block to the CSV reader, and a cell it refuses (negative, infinite) the CSV reader refuses
    too. Also random strings of the characters numbers are written with."""
    rng = np.random.default_rng(11)
    alphabet = list("0123456789.eE+-nNaAiIfF ")
    fuzz = ["".join(rng.choice(alphabet, rng.integers(1, 9))) for _ in range(3000)]
    # Numbers at every precision (the last digit decides the rounding), as R, Python and printf write them.
    drawn = np.exp(rng.uniform(-700, 700, 2000)) * rng.integers(0, 2, 2000)
    fuzz += [f"{x:{form}}" for x in drawn.tolist() for form in ("", ".17g", ".6g", ".25e", ".30f")][:8000]
    read = 0
    for cell in [*CAST_CELLS, *fuzz]:
        cast, csv = _cast_cells([cell]), _csv_cells([cell])
        if cast is None:
            continue
        if cast.size == 0:
            assert csv is None, cell
            continue
        read += 1
        assert csv is not None, cell
        np.testing.assert_array_equal(cast.view(np.int64), csv.view(np.int64), err_msg=cell)
    assert read > 5000  # the cast read most numbers itself (past 2**63 both refuse)
    assert _cast_cells(["1.5", "0", "2e-3"]) is not None
    for other in ("NA", "nan", " 4 ", "abc"):
        assert _cast_cells(["1.5", other]) is None
    # An empty cell is missing to both: NaN (here at the start, middle and end of a line).
    for cells in (["", "1.5"], ["1.5", "", "2"], ["1.5", ""], ["", ""]):
        cast, csv = _cast_cells(cells), _csv_cells(cells)
        assert cast is not None and csv is not None
        np.testing.assert_array_equal(cast.view(np.int64), csv.view(np.int64), err_msg=str(cells))


#: Cells of tables the cast reads whole: without missing cells, and with empty ones (the usual missing value).
WHOLE_CAST_CELLS = {
    "without missing cells": ["0", "1.5", "2e-3", "1E+2", "+3", "0.1", ".5", "7.", "1e-320", "9007199254740993", "0.0011405"],
    "with empty cells": ["0", "1.5", "2e-3", "0.1", "", "", "1e-320"],
}


@pytest.mark.parametrize("cells", sorted(WHOLE_CAST_CELLS))
@pytest.mark.parametrize("block", [300, 1 << 20])
def test_tables_the_cast_reads_whole_are_read_as_pandas_reads_them(tmp_path, monkeypatch, caplog, block, cells) -> None:
    """MetaPhlAn (rows of other ranks left out), wide TSV and CSV, without missing cells or with empty ones (NaN):
    every block read by the cast, none by the one-column CSV reader, and the stores pandas makes, bit for bit."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", block)
    monkeypatch.setattr(sys.modules[__name__], "CELLS", WHOLE_CAST_CELLS[cells])
    rng = np.random.default_rng(12)
    csv_blocks = []
    original = text_values._one_column
    monkeypatch.setattr(text_values, "_one_column", lambda *args: csv_blocks.append(1) or original(*args))
    for table in (
        _metaphlan(tmp_path / "mpa.tsv", 40, 9, rng),
        _wide(tmp_path / "w.tsv", 50, 7, rng),
        _wide(tmp_path / "w.csv", 50, 7, rng, ","),
    ):
        fast, pandas = _both(table, tmp_path, monkeypatch, caplog)
        assert np.isnan(fast).any() == (cells == "with empty cells")
        np.testing.assert_array_equal(fast.view(np.int64), pandas.view(np.int64))
    assert not csv_blocks


def _ids_line_by_line(text: bytes, layout: text_values.TextTable) -> tuple[list[str], bool]:
    """The first pass as it was: every data line split off (``_data_lines``), its ID cut and its separators counted."""
    sep = layout.separator.encode()
    lines = text_values._data_lines(text, layout.path)
    ids = [(line if sep not in line else line[: line.find(sep)]).decode("utf-8") for line in lines]
    return ids, all(line.count(sep) + 1 == layout.n_fields for line in lines)


@pytest.mark.parametrize("long_line_bytes", [0, text_values.LONG_LINE_BYTES], ids=["counted line by line", "counted per block"])
def test_the_first_pass_finds_the_ids_and_widths_of_splitting_line_by_line(monkeypatch, long_line_bytes) -> None:
    """``_block_ids`` finds the lines where they are: the same IDs, width verdict and declined blocks as splitting them,
    whether it counts the separators of each line on its own (long lines) or of the whole block at once (short ones)."""
    monkeypatch.setattr(text_values, "LONG_LINE_BYTES", long_line_bytes)
    rng = np.random.default_rng(5)
    pieces = ["a", "s__x", "é", " ", "\t", "1", "0.5", "", "\r", "NA"]
    layout = text_values.TextTable(Path("t.tsv"), "\t", 1, 3)
    compared = declined = 0
    for _ in range(4000):
        lines = []
        for _ in range(rng.integers(1, 6)):
            fields = ["".join(rng.choice(pieces, rng.integers(0, 3))) for _ in range(rng.choice([1, 2, 3, 3, 3, 4]))]
            lines.append("\t".join(fields) + ("\r\n" if rng.random() < 0.2 else "\n"))
        text = "".join(lines).replace("\r\t", "\t").replace("\r\r", "\r")
        if rng.random() < 0.3:
            text = text.removesuffix("\n")
        try:
            data = text_values._check_text(text.encode(), layout.path)
        except text_values.Declined:
            continue
        try:
            expected = _ids_line_by_line(data, layout)
        except text_values.Declined:
            with pytest.raises(text_values.Declined):
                text_values._block_ids(data, layout, [], True)
            declined += 1
            continue
        ids: list[str] = []
        assert (ids, text_values._block_ids(data, layout, ids, True)) == expected, data
        compared += 1
    assert compared > 1000 and declined > 100


@pytest.mark.parametrize("slots", [1, 70, 1 << 16])
def test_rows_cast_a_few_at_a_time_give_the_values_of_the_block_at_once(monkeypatch, slots) -> None:
    """However many rows are cast at once (one; a few, rows left out among them; the whole block), the same values."""
    rng = np.random.default_rng(3)
    n_rows, n_fields = 23, 9
    drawn = rng.exponential(size=(n_rows, n_fields - 2)) * (rng.random((n_rows, n_fields - 2)) < 0.5)
    cells = np.array([[float(f"{x:g}") for x in row] for row in drawn])
    text = "".join(f"R{i}\t{i}\t" + "\t".join(f"{x:g}" for x in row) + "\n" for i, row in enumerate(cells)).encode()
    layout = text_values.TextTable(Path("t.tsv"), "\t", 1, n_fields)
    keep = rng.random(n_rows) < 0.6
    monkeypatch.setattr(text_values, "CAST_SLOTS", slots)
    rows, ids, values = text_values._cast_block(text, layout, 2, keep, 0, True)
    assert rows == n_rows and ids == [f"R{i}" for i in np.flatnonzero(keep)]
    np.testing.assert_array_equal(values, cells[keep])
    assert values.flags.c_contiguous


WIDE_VARIANTS = {
    "plain": "sample_id\tF1\tF2\nS1\t1\t2\nS2\t3\t4\n",
    "crlf_and_blank_lines": "sample_id\tF1\tF2\r\nS1\t1\t2\r\n\r\n\nS2\t3\t4\r\n",
    "no_final_newline": "sample_id\tF1\tF2\nS1\t1\t2\nS2\t3\t4",
    "byte_order_mark": "\ufeffsample_id\tF1\tF2\nS1\t1\t2\nS2\t3\t4\n",
    "short_line": "sample_id\tF1\tF2\nS1\t1\t2\nS2\t3\n",
    "r_header": "F1\tF2\nS1\t1\t2\nS2\t3\t4\n",
    "trailing_separators": "sample_id\tF1\tF2\nS1\t1\t2\t\nS2\t3\t4\t\n",
    "na_id": "sample_id\tF1\tF2\nS1\t1\t2\nNA\t3\t4\n",
    "quoted_id": 'sample_id\tF1\tF2\n"S1"\t1\t2\nS2\t3\t4\n',
    "blank_line_of_spaces": "sample_id\tF1\tF2\nS1\t1\t2\n  \nS2\t3\t4\n",
    "numbers_as_ids": "sample_id\tF1\tF2\n0.5\t1\t2\n0.5\t3\t4\n",
    "header_only": "sample_id\tF1\tF2\n",
    "one_column": "sample_id\nS1\nS2\n",
}


def _wide_layout_outcome(path: Path) -> object:
    from scalable_assoc.io.wide import _wide_layout

    try:
        return _wide_layout(path)
    except DataError as error:
        return str(error)


@pytest.mark.parametrize("variant", sorted(WIDE_VARIANTS))
def test_wide_sample_ids_from_the_text_pass_are_those_of_the_line_by_line_pass(tmp_path, monkeypatch, variant) -> None:
    """The wide reader's first pass over the text (NumPy) gives the sample IDs and feature names, or the error, of the
    line-by-line pass it replaces, and is used for plain tables (not only declined to the line-by-line pass)."""
    from scalable_assoc.io import wide

    table = tmp_path / "wide.tsv"
    table.write_bytes(WIDE_VARIANTS[variant].encode("utf-8"))
    used = []
    checked = wide._checked_first_fields
    monkeypatch.setattr(wide, "_checked_first_fields", lambda *args: used.append(checked(*args)) or used[-1])
    fast = _wide_layout_outcome(table)
    monkeypatch.setattr(wide, "_checked_first_fields", lambda *args: None)
    assert fast == _wide_layout_outcome(table)
    if variant in ("plain", "crlf_and_blank_lines", "no_final_newline", "byte_order_mark"):
        assert used == [["S1", "S2"]]


def test_the_second_read_takes_the_row_counts_of_the_first_pass(tmp_path, monkeypatch) -> None:
    """A MetaPhlAn table's values are read with the first pass's row count of each block of text (its lines are not
    counted again), to the same bits as pandas; a block whose length is not the first pass's is counted."""
    monkeypatch.setattr(text_values, "TEXT_BLOCK_BYTES", 300)
    table = _metaphlan(tmp_path / "mpa.tsv", 60, 7, np.random.default_rng(3), line_end="\r\n")
    with table.open("ab") as handle:
        handle.write(b"\r\n\n")  # empty lines at the end: no rows
    pandas = _outcome(table, tmp_path, monkeypatch, False)
    counted = []
    count = text_values._count_data_lines
    monkeypatch.setattr(text_values, "_count_data_lines", lambda text: counted.append(text) or count(text))
    np.testing.assert_array_equal(_outcome(table, tmp_path, monkeypatch, True), pandas)
    assert not counted
    blocks = [b"a\t1\n\r\nb\t2\n", b"c\t3\r\n", b"\n"]
    known = [(len(blocks[0]), 2), (len(blocks[1]) + 1, 5), (1, 0)]  # the second block's length is not the first pass's
    assert [offset for offset, _ in text_values._numbered(iter(blocks), known)] == [0, 2, 3]
    assert len(counted) == 1
