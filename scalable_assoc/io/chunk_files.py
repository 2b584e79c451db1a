"""A store's abundance chunks read and written as the files they are, without zarr's codec pipeline.

A converted store's abundance array (:mod:`scalable_assoc.io.store`) is one row of
``(n_samples, chunk_features)`` chunks, each a file ``c/0/<j>`` holding the chunk's
float64 bytes (C order, little-endian) compressed by Blosc and followed by their
CRC-32C. Here each is read with one ``read``, its checksum checked, and its values
decompressed straight into the block returned; the store writer writes each with
:class:`ChunkWriter` (the bytes zarr writes, compared in the tests).

Why: zarr decodes every chunk through its asynchronous codec pipeline (an event
loop thread, buffer wrappers, a copy of the compressed bytes to strip the checksum,
a copy of the decoded chunk into the block). Reading nine 7,656 x 547 chunks of the
species store took 0.24-0.26 s of CPU through zarr and 0.15-0.18 s here (one
process, 4 alternating rounds), and every fit task reads its chunk: the suite's
per-chunk read was 3x the decompression alone. Writing, zarr has numcodecs compress
every chunk into new bytes (a fresh mapping, first touched 4 kB at a time: the 173 MB
of the limma benchmark's species store were 41,600 page faults of the command's
167,000), copies them once more to append the checksum, in its event-loop thread.
:class:`ChunkWriter` calls c-blosc itself, into a NumPy buffer (NumPy advises huge
pages for large arrays: a fault per 2 MB where the kernel grants them), and writes it
with its checksum: the same files, byte for byte.

Only arrays whose metadata says exactly that layout are read here (:func:`chunk_files`);
for any other (another codec, chunk grid or key encoding, a store from another tool)
it returns None and the caller reads through zarr. :func:`read_block`, how tasks
read a store, does both; it is here, not in :mod:`scalable_assoc.io.store`, so
that the workers, which read blocks only, import neither zarr nor the writer.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
from collections.abc import Callable
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
        found = read_chunk_file(self.path(index))
        if found is None:
            chunk.fill(np.nan)  # never written: the fill value
            return
        body, intact = found
        first = index * self.chunk_features
        where = f"store {self.folder.parent} is damaged: the chunk holding features {first}-{first + self.chunk_width(index) - 1}"
        if not intact:
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


#: Blosc's codes for the shuffles a zarr v3 ``blosc`` codec names in its configuration.
_BLOSC_SHUFFLES = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}


@dataclass(frozen=True)
class BloscSettings:
    """How an array's ``blosc`` codec compresses (its configuration in ``zarr.json``): what Blosc is called with."""

    cname: str
    clevel: int
    shuffle: int  # Blosc's code (:data:`_BLOSC_SHUFFLES`)
    typesize: int
    blocksize: int  # 0: Blosc chooses


