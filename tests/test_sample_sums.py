"""Per-sample sums stored at ingest (stats.sample_sums, io.store) equal the pass over the blocks (stats.transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from scalable_assoc.io.store import SAMPLE_SUMS_KEY, write_store_blocks
from scalable_assoc.stats.sample_sums import block_sums, kept_sums, removed_cell_sums
from scalable_assoc.stats.transforms import feature_summary, half_min_pseudocount, nonzero_values, prevalence, sample_summaries


def _table(seed: int = 1, n: int = 40, m: int = 23) -> np.ndarray:
    """Continuous values, zeros (feature prevalences from 3% to 100%) and missing cells."""
    rng = np.random.default_rng(seed)
    values = np.exp(rng.normal(0.0, 2.0, (n, m)))
    values[rng.random((n, m)) >= np.linspace(0.03, 1.0, m)] = 0.0
    values[rng.random((n, m)) < 0.05] = np.nan
    return values


def _store(tmp_path, values: np.ndarray, chunk: int = 3):
    n, m = values.shape
    return write_store_blocks(
        tmp_path / "s.zarr", [f"S{i}" for i in range(n)], [f"F{j}" for j in range(m)], lambda a, b: values[:, a:b], "t", "x", chunk
    )


def _composed(store, kept: np.ndarray, which: str, pseudocount: float | None):
    sums, _ = store.stored_sample_sums()
    parts = np.zeros((6, store.n_samples))
    for samples, values in store.rare_cells(~kept):
        parts += removed_cell_sums(samples, values, store.n_samples, pseudocount)
    return kept_sums(sums, parts, int((~kept).sum()), which, pseudocount)


@pytest.mark.parametrize("min_prevalence", [0.0, 0.2])
def test_stored_sums_equal_the_pass(tmp_path, min_prevalence):
    """CLR (half-min over all), TSS/AST and the non-zero view, with a filter removing features across chunks."""
    values = _table()
    store = _store(tmp_path, values)
    kept = prevalence(feature_summary(values)) >= min_prevalence
    assert (~kept).sum() == (0 if min_prevalence == 0 else 5)  # chunks of 3: two chunks lose features
    pc = half_min_pseudocount(feature_summary(values).min_positive)
    sums, cap = store.stored_sample_sums()
    assert sums.pseudocount == pc and cap == 0.25
    for which, block, pseudocount in (
        ("clr", values[:, kept], pc),
        ("tss", values[:, kept], None),
        ("nonzero", nonzero_values(values[:, kept], 0.0), None),
    ):
        expected = sample_summaries(block, "clr" if which != "tss" else "tss", pseudocount or 0.0)
        got = _composed(store, kept, which, pseudocount)
        np.testing.assert_array_equal(got[1], expected[1])
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-12, atol=0)


def test_pseudocount_summed_again_and_checked(tmp_path):
    """The smallest value in the last chunk: earlier chunks are summed again; another pseudocount is refused."""
    values = _table(seed=2)
    values[3, -1] = 1e-9
    store = _store(tmp_path, values)
    sums, _ = store.stored_sample_sums()
    assert zarr.open_group(store.path, mode="r").attrs[SAMPLE_SUMS_KEY]["blocks_summed_again"] == 7  # all chunks but the last
    np.testing.assert_allclose(sums.log_pseudo, sample_summaries(values, "clr", 5e-10)[0], rtol=1e-12)
    with pytest.raises(ValueError, match="pseudocount"):
        _composed(store, np.ones(values.shape[1], dtype=bool), "clr", 1e-3)


def test_filter_phase_uses_stored_sums_only_when_exact(tmp_path, caplog):
    """engine.filters: stored sums when they apply (equal to the pass), else None and the reason logged."""
    from types import SimpleNamespace

    from scalable_assoc.engine.filters import LayerFilter, _stored_sums
    from scalable_assoc.stats.transforms import select_features

    values = _table(seed=3)
    store = _store(tmp_path, values)
    summaries = [store.stored_feature_summary(a, b) for a, b in store.block_bounds()]

    def layer(pseudocount="half_min", positions=None, threshold=0.0, after=False, min_prevalence=0.2):
        preprocess = SimpleNamespace(transform="clr", transform_all_features=after, clr_reference=None)
        spec = SimpleNamespace(name="x", preprocess=preprocess, presence_threshold=threshold, models=["lm", "lm_nonzero"])
        work = SimpleNamespace(
            spec=spec, store=store, listed=None, sample_positions=np.arange(store.n_samples) if positions is None else positions
        )
        kept, pc = select_features(summaries, min_prevalence, pseudocount, pseudocount_over_all=after)
        nonzero = np.concatenate([s.nonzero for s in summaries])
        observed = np.concatenate([s.observed for s in summaries])
        return work, LayerFilter(kept, pc, store.n_features, 0, nonzero=nonzero, observed=observed)

    views = {"transformed", "nonzero"}
    work, f = layer()
    kept = np.concatenate(f.kept)
    assert 0 < (~kept).sum() and f.pseudocount == store.stored_sample_sums()[0].pseudocount
    got = _stored_sums(work, f, views)
    expected = sample_summaries(values[:, kept], "clr", f.pseudocount)
    np.testing.assert_allclose(got["sample_totals"][0], expected[0], rtol=1e-12)
    np.testing.assert_array_equal(got["nonzero_totals"][1], (values[:, kept] > 0).sum(axis=1))
    for why, args in (
        ("pseudocount", {"pseudocount": 1e-3}),
        ("some of the store's samples", {"positions": np.arange(store.n_samples - 1)}),
        ("presence threshold", {"threshold": 0.5}),
        ("no sparse copy", {"min_prevalence": 0.5}),
    ):
        work, f = layer(**args)
        with caplog.at_level("INFO"):
            assert _stored_sums(work, f, views) is None
        assert why in caplog.text


def test_store_summed_a_slab_at_a_time_is_bit_identical(tmp_path, monkeypatch):
    """Slabs of a few rows (features, for the sparse copy) give every stored array the bits of whole-block sums."""
    import scalable_assoc.stats.sample_sums as sample_sums

    values = _table(seed=3, n=41, m=17)

    def arrays(name: str) -> dict[str, bytes]:
        store = write_store_blocks(
            tmp_path / name, [f"S{i}" for i in range(41)], [f"F{j}" for j in range(17)], lambda a, b: values[:, a:b], "t", "x", 5
        )
        group = zarr.open_group(store.path, mode="r")
        return {key: np.asarray(array[...]).tobytes() for key, array in group.arrays()}

    whole = arrays("whole.zarr")
    monkeypatch.setattr(sample_sums, "SLAB_CELLS", 7)  # 1 row of a 5-feature block; 1 feature of 41 samples
    slabs = arrays("slabs.zarr")
    assert sorted(whole) == sorted(slabs) and len(whole) > 8
    assert all(whole[key] == slabs[key] for key in whole), [key for key in whole if whole[key] != slabs[key]]


def test_blocks_read_back_in_threads_give_the_bits_of_one_thread(tmp_path, monkeypatch):
    """The smallest value in the last chunk: the 7 chunks read back at the end, their rows summed in 3 threads or in one, same bits."""
    import scalable_assoc.io.store as store_module

    values = _table(seed=2)
    values[3, -1] = 1e-9

    def log_pseudo(name: str, threads: int) -> bytes:
        monkeypatch.setattr(store_module, "READ_BACK_THREADS", threads)
        store = write_store_blocks(
            tmp_path / name, [f"S{i}" for i in range(40)], [f"F{j}" for j in range(23)], lambda a, b: values[:, a:b], "t", "x", 3
        )
        assert zarr.open_group(store.path, mode="r").attrs[SAMPLE_SUMS_KEY]["blocks_summed_again"] == 7
        return np.asarray(zarr.open_array(store.path / "sample_log_pseudo", mode="r")[...]).tobytes()

    assert log_pseudo("one.zarr", 1) == log_pseudo("three.zarr", 3)


def test_wide_table_gives_its_smallest_value_first(tmp_path, caplog):
    """A wide table is read whole before its first block: chunks are summed with the final pseudocount as they pass
    (none read back), with the bits of a store whose chunks are read back."""
    import logging

    import pandas as pd

    from scalable_assoc.io.ingest import ingest_table

    values = _table(seed=2)
    values[3, -1] = 1e-9  # the smallest value, in the last chunk
    frame = pd.DataFrame(values, index=[f"S{i}" for i in range(values.shape[0])], columns=[f"F{j}" for j in range(values.shape[1])])
    frame.rename_axis("sample_id").to_csv(tmp_path / "wide.tsv", sep="\t", float_format="%.17g", na_rep="NA")
    with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io.store"):
        wide = ingest_table(tmp_path / "wide.tsv", tmp_path / "wide.zarr", chunk_features=3)
    assert "7 blocks summed again for the final pseudocount 5e-10, 0 of them read back" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io.store"):
        read_back = _store(tmp_path, values)  # chunks of 3 as well
    assert "7 blocks summed again for the final pseudocount 5e-10, 7 of them read back" in caplog.text
    first, second = zarr.open_group(wide.path, mode="r"), zarr.open_group(read_back.path, mode="r")
    assert first.attrs[SAMPLE_SUMS_KEY] == second.attrs[SAMPLE_SUMS_KEY]
    assert np.asarray(first["sample_log_pseudo"][...]).tobytes() == np.asarray(second["sample_log_pseudo"][...]).tobytes()
    np.testing.assert_allclose(wide.stored_sample_sums()[0].log_pseudo, sample_summaries(values, "clr", 5e-10)[0], rtol=1e-12)


@pytest.mark.parametrize("told", [1e-12, 1e-9, 1e-3])
def test_a_readers_wrong_minimum_falls_back_to_the_blocks(tmp_path, told, caplog):
    """Told the table's minimum, the writer skips the sums with other candidates; told a wrong one (or the right one),
    every stored array has the bits of a store whose writer was told nothing."""
    import logging

    from scalable_assoc.io.table_values import SmallestPositive

    values = _table(seed=2)
    values[3, -1] = 1e-9  # the smallest value, in the last chunk: every earlier chunk has another candidate

    def arrays(name: str, known: float | None) -> dict[str, bytes]:
        smallest = None
        if known is not None:
            smallest = SmallestPositive()
            smallest.value = known
        store = write_store_blocks(
            tmp_path / name,
            [f"S{i}" for i in range(values.shape[0])],
            [f"F{j}" for j in range(values.shape[1])],
            lambda a, b: values[:, a:b],
            "t",
            "x",
            3,
            smallest_positive=smallest,
        )
        group = zarr.open_group(store.path, mode="r")
        return {key: np.asarray(array[...]).tobytes() for key, array in group.arrays()} | {"attrs": repr(dict(group.attrs)).encode()}

    expected = arrays("told-nothing.zarr", None)
    with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io.store"):
        got = arrays("told.zarr", told)
    assert got == expected
    read_back = 0 if told == 1e-9 else 8  # a wrong minimum: the final pseudocount's chunk (the last) is read back too
    assert f"7 blocks summed again for the final pseudocount 5e-10, {read_back} of them read back" in caplog.text


def test_block_sums_and_feature_summary_are_their_definitions_bit_for_bit():
    """The branch-free blends (a division for the smallest positive value, a sum for the logs' mask) give the bits of
    np.where's selections, on the cells where they could differ: zeros of both signs, NaN, the smallest subnormal, inf."""
    rng = np.random.default_rng(3)
    cells = np.array([0.0, -0.0, np.nan, 5e-324, 1e-300, 0.25, 3.0, 1e300, np.inf])
    block = rng.choice(cells, size=(700, 19)) * rng.uniform(0.5, 2.0, size=(700, 19))  # slabs of several rows
    block[:, 3], block[:, 4], block[:, 5] = np.nan, 0.0, -0.0
    positive = block > 0
    for rows in (block, block[:0], block[:, :0]):
        summary = feature_summary(rows)
        expected = np.where(rows > 0, rows, np.inf).min(axis=0) if rows.shape[0] else np.full(rows.shape[1], np.inf)
        assert summary.min_positive.tobytes() == expected.tobytes()
    assert np.isinf(feature_summary(block).min_positive[3:6]).all()
    observed, counted, log_positive = block_sums(block)
    logs = np.log(np.where(positive, block, 1.0))
    assert log_positive.tobytes() == logs.sum(axis=1).tobytes()
    assert np.array_equal(counted, positive.sum(axis=1)) and np.array_equal(observed, (~np.isnan(block)).sum(axis=1))


@pytest.mark.parametrize(("written", "read_back"), [("1e-09", 0), ("0.000000001", 7)])
def test_a_metaphlan_tables_smallest_value_is_guessed_from_its_exponents(tmp_path, caplog, monkeypatch, written, read_back):
    """The first pass guesses a MetaPhlAn table's smallest value from the values written with an exponent: right, no
    chunk is read back; wrong (the smallest written without one), every chunk is, as without a guess. Same bits."""
    import logging

    from scalable_assoc.io import metaphlan
    from scalable_assoc.io.ingest import ingest_table

    values = np.nan_to_num(_table(seed=2), nan=0.0)
    values[values < 1e-4] *= 1e-3  # a few values printed with an exponent, all above 1e-9
    cells = [[f"{x:g}" for x in column] for column in values.T]
    cells[-1][3] = written  # the smallest value, in the last chunk
    rows = [f"k__B|p__P|s__F{j}\t" + "\t".join(column) for j, column in enumerate(cells)]
    header = "clade_name\t" + "\t".join(f"S{i}" for i in range(values.shape[0]))
    (tmp_path / "mpa.tsv").write_text("\n".join(["#mpa_vJan21", header, "k__B\t" + "\t".join(["1"] * values.shape[0]), *rows]) + "\n")

    def arrays(name: str) -> dict[str, bytes]:
        store = ingest_table(tmp_path / "mpa.tsv", tmp_path / name, fmt="metaphlan", chunk_features=3)
        group = zarr.open_group(store.path, mode="r")
        return {key: np.asarray(array[...]).tobytes() for key, array in group.arrays()} | {"attrs": repr(dict(group.attrs)).encode()}

    with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io.store"):
        guessed = arrays("guessed.zarr")
    assert f"7 blocks summed again for the final pseudocount 5e-10, {read_back} of them read back" in caplog.text
    monkeypatch.setattr(metaphlan, "_guessed_smallest", lambda *_: None)
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="scalable_assoc.io.store"):
        unguessed = arrays("unguessed.zarr")
    assert "7 blocks summed again for the final pseudocount 5e-10, 7 of them read back" in caplog.text
    assert guessed.keys() == unguessed.keys()
    assert {k: v for k, v in guessed.items() if k != "attrs"} == {k: v for k, v in unguessed.items() if k != "attrs"}


