"""A store's abundance chunks read as the files they are, without zarr's codec pipeline.

A converted store's abundance array (:mod:`scalable_assoc.io.store`) is one row of
``(n_samples, chunk_features)`` chunks, each a file ``c/0/<j>`` holding the chunk's
float64 bytes (C order, little-endian) compressed by Blosc and followed by their
CRC-32C. Here each is read with one ``read``, its checksum checked, and its values
decompressed straight into the block returned.

Why: zarr decodes every chunk through its asynchronous codec pipeline (an event
loop thread, buffer wrappers, a copy of the compressed bytes to strip the checksum,
a copy of the decoded chunk into the block). Reading nine 7,656 x 547 chunks of the
species store took 0.24-0.26 s of CPU through zarr and 0.15-0.18 s here (one
process, 4 alternating rounds), and every fit task reads its chunk: the suite's
per-chunk read was 3x the decompression alone. (Writing chunks directly saved only
0.05-0.1 s of 0.45-0.7 s per ten chunks against zarr with its empty-chunk check off,
as the store writer calls it, so stores are still written by zarr.)

Only arrays whose metadata says exactly that layout are read here (:func:`chunk_files`);
for any other (another codec, chunk grid or key encoding, a store from another tool)
it returns None and the caller reads through zarr. :func:`read_block`, how tasks
read a store, does both; it is here, not in :mod:`scalable_assoc.io.store`, so
that the workers, which read blocks only, import neither zarr nor the writer.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
from numcodecs import blosc

from scalable_assoc.errors import DataError

#: Bytes of the CRC-32C that ends every chunk file (zarr's ``crc32c`` codec: little-endian, after the data).
_CRC_BYTES = 4
#: Bytes of the header that starts a Blosc chunk (version, flags, type size, then sizes as 32-bit integers).
_BLOSC_HEADER_BYTES = 16


@dataclass(frozen=True)
class ChunkFiles:
    """Where an abundance array's chunk files are and how each is encoded (its ``zarr.json``).

    ``shape`` is ``(n_samples, n_features)``, ``chunk_features`` the features per chunk (a chunk holds every
    sample). Blosc's settings are not needed to read (each chunk's header holds them).
    """

    folder: Path
    shape: tuple[int, int]
    chunk_features: int

    def path(self, index: int) -> Path:
        """The file of chunk ``index`` (features ``index * chunk_features`` on): zarr's default key ``c/0/<index>``."""
        return self.folder / "c" / "0" / str(index)

    def chunk_width(self, index: int) -> int:
        """Features in chunk ``index`` (the last may hold fewer than ``chunk_features``)."""
        return min(self.chunk_features, self.shape[1] - index * self.chunk_features)

    def read_columns(self, start: int, stop: int) -> np.ndarray:
        """Features ``start:stop`` for every sample: ``(n_samples, stop - start)`` float64, NaN where no chunk is stored.

        A range that is exactly one chunk (how fit tasks read) is decompressed straight into the block returned.
        """
        n_samples, size = self.shape[0], self.chunk_features
        if not 0 <= start <= stop <= self.shape[1]:
            raise IndexError(f"features {start}:{stop} outside the {self.shape[1]} of {self.folder}")
        out = np.empty((n_samples, stop - start))
        if stop == start:
            return out
        first, last = start // size, (stop - 1) // size
        whole = first == last and start == first * size and stop - start == size
        for index in range(first, last + 1):
            chunk = out if whole else np.empty((n_samples, size))
            self._decode_into(index, chunk)
            if not whole:
                lo, hi = max(start, index * size), min(stop, (index + 1) * size)
                out[:, lo - start : hi - start] = chunk[:, lo - index * size : hi - index * size]
        return out

    def _decode_into(self, index: int, chunk: np.ndarray) -> None:
        """Fill ``chunk`` (``(n_samples, chunk_features)`` C-contiguous float64) with chunk ``index``'s values."""
        path = self.path(index)
        try:
            with open(path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                body, stored = handle.read(max(size - _CRC_BYTES, 0)), handle.read(_CRC_BYTES)
        except FileNotFoundError:
            chunk.fill(np.nan)  # never written: the fill value
            return
        first = index * self.chunk_features
        where = f"store {self.folder.parent} is damaged: the chunk holding features {first}-{first + self.chunk_width(index) - 1}"
        if size < _CRC_BYTES or google_crc32c.value(body) != int.from_bytes(stored, "little"):
            raise DataError(
                f"{where} fails its checksum; convert its table again with 'scalable-assoc ingest' (or give the table itself as the layer)"
            )
        try:
            held = _blosc_sizes(body)
            if held != (chunk.nbytes, len(body)):
                raise ValueError(f"its header says {held[0]} bytes in {held[1]}, not the chunk's {chunk.nbytes} in {len(body)}")
            blosc.decompress(body, chunk)
        except (RuntimeError, ValueError) as error:
            raise DataError(f"{where} does not decompress ({error}); convert its table again with 'scalable-assoc ingest'") from None


def _blosc_sizes(body: bytes) -> tuple[int, int]:
    """``(bytes decompressed, bytes compressed)`` from a Blosc chunk's 16-byte header (bytes 4-7 and 12-15, little-endian)."""
    if len(body) < _BLOSC_HEADER_BYTES:
        return (-1, -1)
    return int.from_bytes(body[4:8], "little"), int.from_bytes(body[12:16], "little")


def chunk_files(array_folder: Path) -> ChunkFiles | None:
    """The :class:`ChunkFiles` of the zarr v3 array at ``array_folder`` if its metadata is exactly the layout this
    module reads, else None (the caller uses zarr)."""
    try:
        meta = json.loads((Path(array_folder) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return _layout(Path(array_folder), meta)


def _layout(folder: Path, meta: dict) -> ChunkFiles | None:
    """:func:`chunk_files` of parsed metadata: every field checked, anything unexpected declined."""
    try:
        shape = [int(n) for n in meta["shape"]]
        grid, keys, codecs = meta["chunk_grid"], meta["chunk_key_encoding"], meta["codecs"]
        chunk_shape = [int(n) for n in grid["configuration"]["chunk_shape"]]
        if (
            meta.get("zarr_format") != 3
            or meta.get("node_type") != "array"
            or meta.get("data_type") != "float64"
            or meta.get("storage_transformers", [])
            or len(shape) != 2
            or grid.get("name") != "regular"
            or chunk_shape[0] != shape[0]
            or chunk_shape[1] < 1
            or keys.get("name") != "default"
            or keys.get("configuration", {}).get("separator", "/") != "/"
            or str(meta.get("fill_value")).lower() != "nan"
            or [codec.get("name") for codec in codecs] != ["bytes", "blosc", "crc32c"]
            or codecs[0].get("configuration", {}).get("endian", "little") != "little"
        ):
            return None
        return ChunkFiles(folder=folder, shape=(shape[0], shape[1]), chunk_features=chunk_shape[1])
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return None


def read_block(path: Path, start: int, stop: int, sample_positions: np.ndarray | None = None) -> np.ndarray:
    """Features ``start:stop`` of the store at ``path``: ``(n, stop - start)`` float64, all samples or those given.

    The chunk files are read directly where the array is laid out as this package writes it
    (:func:`chunk_files`), through zarr otherwise.
    """
    files = chunk_files(Path(path) / "abundance")
    block = files.read_columns(start, stop) if files is not None else _zarr_block(Path(path), start, stop)
    if sample_positions is None or _all_rows(sample_positions, block.shape[0]):
        return block  # a run on every sample (the usual case) needs no block-sized copy
    return block[sample_positions]


def _zarr_block(path: Path, start: int, stop: int) -> np.ndarray:
    """Features ``start:stop`` of the store at ``path`` read through zarr: ``(n_samples, stop - start)`` float64."""
    import zarr  # only for a layout this module does not read: 0.1 s of CPU the workers' fork server spared at its start

    array = zarr.open_array(path / "abundance", mode="r")
    try:
        return np.asarray(array[:, start:stop], dtype=np.float64)
    except ValueError as error:
        if "checksum" not in str(error):
            raise
        # zarr's crc32c per chunk: the bytes on disk are not those written.
        raise DataError(
            f"store {path} is damaged: the chunk holding features {start}-{stop - 1} fails its checksum ({error}); "
            "convert its table again with 'scalable-assoc ingest' (or give the table itself as the layer)"
        ) from None


def _all_rows(positions: np.ndarray, n: int) -> bool:
    """Whether ``positions`` are exactly ``0..n-1`` in order (selecting them would copy the block unchanged)."""
    positions = np.asarray(positions)
    return positions.shape == (n,) and bool(np.array_equal(positions, np.arange(n)))