@dataclass(frozen=True)
class ChunkWriter:
    """Writes an abundance array's chunks as the files zarr writes for them (:meth:`ChunkFiles.path`).

    A chunk is its values' bytes (C order, little-endian; the last chunk padded with NaN, the fill value)
    compressed by Blosc with the array's settings, then their CRC-32C (4 bytes, little-endian); a chunk
    holding no observed value (NaN only, the fill value) is left out, as zarr leaves it out.
    """

    files: ChunkFiles
    settings: BloscSettings

    def write(self, index: int, values: np.ndarray) -> None:
        """Write chunk ``index`` from ``values``: ``(n_samples, width)`` float64, ``width`` its :meth:`ChunkFiles.chunk_width`."""
        expected = (self.files.shape[0], self.files.chunk_width(index))
        if values.shape != expected:
            raise ValueError(f"chunk {index} of {self.files.folder} takes values of shape {expected}, not {values.shape}")
        if _no_observed_value(values):
            return
        if values.shape[1] < self.files.chunk_features:  # the edge chunk, padded with the fill value as zarr pads it
            chunk = np.full((values.shape[0], self.files.chunk_features), np.nan, dtype="<f8")
            chunk[:, : values.shape[1]] = values
        else:
            chunk = np.ascontiguousarray(values, dtype="<f8")
        encoded = self._compressed(chunk)
        with open(self.files.path(index), "wb") as handle:
            handle.write(encoded.data)
            handle.write(google_crc32c.value(encoded).to_bytes(_CRC_BYTES, "little"))

    def _compressed(self, chunk: np.ndarray) -> np.ndarray:
        """``chunk``'s bytes compressed as numcodecs' ``blosc.compress`` compresses them outside the main thread:
        a read-only uint8 array, Blosc's output buffer itself (no copy made of it)."""
        settings, nbytes = self.settings, chunk.nbytes
        compress = _blosc_compress_ctx()
        if compress is None:
            compressed = blosc.compress(
                chunk, settings.cname.encode(), settings.clevel, settings.shuffle, settings.blocksize, settings.typesize
            )
            return np.frombuffer(compressed, dtype=np.uint8)
        # A NumPy buffer, not bytes: NumPy asks the kernel for huge pages for it (see the module's docstring). Not kept
        # for the next chunk: that held ~20 MB more through the peak of a 50,000-participant conversion.
        capacity = nbytes + blosc.MAX_OVERHEAD
        buffer = np.empty(capacity, dtype=np.uint8)
        size = compress(
            settings.clevel,
            settings.shuffle,
            settings.typesize,
            nbytes,
            chunk.ctypes.data,
            buffer.ctypes.data,
            capacity,
            settings.cname.encode(),
            settings.blocksize,
            1,  # Blosc's own threads: none, as numcodecs outside the main thread (the bytes are the same either way)
        )
        if size <= 0:
            raise RuntimeError(f"error during blosc compression: {size}")
        encoded = buffer[:size]
        encoded.flags.writeable = False  # google_crc32c reads only read-only buffers
        return encoded


def _no_observed_value(values: np.ndarray) -> bool:
    """Whether ``values`` hold NaN only (or nothing); a whole block is looked at only when its first row is all NaN."""
    return values.size == 0 or bool(np.isnan(values[0]).all() and np.isnan(values).all())


@functools.cache
def _blosc_compress_ctx() -> Callable[..., int] | None:
    """c-blosc's ``blosc_compress_ctx`` in numcodecs' Blosc extension (which zarr's ``blosc`` codec calls), or None.

    numcodecs' ``blosc.compress`` returns new bytes for every chunk; called here, the compressed bytes go
    into a buffer the caller gives. None where the extension does not export it (the caller then uses numcodecs).
    """
    try:
        function = ctypes.CDLL(blosc.__file__).blosc_compress_ctx
    except (OSError, AttributeError):
        return None
    size = ctypes.c_size_t
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_int,
        size,
        size,
        ctypes.c_void_p,
        ctypes.c_void_p,
        size,
        ctypes.c_char_p,
        size,
        ctypes.c_int,
    ]
    function.restype = ctypes.c_int
    return function  # type: ignore[no-any-return]


def chunk_writer(array_folder: Path) -> ChunkWriter | None:
    """A :class:`ChunkWriter` of the zarr v3 array at ``array_folder`` (its ``zarr.json`` written) if :func:`chunk_files`
    reads its layout and its ``blosc`` settings are known here, else None (the caller writes through zarr)."""
    files = chunk_files(array_folder)
    if files is None:
        return None
    try:
        meta = json.loads((Path(array_folder) / "zarr.json").read_text(encoding="utf-8"))
        config = meta["codecs"][1]["configuration"]
        settings = BloscSettings(
            cname=str(config["cname"]),
            clevel=int(config["clevel"]),
            shuffle=_BLOSC_SHUFFLES[config["shuffle"]],
            typesize=int(config["typesize"]),
            blocksize=int(config.get("blocksize", 0)),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    files.path(0).parent.mkdir(parents=True, exist_ok=True)
    return ChunkWriter(files, settings)


def read_chunk_file(path: Path) -> tuple[bytes, bool] | None:
    """A chunk file's bytes before its CRC-32C, and whether they match it; None where there is no file (a chunk
    zarr left out: the fill value). One open, then the body and the checksum (zarr's ``crc32c`` codec: 4 bytes,
    little-endian, last) read."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            body, stored = handle.read(max(size - _CRC_BYTES, 0)), handle.read(_CRC_BYTES)
    except FileNotFoundError:
        return None
    return body, size >= _CRC_BYTES and google_crc32c.value(body) == int.from_bytes(stored, "little")


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