def test_the_smallest_value_written_with_an_exponent_per_line() -> None:
    """Only values (not the ID field) with a negative exponent of two or three digits count; the largest exponent of a
    line decides, then the mantissa."""
    from scalable_assoc.io.text_values import _smallest_in_exponent_form

    lines = [b"s__e-10x\t1e-05\t3e-07\t2e-07\t0.0000000001", b"s__b\t1\t0", b"s__c\t4.5e-101\t1e-99", b"s__d\t9e-05\t5e-6"]
    text = b"\n".join(lines) + b"\n"
    codes = np.frombuffer(text, dtype=np.uint8)
    stops, starts = [], []
    position = 0
    for line in lines:
        starts.append(position + line.find(b"\t"))
        stops.append(position + len(line))
        position += len(line) + 1
    got = _smallest_in_exponent_form(text, codes, np.array(starts), np.array(stops), b"\t")
    assert got == [2e-07, np.inf, 4.5e-101, 9e-05]


def _statistics_bytes(statistics) -> dict[str, bytes]:
    """Every array of a BlockStatistics, as dtype and bytes."""
    arrays = {name: getattr(statistics, name) for name in ("total", "observed", "positive", "log_positive", "log_pseudo")}
    arrays |= {f"summary.{name}": np.asarray(getattr(statistics.summary, name)) for name in ("nonzero", "observed", "min_positive")}
    arrays |= {f"rare.{i}": part for i, part in enumerate(statistics.rare)}
    return {name: b"" if a is None else a.dtype.str.encode() + a.tobytes() for name, a in arrays.items()}


