"""Writing a store's small arrays (per-feature counts, per-sample sums, the rare cells) and its attributes at once.

Their files are the bytes zarr writes for ``group.create_array(name, data=...)`` and
``group.update_attributes(...)``; tests compare them with zarr's own, byte for byte.

- An array of int32, int64 or float64 values with the store's codecs (``bytes``,
  ``zstd`` without its checksum, ``crc32c``) is encoded here (:func:`_array_files`):
  its ``zarr.json`` and its chunks (the values little-endian, the last chunk padded
  with the fill value 0, compressed by numcodecs' Zstd as zarr's codec does, then
  their CRC-32C appended; a chunk all zeros left out, as zarr leaves out a chunk
  equal to the fill value). Through zarr, even into a store in memory, each array
  took ~1 ms of its machinery (dtype parsing, metadata objects, an event-loop hop per
  codec): ~12 ms a store of 11 arrays, against 0.5 ms here.
- Any other array goes through zarr into a store in memory, all of them in one pass
  of its event loop (:func:`_encoded_by_zarr`); on the store on disk each
  ``create_array`` took ~4 ms, a file thread and back for every key.
- The group's ``zarr.json`` (its attributes: every sample and feature ID) is the JSON
  zarr writes (:func:`group_metadata`), without zarr's deep copy of every value first
  (``dataclasses.asdict``), 5 of the 7 ms it took for a group of 7,656 sample IDs.

They are read back here too (:func:`side_values`), when their ``zarr.json`` is that
layout: the 11 arrays of the reference species store took 77-94 ms through zarr
and 8-10 ms here, and a run reads them for every layer before its first fit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import google_crc32c
import numpy as np
import zarr
from numcodecs import Zstd
from zarr.api.asynchronous import open_group
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from scalable_assoc.errors import DataError
from scalable_assoc.io.chunk_files import read_chunk_file


@dataclass(frozen=True)
class SideArray:
    """One small array of a store: its values and the length of its chunks (``chunk`` elements, ``data`` 1-D)."""

    data: np.ndarray
    chunk: int


def write_side_arrays(folder: Path, arrays: Mapping[str, SideArray], compressors: list, attributes: dict) -> None:
    """Write the 1-D ``arrays`` of the Zarr v3 group at ``folder`` (its sub-folders) and its ``attributes`` (its
    ``zarr.json``, replacing the one there), as zarr writes them: the same bytes as ``create_array(name,
    data=array.data, chunks=(array.chunk,), compressors=compressors)`` of each on the group opened on disk and
    ``update_attributes(attributes)`` of a group created without any.

    ``folder`` is a store being written in a temporary folder (renamed into place once complete), so a file written
    here is never seen half-written; an array already in ``folder`` under one of these names is overwritten.
    """
    (folder / GROUP_METADATA).write_bytes(group_metadata(attributes))
    files: dict[str, bytes] = {}
    through_zarr: dict[str, SideArray] = {}
    for name, array in arrays.items():
        own = _array_files(array, compressors)
        if own is None:
            through_zarr[name] = array
        else:
            files.update({f"{name}/{key}": content for key, content in own.items()})
    if through_zarr:
        files.update(_encoded_by_zarr(through_zarr, compressors))
    for key, content in files.items():
        target = folder / key
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)


#: The metadata file of a Zarr v3 group or array.
GROUP_METADATA = "zarr.json"


def group_metadata(attributes: dict) -> bytes:
    """The ``zarr.json`` zarr writes for a Zarr v3 group holding ``attributes`` (JSON values: dicts, lists, strings,
    numbers, None): its ``GroupMetadata(attributes).to_buffer_dict()``, without the deep copy of every value."""
    content = {"attributes": attributes, "zarr_format": 3, "node_type": "group"}
    return json.dumps(content, indent=zarr.config.get("json_indent"), allow_nan=True).encode()


#: The dtypes :func:`_array_files` encodes, and their fill value (zarr's default, 0) as zarr writes it in ``zarr.json``.
_FILL_VALUES: dict[np.dtype, int | float] = {np.dtype("int32"): 0, np.dtype("int64"): 0, np.dtype("float64"): 0.0}


def _array_files(array: SideArray, compressors: list) -> dict[str, bytes] | None:
    """The files of a 1-D array (``zarr.json``, ``c/<i>`` per chunk) as ``create_array(data=array.data,
    chunks=(array.chunk,), compressors=compressors)`` writes them; None unless its dtype is in :data:`_FILL_VALUES`
    and ``compressors`` are zstd without its checksum, then crc32c (the store's side arrays)."""
    data = np.asarray(array.data)
    fill = _FILL_VALUES.get(data.dtype)
    codecs = [BytesCodec(endian="little"), *compressors]
    if fill is None or data.ndim != 1 or array.chunk < 1 or not _zstd_then_crc32c(compressors):
        return None
    metadata = {
        "shape": [data.size],
        "data_type": data.dtype.name,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [array.chunk]}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": fill,
        "codecs": [codec.to_dict() for codec in codecs],
        "attributes": {},
        "zarr_format": 3,
        "node_type": "array",
        "storage_transformers": [],
    }
    files = {GROUP_METADATA: json.dumps(metadata, allow_nan=True, indent=zarr.config.get("json_indent")).encode()}
    zstd = Zstd.from_config(compressors[0].to_dict()["configuration"])  # as zarr's ZstdCodec makes its numcodecs codec
    values = data.astype(data.dtype.newbyteorder("<"), copy=False)
    for index, start in enumerate(range(0, values.size, array.chunk)):
        chunk = np.zeros(array.chunk, dtype=values.dtype)  # an edge chunk is padded with the fill value (0)
        piece = values[start : start + array.chunk]
        chunk[: piece.size] = piece
        raw = chunk.view(np.uint8)
        if not raw.any():  # every value the fill value 0 (+0.0 for floats, compared by its bits as zarr does): no chunk
            continue
        compressed = bytes(zstd.encode(raw))
        files[f"c/{index}"] = compressed + google_crc32c.value(compressed).to_bytes(4, "little")
    return files


