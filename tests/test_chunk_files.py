"""Abundance chunks read and written as files (io/chunk_files.py) against zarr's own reads and writes of the same store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

import scalable_assoc.io.chunk_files as chunk_files_module
import scalable_assoc.io.store as store_module
from scalable_assoc.errors import DataError
from scalable_assoc.io.chunk_files import chunk_files, chunk_writer
from scalable_assoc.io.store import abundance_compressors, open_store, write_store_blocks

N_SAMPLES, N_FEATURES, CHUNK = 37, 23, 5  # four whole chunks and an edge chunk of 3


def _values(seed: int = 0) -> np.ndarray:
    """Abundances as a store holds them: zeros, positives, a few NaN, one all-NaN chunk (features 10-14)."""
    rng = np.random.default_rng(seed)
    values = rng.lognormal(-8, 3, (N_SAMPLES, N_FEATURES)) * (rng.random((N_SAMPLES, N_FEATURES)) < 0.5)
    values[rng.random((N_SAMPLES, N_FEATURES)) < 0.05] = np.nan
    values[:, 10:15] = np.nan
    return values


def _zarr_array(folder: Path, compressors: list | None = None, chunks: tuple[int, int] = (N_SAMPLES, CHUNK)) -> zarr.Array:
    """An empty abundance array made as the store writer makes it."""
    group = zarr.open_group(folder, mode="w", zarr_format=3)
    return group.create_array(
        "abundance",
        shape=(N_SAMPLES, N_FEATURES),
        chunks=chunks,
        dtype="float64",
        fill_value=np.nan,
        compressors=compressors or abundance_compressors(),
    )


@pytest.mark.parametrize("bounds", [(0, 5), (5, 10), (20, 23), (3, 4), (3, 12), (0, 23), (7, 7), (12, 21), (10, 15)])
def test_read_columns_equal_zarr_reads(tmp_path: Path, bounds: tuple[int, int]) -> None:
    array = _zarr_array(tmp_path)
    array[:, :] = _values(1)
    files = chunk_files(tmp_path / "abundance")
    assert files is not None
    start, stop = bounds
    block = files.read_columns(start, stop)
    assert block.shape == (N_SAMPLES, stop - start) and block.flags.c_contiguous and block.dtype == np.float64
    np.testing.assert_array_equal(block, array[:, start:stop])  # NaN where the all-NaN chunk 2 was never written
    assert not (tmp_path / "abundance" / "c" / "0" / "2").exists()


def test_reading_outside_the_array_is_an_error(tmp_path: Path) -> None:
    _zarr_array(tmp_path)
    files = chunk_files(tmp_path / "abundance")
    assert files is not None
    with pytest.raises(IndexError):
        files.read_columns(20, 24)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # a flipped data byte
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # a flipped checksum byte
        lambda b: b[: len(b) // 2],  # cut short
        lambda b: b[:2],  # shorter than a checksum
    ],
)
def test_a_damaged_chunk_is_named(tmp_path: Path, damage) -> None:
    array = _zarr_array(tmp_path / "store")
    array[:, :] = _values(2)
    chunk = tmp_path / "store" / "abundance" / "c" / "0" / "1"
    chunk.write_bytes(damage(chunk.read_bytes()))
    files = chunk_files(tmp_path / "store" / "abundance")
    assert files is not None
    np.testing.assert_array_equal(files.read_columns(0, 5), array[:, 0:5])  # other chunks read as before
    with pytest.raises(DataError, match=r"store .*store is damaged: the chunk holding features 5-9"):
        files.read_columns(4, 6)


def test_a_chunk_of_another_size_is_named(tmp_path: Path) -> None:
    """A chunk whose checksum holds but whose Blosc header says another size (written by something else)."""
    array = _zarr_array(tmp_path / "store")
    array[:, :] = _values(3)
    other = tmp_path / "other"
    _zarr_array(other, chunks=(N_SAMPLES, CHUNK + 1))[:, :] = _values(3)
    (tmp_path / "store" / "abundance" / "c" / "0" / "0").write_bytes((other / "abundance" / "c" / "0" / "0").read_bytes())
    files = chunk_files(tmp_path / "store" / "abundance")
    assert files is not None
    with pytest.raises(DataError, match="features 0-4 does not decompress"):
        files.read_columns(0, 5)


def _edited_metadata(folder: Path, edit) -> Path:
    _zarr_array(folder)
    path = folder / "abundance" / "zarr.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))
    return folder / "abundance"


@pytest.mark.parametrize(
    "edit",
    [
        lambda m: m.update(data_type="float32"),
        lambda m: m.update(fill_value=0.0),
        lambda m: m["chunk_key_encoding"]["configuration"].update(separator="."),
        lambda m: m["chunk_key_encoding"].update(name="v2"),
        lambda m: m["chunk_grid"]["configuration"].update(chunk_shape=[N_SAMPLES - 1, CHUNK]),
        lambda m: m["codecs"].insert(0, {"name": "transpose", "configuration": {"order": [1, 0]}}),
        lambda m: m["codecs"][0]["configuration"].update(endian="big"),
        lambda m: m["codecs"].pop(),
        lambda m: m.update(storage_transformers=[{"name": "x"}]),
        lambda m: m.pop("shape"),
    ],
)
def test_other_layouts_are_left_to_zarr(tmp_path: Path, edit) -> None:
    assert chunk_files(_edited_metadata(tmp_path, edit)) is None


def test_other_codecs_and_missing_metadata_are_left_to_zarr(tmp_path: Path) -> None:
    _zarr_array(tmp_path / "zstd", compressors=[ZstdCodec(level=3)])
    assert chunk_files(tmp_path / "zstd" / "abundance") is None
    assert chunk_files(tmp_path / "nothing") is None
    assert chunk_files(tmp_path / "zstd") is None  # a group, not an array


def _chunk_bytes(folder: Path) -> dict[str, bytes]:
    """Every chunk file of the abundance array in ``folder``, by its key."""
    chunks = folder / "abundance" / "c"
    return {str(path.relative_to(chunks)): path.read_bytes() for path in sorted(chunks.rglob("*")) if path.is_file()}


@pytest.mark.parametrize("blosc_called_here", [True, False])
def test_written_chunks_are_zarrs_own_bytes(tmp_path: Path, monkeypatch, blosc_called_here: bool) -> None:
    """Whole chunks, the narrower edge chunk (padded with NaN) and a chunk of NaN only (left out), written out of
    order; also where Blosc is called through numcodecs."""
    values = _values(4)
    _zarr_array(tmp_path / "zarr")[:, :] = values
    # Blosc called here where numcodecs' extension exports it (this package's dependencies do): the path runs use.
    assert (chunk_files_module._blosc_compress_ctx() is not None) or not blosc_called_here
    if not blosc_called_here:
        monkeypatch.setattr(chunk_files_module, "_blosc_compress_ctx", lambda: None)
    _zarr_array(tmp_path / "ours")
    writer = chunk_writer(tmp_path / "ours" / "abundance")
    assert writer is not None
    for index in (1, 0, 4, 2, 3):
        writer.write(index, values[:, index * CHUNK : (index + 1) * CHUNK])
    theirs = _chunk_bytes(tmp_path / "zarr")
    assert "0/2" not in theirs and sorted(theirs) == ["0/0", "0/1", "0/3", "0/4"]
    assert _chunk_bytes(tmp_path / "ours") == theirs
    with pytest.raises(ValueError, match="shape"):
        writer.write(4, values[:, 15:20])  # the edge chunk holds 3 features


def test_other_layouts_are_written_by_zarr(tmp_path: Path) -> None:
    _zarr_array(tmp_path / "zstd", compressors=[ZstdCodec(level=3)])
    assert chunk_writer(tmp_path / "zstd" / "abundance") is None
    assert chunk_writer(tmp_path / "nothing") is None


def test_the_store_writer_writes_chunks_without_zarr(tmp_path: Path, monkeypatch) -> None:
    """A store's abundance chunks are written as files (none through zarr's codec pipeline), the bytes the writer
    wrote through zarr (where the layout is not the one chunk_files knows), and read back as written."""
    values = _values(6)
    ids = [f"s{i}" for i in range(N_SAMPLES)], [f"f{j}" for j in range(N_FEATURES)]

    def write(path: Path):
        return write_store_blocks(path, *ids, lambda start, stop: values[:, start:stop], "table", "0" * 64, CHUNK)

    with monkeypatch.context() as through_zarr:
        through_zarr.setattr(store_module, "chunk_writer", lambda folder: None)
        write(tmp_path / "zarr.zarr")

    def refused(*args: object) -> None:
        raise AssertionError("an abundance chunk written through zarr")

    monkeypatch.setattr(zarr.Array, "__setitem__", refused)
    store = write(tmp_path / "s.zarr")
    np.testing.assert_array_equal(open_store(store.path).read_block(0, N_FEATURES), values)
    assert sorted(_chunk_bytes(store.path)) == ["0/0", "0/1", "0/3", "0/4"]
    assert _chunk_bytes(store.path) == _chunk_bytes(tmp_path / "zarr.zarr")


def test_freed_memory_is_given_back_every_few_chunks(tmp_path: Path, monkeypatch) -> None:
    """malloc_trim after every TRIM_EVERY_CHUNKS chunks converted, and once after the last (not after every chunk:
    what it gives back, the readers touch afresh for the next chunk)."""
    handed: list[int] = []  # the blocks handed to the writer so far
    calls: list[int] = []  # how many had been handed over at each call
    monkeypatch.setattr(store_module, "release_freed_memory", lambda: calls.append(len(handed)))
    n_chunks, n_features = 11, 22
    values = np.arange(4.0 * n_features).reshape(4, n_features)

    def block(start: int, stop: int) -> np.ndarray:
        handed.append(start)
        return values[:, start:stop]

    ids = [f"s{i}" for i in range(4)], [f"f{j}" for j in range(n_features)]
    write_store_blocks(tmp_path / "s.zarr", *ids, block, "table", "0" * 64, n_features // n_chunks)
    every = store_module.TRIM_EVERY_CHUNKS
    assert 1 < every < n_chunks
    assert calls[: n_chunks // every] == [every * k for k in range(1, n_chunks // every + 1)]
    assert calls[n_chunks // every :] == [n_chunks]  # before the sums are finished