def _abundance_block(rng: np.random.Generator, n: int, m: int, missing: float, special: bool) -> np.ndarray:
    """Abundances: zeros at prevalences from 2% to 100% per column, some missing; ``special``: -0.0, subnormals, inf."""
    values = np.exp(rng.normal(0.0, 3.0, (n, m)))
    values[rng.random((n, m)) >= np.linspace(0.02, 1.0, m)] = 0.0
    values[rng.random((n, m)) < missing] = np.nan
    if special:
        cells = rng.random((n, m))
        values[cells < 0.02] = -0.0
        values[(cells >= 0.02) & (cells < 0.03)] = 5e-324
        values[(cells >= 0.03) & (cells < 0.032)] = np.inf
    return values


@pytest.mark.parametrize("slab_cells", [None, 7, 64])
@pytest.mark.parametrize("layout", ["C", "F", "columns of a wider block", "rows of a taller block", "every other column"])
@pytest.mark.parametrize(
    ("n", "m", "missing", "special"),
    [(300, 37, 0.0, False), (300, 37, 0.05, False), (257, 41, 0.01, True), (1, 23, 0.1, False), (90, 1, 0.1, False), (5, 3, 1.0, False)],
)
def test_block_statistics_has_the_bits_of_the_reference(monkeypatch, slab_cells, layout, n, m, missing, special):
    """One pass (stats.sample_sums.block_statistics) gives every array of the five passes it replaces bit for bit, for
    blocks laid out as readers give them (C, F, views), slabs of one row or a few, missing cells, -0.0, inf, subnormals."""
    from scalable_assoc.stats import sample_sums

    if slab_cells is not None:
        monkeypatch.setattr(sample_sums, "SLAB_CELLS", slab_cells)
    rng = np.random.default_rng(n * 1000 + m)
    values = _abundance_block(rng, n, m, missing, special)
    if layout == "F":
        values = np.asfortranarray(values)
    elif layout == "columns of a wider block":
        values = np.hstack([values, values[:, :3]])[:, : values.shape[1]]
    elif layout == "rows of a taller block":
        values = np.asfortranarray(np.vstack([values, values[:2]]))[: values.shape[0]]
    elif layout == "every other column":
        values = np.repeat(values, 2, axis=1)[:, ::2]
    workspace = sample_sums.BlockWorkspace()
    for pseudocount in (None, 1e-3, 0.75):
        expected = _statistics_bytes(sample_sums.reference_block_statistics(values, pseudocount))
        for _ in range(2):  # the workspace's arrays filled again
            got = _statistics_bytes(sample_sums.block_statistics(values, pseudocount, workspace))
            assert got == expected, [name for name in expected if got[name] != expected[name]]


