"""A store's small arrays and attributes (io.side_arrays) are the files zarr writes itself, byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

import scalable_assoc.io.store as store_module
from scalable_assoc.io.rare_cells import RARE_ARRAYS, RareCellsWriter
from scalable_assoc.io.side_arrays import SideArray, write_side_arrays
from scalable_assoc.io.store import open_store, side_compressors, write_store_blocks
from scalable_assoc.stats.sample_sums import rare_features


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _written_by_zarr(folder: Path, arrays: dict[str, SideArray], attributes: dict, compressors: list | None = None) -> dict[str, bytes]:
    """What zarr writes on disk for the same arrays and attributes, one call at a time."""
    group = zarr.open_group(folder, mode="w", zarr_format=3)
    for name, array in arrays.items():
        group.create_array(name, data=array.data, chunks=(array.chunk,), compressors=compressors or side_compressors())
    group.update_attributes(attributes)
    return _files(folder)


ATTRIBUTES = {
    "format_version": 1,
    "sample_ids": [f"S{i}" for i in range(50)] + ['é ü \t "quoted" \\ back', "☃"],
    "feature_ids": ["k__Bacteria|s__x", "PWY-5097: L-lysine biosynthesis VI"],
    "source": "/a/b.tsv",
    "sample_sums": {"pseudocount": None, "rare_prevalence_cap": 0.25, "blocks_summed_again": 0, "nan": float("nan")},
    "notes": [],
    "renamed_samples": [["a", "b"]],
    "nested": {"tuple": (1, 2.5, -0.0, 1e-300), "inf": float("inf"), "empty": {}},
}


@pytest.mark.parametrize(
    "compressors",
    [None, [ZstdCodec(level=1), Crc32cCodec()], [ZstdCodec(level=3, checksum=True), Crc32cCodec()], [Crc32cCodec()]],
    ids=["the store's codecs", "another zstd level", "zstd with its checksum (through zarr)", "crc32c alone (through zarr)"],
)
def test_side_arrays_and_attributes_are_zarrs_own_bytes(tmp_path, monkeypatch, compressors):
    """Encoded here (the store's dtypes and codecs) or through zarr in memory (anything else): zarr's files."""
    import scalable_assoc.io.side_arrays as side_arrays

    through_zarr: list[str] = []
    by_zarr = side_arrays._encoded_by_zarr
    monkeypatch.setattr(side_arrays, "_encoded_by_zarr", lambda arrays, codecs: through_zarr.extend(arrays) or by_zarr(arrays, codecs))
    rng = np.random.default_rng(3)
    arrays = {
        "empty_int32": SideArray(np.zeros(0, dtype=np.int32), 1 << 20),
        "empty_float": SideArray(np.zeros(0), 1 << 20),
        "one_nan": SideArray(np.array([np.nan]), 1),
        "partial_chunk": SideArray(rng.integers(0, 1000, 7).astype(np.int32), 16),
        "three_chunks": SideArray(rng.exponential(size=25), 10),  # the last chunk partial
        "all_zero": SideArray(np.zeros(9, dtype=np.int64), 9),  # zarr writes no chunk equal to its fill value
        "counts": SideArray(rng.integers(0, 2**40, 33), 33),
        "with_nan": SideArray(np.where(rng.random(40) < 0.2, np.nan, rng.normal(size=40)), 40),
        "zeros_float": SideArray(np.zeros(5), 5),  # +0.0 is the fill value: no chunk
        "negative_zero": SideArray(np.array([0.0, -0.0, 0.0]), 3),  # -0.0 is not (zarr compares the bits): a chunk
        "float32": SideArray(rng.normal(size=6).astype(np.float32), 6),  # through zarr
        "uint8": SideArray(np.arange(4, dtype=np.uint8), 4),  # through zarr
        "big_endian": SideArray(np.arange(4, dtype=">i8"), 4),  # through zarr
    }
    compressors = compressors or side_compressors()
    ours = tmp_path / "ours"
    zarr.open_group(ours, mode="w", zarr_format=3)  # a group created first, as the store writer does
    write_side_arrays(ours, arrays, compressors, ATTRIBUTES)
    expected = _written_by_zarr(tmp_path / "zarr", arrays, ATTRIBUTES, compressors)
    assert "zeros_float/c/0" not in expected and "negative_zero/c/0" in expected
    odd = ["float32", "uint8", "big_endian"]
    assert through_zarr == (odd if compressors[0].__class__ is ZstdCodec and not compressors[0].checksum else list(arrays))
    assert "all_zero/c/0" not in expected and "three_chunks/c/2" in expected
    assert _files(ours) == expected
    group = zarr.open_group(ours, mode="r")
    assert group.attrs["sample_ids"] == ATTRIBUTES["sample_ids"]
    np.testing.assert_array_equal(group["with_nan"][:], arrays["with_nan"].data)
    assert group["empty_int32"].dtype == np.int32 and group["empty_int32"].shape == (0,)


def _table(n: int, m: int, rare: str) -> np.ndarray:
    """Values whose rare features (prevalence below the store's cap) are none, one, or all of them; missing cells too."""
    rng = np.random.default_rng(5)
    values = rng.exponential(size=(n, m))
    rare_columns = {"none": [], "one": [3], "all": list(range(m))}[rare]
    for j in rare_columns:
        values[rng.random(n) > 0.1, j] = 0.0
    values[rng.random((n, m)) < 0.03] = np.nan
    return values


@pytest.mark.parametrize(
    ("chunk_cells", "memory_cells"),
    [(1 << 20, 1 << 20), (3, 1 << 20), (3, 3)],
    ids=["in memory, one chunk", "in memory, several chunks", "through files, written chunk by chunk"],
)
@pytest.mark.parametrize("rare", ["none", "one", "all"])
def test_rare_cells_are_the_arrays_zarr_writes(tmp_path, monkeypatch, rare, chunk_cells, memory_cells):
    """The rare features' cells held in memory (fewer than a chunk) or in files beside the store: the files of
    ``create_array`` with every cell at once, in order of increasing prevalence (ties in feature order)."""
    monkeypatch.setattr(store_module, "RARE_CHUNK_CELLS", chunk_cells)
    monkeypatch.setattr(store_module, "RARE_IN_MEMORY_CELLS", memory_cells)
    spilled: list[int] = []
    write_spilled = RareCellsWriter._write_spilled
    monkeypatch.setattr(RareCellsWriter, "_write_spilled", lambda self, *a: spilled.append(self.n_cells) or write_spilled(self, *a))
    values = _table(60, 11, rare)
    n, m = values.shape
    store = write_store_blocks(
        tmp_path / "s.zarr", [f"S{i}" for i in range(n)], [f"F{j}" for j in range(m)], lambda a, b: values[:, a:b], "t", "x", 4
    )
    assert bool(spilled) == (memory_cells == 3 and rare != "none")
    observed = (~np.isnan(values)).sum(axis=0)
    nonzero = ((values != 0) & ~np.isnan(values)).sum(axis=0)
    chosen = rare_features(nonzero, observed)
    assert chosen.sum() == {"none": 0, "one": 1, "all": m}[rare]
    order = sorted(np.flatnonzero(chosen), key=lambda j: (nonzero[j] / observed[j], j))
    if rare == "all":
        assert order != sorted(order)  # the order is not the features'
    kept = (values != 0) & chosen  # NaN != 0: missing cells are kept
    samples = np.concatenate([[], *(np.flatnonzero(kept[:, j]) for j in order)]).astype(np.int32)
    cells = np.concatenate([[], *(values[kept[:, j], j] for j in order)])
    if rare != "none" and chunk_cells == 3:
        assert samples.size > 2 * chunk_cells  # several chunks, the last partial
    reference = tmp_path / "reference"
    expected = _written_by_zarr(
        reference,
        {
            "rare_features": SideArray(np.array(order, dtype=np.int64), max(len(order), 1)),
            "rare_samples": SideArray(samples, chunk_cells),
            "rare_values": SideArray(cells, chunk_cells),
            "rare_indptr": SideArray(np.concatenate([[0], np.cumsum([kept[:, j].sum() for j in order])]).astype(np.int64), len(order) + 1),
        },
        {},
    )
    written = _files(store.path)
    assert not [name for name in written if "spill" in name]  # the files holding the cells while writing are gone
    for name in RARE_ARRAYS:
        assert {k: v for k, v in written.items() if k.startswith(f"{name}/")} == {
            k: v for k, v in expected.items() if k.startswith(f"{name}/")
        }
    assert store == open_store(store.path)  # the store the writer returns is the one read back
    got = list(store.rare_cells(np.ones(m, dtype=bool)))
    got_samples = np.concatenate([s for s, _ in got]) if got else np.zeros(0, dtype=np.int32)
    got_values = np.concatenate([v for _, v in got]) if got else np.zeros(0)
    np.testing.assert_array_equal(got_samples, samples)
    np.testing.assert_array_equal(got_values, cells)


def test_side_arrays_read_back_as_zarr_reads_them(tmp_path):
    """Every range of the arrays written here reads as zarr reads it; other layouts are left to zarr (None)."""
    from scalable_assoc.io.side_arrays import read_side_array, side_values

    rng = np.random.default_rng(4)
    arrays = {
        "three_chunks": SideArray(rng.exponential(size=25), 10),
        "with_zero_chunk": SideArray(np.concatenate([rng.integers(1, 9, 4), np.zeros(8, dtype=np.int64), [3]]), 4),
        "int32": SideArray(rng.integers(-5, 5, 9).astype(np.int32), 2),
        "empty": SideArray(np.zeros(0), 1 << 20),
        "uint8": SideArray(np.arange(4, dtype=np.uint8), 4),  # through zarr: not our layout
    }
    folder = tmp_path / "g"
    zarr.open_group(folder, mode="w", zarr_format=3)
    write_side_arrays(folder, arrays, side_compressors(), {})
    assert not (folder / "with_zero_chunk" / "c" / "1").exists()  # a chunk of zeros is not written
    for name, array in arrays.items():
        stored = zarr.open_array(folder / name, mode="r")
        size = array.data.size
        for first, stop in [(0, None), (0, size), (1, max(size - 1, 1)), (3, 7), (size, size), (10, 20), (0, 1)]:
            got = side_values(folder / name, first, stop)
            expected = np.asarray(stored[first:stop])
            assert got.dtype == expected.dtype and got.tobytes() == expected.tobytes(), (name, first, stop)
        assert (read_side_array(folder / name) is None) == (name == "uint8")


def test_a_damaged_side_array_chunk_is_named(tmp_path):
    from scalable_assoc.errors import DataError
    from scalable_assoc.io.side_arrays import side_values

    folder = tmp_path / "g"
    zarr.open_group(folder, mode="w", zarr_format=3)
    write_side_arrays(folder, {"a": SideArray(np.arange(1.0, 21.0), 8)}, side_compressors(), {})
    chunk = folder / "a" / "c" / "1"
    content = bytearray(chunk.read_bytes())
    content[5] ^= 0xFF
    chunk.write_bytes(bytes(content))
    np.testing.assert_array_equal(side_values(folder / "a", 0, 8), np.arange(1.0, 9.0))  # the chunk read is intact
    with pytest.raises(DataError, match=r"a/c/1: the chunk does not match its checksum"):
        side_values(folder / "a")
    with pytest.raises(FileNotFoundError):
        side_values(folder / "missing")