def _zstd_then_crc32c(compressors: list) -> bool:
    """Whether ``compressors`` are exactly zstd (any level, without its own checksum), then crc32c."""
    return (
        len(compressors) == 2
        and isinstance(compressors[0], ZstdCodec)
        and not compressors[0].checksum
        and isinstance(compressors[1], Crc32cCodec)
    )


def _encoded_by_zarr(arrays: Mapping[str, SideArray], compressors: list) -> dict[str, bytes]:
    """Every file of ``arrays`` in a group, by path inside the group (the group's own ``zarr.json`` left out): zarr's
    bytes, written into a store in memory (all arrays at once)."""
    memory = MemoryStore()

    async def encode() -> dict[str, bytes]:
        group = await open_group(store=memory, mode="w", zarr_format=3)
        await asyncio.gather(
            *(group.create_array(name, data=array.data, chunks=(array.chunk,), compressors=compressors) for name, array in arrays.items())
        )
        prototype = default_buffer_prototype()
        files: dict[str, bytes] = {}
        async for key in memory.list():
            buffer = await memory.get(key, prototype)
            if buffer is not None and key != GROUP_METADATA:
                files[key] = buffer.to_bytes()
        return files

    return sync(encode())


def side_values(folder: Path, first: int = 0, stop: int | None = None) -> np.ndarray:
    """Values ``first:stop`` (all by default) of the 1-D array at ``folder``: :func:`read_side_array`, or through zarr
    for another layout. Raises FileNotFoundError when there is no array there."""
    values = read_side_array(folder, first, stop)
    if values is None:
        values = np.asarray(zarr.open_array(folder, mode="r")[first:stop])
    return values


def read_side_array(folder: Path, first: int = 0, stop: int | None = None) -> np.ndarray | None:
    """Values ``first:stop`` of the 1-D array at ``folder`` if its ``zarr.json`` is exactly the layout
    :func:`_array_files` writes, decoded here (only the chunks holding them); None for any other layout.

    A chunk left out is the fill value 0. A chunk whose CRC-32C or size does not match raises DataError naming it.
    Several chunks are decoded in two threads (zstd releases the GIL: 6 chunks of 2^18 values, 9 -> 5.5 ms).
    """
    layout = _own_layout(json.loads((folder / GROUP_METADATA).read_bytes()))
    if layout is None:
        return None
    size, chunk, dtype = layout
    stop = size if stop is None else min(stop, size)
    first = min(max(first, 0), stop)
    out = np.zeros(stop - first, dtype=dtype)
    indices = range(first // chunk, -(-stop // chunk))

    def decode(index: int) -> None:
        _decode_chunk(folder / "c" / str(index), out, index * chunk - first, chunk)

    if len(indices) > 1:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="scalable-assoc-side-read") as pool:
            list(pool.map(decode, indices))
    else:
        for index in indices:
            decode(index)
    return out


def _decode_chunk(path: Path, out: np.ndarray, offset: int, chunk: int) -> None:
    """Decode the chunk file ``path`` (``chunk`` values) into ``out``, its first value at ``out[offset]`` (``offset``
    may be negative and the chunk may end past ``out``: only the overlap is written). No file: left as it is (0)."""
    found = read_chunk_file(path)
    if found is None:  # a chunk of zeros is not written
        return
    body, intact = found
    if not intact:
        raise DataError(f"{path}: the chunk does not match its checksum (the store is damaged; convert its table again)")
    low, high = max(offset, 0), min(offset + chunk, out.size)
    whole = low == offset and high == offset + chunk
    try:
        values = Zstd().decode(body, out=out[low:high] if whole else None)
    except RuntimeError as error:  # numcodecs' error for a frame that does not decompress, or not to this size
        raise DataError(f"{path}: the chunk does not decompress to {chunk} values ({error}; the store is damaged)") from None
    if not whole:
        decoded = np.frombuffer(values, dtype=out.dtype)
        if decoded.size != chunk:
            raise DataError(f"{path}: {decoded.size} values where the array's chunks hold {chunk} (the store is damaged)")
        out[low:high] = decoded[low - offset : high - offset]


def _own_layout(metadata: dict) -> tuple[int, int, np.dtype] | None:
    """``(size, chunk, dtype)`` of an array's metadata if it is a 1-D array as :func:`_array_files` writes it, else None."""
    try:
        dtype = np.dtype(metadata["data_type"]).newbyteorder("<")
        (size,) = metadata["shape"]
        (chunk,) = metadata["chunk_grid"]["configuration"]["chunk_shape"]
        codecs = [(codec["name"], codec.get("configuration", {})) for codec in metadata["codecs"]]
        own = (
            metadata.get("zarr_format") == 3
            and metadata.get("node_type") == "array"
            and np.dtype(metadata["data_type"]) in _FILL_VALUES
            and metadata["chunk_grid"]["name"] == "regular"
            and metadata["chunk_key_encoding"] == {"name": "default", "configuration": {"separator": "/"}}
            and metadata["fill_value"] == 0
            and not metadata.get("storage_transformers")
            and len(codecs) == 3
            and codecs[0] == ("bytes", {"endian": "little"})
            and codecs[1][0] == "zstd"
            and not codecs[1][1].get("checksum", False)
            and codecs[2][0] == "crc32c"
            and isinstance(size, int)
            and isinstance(chunk, int)
            and chunk >= 1
        )
    except (KeyError, TypeError, ValueError):
        return None
    return (size, chunk, dtype) if own else None