def test_block_statistics_of_negative_values_are_the_references():
    """A negative value (which readers refuse) breaks the blends: the block goes to the reference, same bits."""
    from scalable_assoc.stats import sample_sums

    values = _abundance_block(np.random.default_rng(5), 200, 9, 0.02, False)
    values[150, 4] = -2.0
    got = sample_sums.block_statistics(values, 0.25, sample_sums.BlockWorkspace())
    assert got.summary.min_positive[4] == -np.inf  # as the reference's division gives it
    assert _statistics_bytes(got) == _statistics_bytes(sample_sums.reference_block_statistics(values, 0.25))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("told", [None, 1e-9])
def test_stores_written_by_one_pass_and_by_the_reference_are_identical(tmp_path, monkeypatch, order, told):
    """io.store's writer with block_statistics and with the five passes before it: every array and attribute the same
    (blocks as a reader lays them out; told the table's minimum or not, so blocks are summed ahead or read back)."""
    import scalable_assoc.io.store as store_module
    from scalable_assoc.io.table_values import SmallestPositive
    from scalable_assoc.stats import sample_sums

    values = _table(seed=4, n=300, m=23)
    values[7, -1] = 1e-9  # the smallest value, in the last chunk
    values[:, 5] = np.nan
    values[:, 6] = 0.0

    def arrays(name: str) -> dict[str, bytes]:
        smallest = None
        if told is not None:
            smallest = SmallestPositive()
            smallest.value = told
        store = write_store_blocks(
            tmp_path / name,
            [f"S{i}" for i in range(values.shape[0])],
            [f"F{j}" for j in range(values.shape[1])],
            lambda a, b: np.asarray(values[:, a:b], order=order),
            "t",
            "x",
            4,
            smallest_positive=smallest,
        )
        group = zarr.open_group(store.path, mode="r")
        return {key: np.asarray(array[...]).tobytes() for key, array in group.arrays()} | {"attrs": repr(dict(group.attrs)).encode()}

    one_pass = arrays("one-pass.zarr")
    monkeypatch.setattr(store_module, "block_statistics", lambda block, c, _: sample_sums.reference_block_statistics(block, c))
    reference = arrays("reference.zarr")
    assert one_pass.keys() == reference.keys() and len(one_pass) == 14
    assert one_pass == reference, [key for key in one_pass if one_pass[key] != reference[key]]


def _as_written_in_feature_order(store) -> None:
    """Rewrite ``store``'s sparse copy as stores written before the prevalence order hold it: cells in feature
    order, ``rare_indptr`` over every feature, no ``rare_features``, the sums under their former attribute."""
    group = zarr.open_group(store.path, mode="r+")
    order = np.asarray(group["rare_features"][:])
    indptr = np.asarray(group["rare_indptr"][:])
    samples, cells = np.asarray(group["rare_samples"][:]), np.asarray(group["rare_values"][:])
    lengths = np.zeros(store.n_features, dtype=np.int64)
    lengths[order] = np.diff(indptr)
    by_feature = sorted(range(order.size), key=lambda k: order[k])
    pieces = [slice(indptr[k], indptr[k + 1]) for k in by_feature]
    for name, data in (("rare_samples", samples), ("rare_values", cells)):
        del group[name]
        group.create_array(name, data=np.concatenate([data[:0], *(data[p] for p in pieces)]), chunks=(3,))
    del group["rare_indptr"], group["rare_features"]
    group.create_array("rare_indptr", data=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    attributes = dict(group.attrs)
    group.attrs.put({**{k: v for k, v in attributes.items() if k != SAMPLE_SUMS_KEY}, "sample_sums": attributes[SAMPLE_SUMS_KEY]})


def test_a_copy_in_feature_order_composes_the_same_sums(tmp_path):
    """Stores written before the prevalence order (cells in feature order, the former attribute) are read as they are."""
    values = _table(seed=4)
    store = _store(tmp_path, values)
    kept = prevalence(feature_summary(values)) >= 0.2
    pc = half_min_pseudocount(feature_summary(values).min_positive)
    expected = {which: _composed(store, kept, which, pc if which == "clr" else None) for which in ("clr", "tss", "nonzero")}
    _as_written_in_feature_order(store)
    assert "rare_features" not in zarr.open_group(store.path, mode="r")
    for which, (total, count) in expected.items():
        got = _composed(store, kept, which, pc if which == "clr" else None)
        np.testing.assert_array_equal(got[1], count)
        np.testing.assert_allclose(got[0], total, rtol=1e-12, atol=0)


def test_a_prevalence_filter_reads_the_leading_chunks_of_the_copy_only(tmp_path, monkeypatch):
    """The features a prevalence filter removes lead the copy: chunks after theirs are not read."""
    import scalable_assoc.io.store as store_module

    monkeypatch.setattr(store_module, "RARE_CHUNK_CELLS", 4)
    rng = np.random.default_rng(6)
    values = rng.exponential(size=(60, 30))
    prevalences = rng.permutation(np.linspace(0.02, 0.24, 30))  # every feature rare, in no order
    values[rng.random(values.shape) >= prevalences] = 0.0
    store = _store(tmp_path, values)
    removed = prevalence(feature_summary(values)) < 0.1
    n_cells = int((values[:, removed] != 0).sum())
    assert 0 < removed.sum() < 30 and n_cells > 4
    import scalable_assoc.io.side_arrays as side_arrays

    read: list[str] = []
    original = side_arrays._decode_chunk  # every chunk of a store's small arrays read

    def recorded(path, *args, **kwargs):
        read.append(path.relative_to(store.path).as_posix())
        return original(path, *args, **kwargs)

    monkeypatch.setattr(side_arrays, "_decode_chunk", recorded)
    cells = list(store.rare_cells(removed))
    chunks = {key for key in read if key.startswith("rare_values/c/")}
    assert chunks == {f"rare_values/c/{i}" for i in range(-(-n_cells // 4))}
    assert len(chunks) < -(-int((values[:, prevalences < 0.25] != 0).sum()) // 4)  # fewer than all of them
    assert sum(s.size for s, _ in cells) == n_cells
    expected = np.bincount(np.nonzero(values[:, removed] != 0)[0], minlength=60)
    np.testing.assert_array_equal(np.bincount(np.concatenate([s for s, _ in cells]), minlength=60), expected)


@pytest.mark.parametrize("kinds", [("clr",), ("tss",), ("ast",), ("nonzero",), ("clr", "nonzero"), ("clr", "tss", "ast", "nonzero")])
def test_removed_cell_sums_of_some_kinds_are_their_definitions_bit_for_bit(kinds):
    """The rows a kind reads are the sums over the observed (or positive) cells in their order; the rest stay 0."""
    rng = np.random.default_rng(8)
    samples = rng.integers(0, 50, 5_000).astype(np.int32)
    values = rng.exponential(size=5_000) * 1e3
    values[rng.random(5_000) < 0.1] = np.nan
    values[rng.random(5_000) < 0.05] *= -1  # negative cells: log(x + c) is NaN, as the pass gives
    present, positive = ~np.isnan(values), values > 0
    with np.errstate(invalid="ignore"):
        logs = np.log(values[present] + 0.5)
    definitions = [
        np.bincount(samples[~present], minlength=50),
        np.bincount(samples[present], minlength=50),
        np.bincount(samples[present], weights=values[present], minlength=50),
        np.bincount(samples[positive], minlength=50),
        np.bincount(samples[positive], weights=np.log(values[positive]), minlength=50),
        np.bincount(samples[present], weights=logs, minlength=50),
    ]
    got = removed_cell_sums(samples, values, 50, 0.5, kinds)
    rows = {row for kind in kinds for row in {"clr": (0, 1, 5), "tss": (0, 2), "ast": (0, 2), "nonzero": (3, 4)}[kind]}
    for row, expected in enumerate(definitions):
        if row in rows:
            assert got[row].tobytes() == np.asarray(expected, dtype=np.float64).tobytes(), row
        elif row != 0:
            assert not got[row].any(), row


def test_chunk_runs_are_the_runs_of_chunks_holding_a_chosen_cell():
    from scalable_assoc.io.rare_cells import chunk_runs

    chosen = np.zeros(23, dtype=bool)
    chosen[[0, 5, 6, 13, 22]] = True  # chunks of 4: 0, 1, 3 and the last (partial) one hold some
    assert chunk_runs(chosen, 4, 10) == [(0, 8), (12, 16), (20, 23)]
    assert chunk_runs(chosen, 4, 1) == [(0, 4), (4, 8), (12, 16), (20, 23)]
    assert chunk_runs(np.ones(9, dtype=bool), 4, 2) == [(0, 8), (8, 9)]
    assert chunk_runs(np.zeros(9, dtype=bool), 4, 2) == [] == chunk_runs(np.zeros(0, dtype=bool), 4, 2)


def test_gather_positions_are_the_ordered_cells_positions_for_any_range():
    """Against the whole copy gathered feature by feature: every range, with features holding no cell among them."""
    from scalable_assoc.io.rare_cells import gather_positions

    rng = np.random.default_rng(9)
    lengths = rng.integers(0, 4, 12)
    lengths[[0, 5, 11]] = 0  # features with no cell: first, inside and last
    written_starts = np.cumsum(lengths) - lengths
    order = rng.permutation(12)
    everything = np.concatenate([np.arange(written_starts[j], written_starts[j] + lengths[j]) for j in order])
    indptr = np.concatenate([[0], np.cumsum(lengths[order])])
    for first in range(everything.size + 1):
        for stop in range(first, everything.size + 1):
            np.testing.assert_array_equal(gather_positions(written_starts[order], indptr, first, stop), everything[first:stop])
