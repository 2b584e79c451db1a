"""The abundance store: a Zarr v3 array chunked along features, all samples in a chunk.

Layout of ``<name>.zarr`` (a Zarr v3 group)::

    abundance      float64 (n_samples, n_features), chunks (n_samples, chunk_features),
                   codecs bytes -> zstd -> crc32c (every chunk checksummed), NaN = missing
    feature_nonzero, feature_observed, feature_min_positive
                   (n_features,) per-feature counts over all samples, computed while
                   writing, so a run on all samples needs no separate pass for its
                   prevalence filter and pseudocount
    attributes     sample_ids, feature_ids, source, source_sha256, format_version

Samples are never split across chunks: every regression needs all samples of a
feature, so a task reads whole chunks and never communicates with another.
Stores are written to a temporary folder and renamed, so a half-written store
is never mistaken for a complete one.

A store can also hold several layers (``scalable-assoc ingest --layer NAME``, once
per layer): its root group is marked ``scalable_assoc_store: layers`` and each
layer is a sub-group ``<name>/`` laid out as above, written and renamed into place
on its own, so adding a layer never touches the others (nor their checksums).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from scalable_assoc.errors import DataError
from scalable_assoc.io.atomic import write_atomically
from scalable_assoc.io.tables import AbundanceTable, TableStream
from scalable_assoc.plan.blocks import STORE_LAYER_NAME
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.stats.transforms import FeatureSummary, feature_summary

logger = logging.getLogger(__name__)

SUMMARY_ARRAYS = ("feature_nonzero", "feature_observed", "feature_min_positive")
#: Per-sample sum over every feature, stored at conversion (stores written before it lack it).
SAMPLE_TOTALS = "sample_totals"

STORE_FORMAT_VERSION = 1
#: The root attribute (and its value) that marks a store holding several layers.
LAYERED_STORE_KEY, LAYERED_STORE_VALUE = "scalable_assoc_store", "layers"
#: Target uncompressed bytes per chunk: large enough that per-task overhead is
#: negligible, small enough that a worker holds a few chunks comfortably.
TARGET_CHUNK_BYTES = 32 * 2**20


def default_chunk_features(n_samples: int, n_features: int, requested: int | None = None) -> int:
    """Features per chunk: ``requested`` if given, else so that one chunk is about :data:`TARGET_CHUNK_BYTES`; 1..n_features."""
    width = requested or max(1, TARGET_CHUNK_BYTES // (8 * max(n_samples, 1)))
    return int(max(1, min(n_features, width)))


@dataclass(frozen=True)
class AbundanceStore:
    """An opened store. Blocks are read on demand; nothing is held in memory."""

    path: Path
    sample_ids: tuple[str, ...]
    feature_ids: tuple[str, ...]
    chunk_features: int
    source_sha256: str
    #: what the reader left out or changed (TableStream.notes), and sample IDs as written -> as used
    notes: tuple[str, ...] = ()
    renamed_samples: tuple[tuple[str, str], ...] = ()

    @property
    def n_samples(self) -> int:
        """Number of samples (rows)."""
        return len(self.sample_ids)

    @property
    def n_features(self) -> int:
        """Number of features (columns)."""
        return len(self.feature_ids)

    def block_bounds(self) -> list[tuple[int, int]]:
        """``(start, stop)`` feature ranges, one per Zarr chunk."""
        size = self.chunk_features
        return [(start, min(start + size, self.n_features)) for start in range(0, self.n_features, size)]

    def read_block(self, start: int, stop: int, sample_positions: np.ndarray | None = None) -> np.ndarray:
        """Features ``start:stop`` for all samples (or the given sample positions): ``(n, stop - start)`` float64."""
        return read_block(self.path, start, stop, sample_positions)

    def stored_sample_totals(self) -> np.ndarray | None:
        """``(n_samples,)`` each sample's sum over every feature (missing values skipped), if the store holds it."""
        try:
            return np.asarray(zarr.open_array(self.path / SAMPLE_TOTALS, mode="r")[:])
        except (KeyError, FileNotFoundError):
            return None

    def stored_feature_summary(self, start: int, stop: int) -> FeatureSummary | None:
        """Per-feature counts over all samples for features ``start:stop``, if the store holds them."""
        try:
            arrays = [np.asarray(zarr.open_array(self.path / name, mode="r")[start:stop]) for name in SUMMARY_ARRAYS]
        except (KeyError, FileNotFoundError):  # a store written before the summaries existed
            return None
        return FeatureSummary(nonzero=arrays[0], observed=arrays[1], min_positive=arrays[2])


def read_block(path: Path, start: int, stop: int, sample_positions: np.ndarray | None = None) -> np.ndarray:
    """Features ``start:stop`` of the store at ``path``: ``(n, stop - start)`` float64, all samples or those given."""
    array = zarr.open_array(Path(path) / "abundance", mode="r")
    try:
        block = np.asarray(array[:, start:stop], dtype=np.float64)
    except ValueError as error:
        if "checksum" not in str(error):
            raise
        # zarr's crc32c per chunk: the bytes on disk are not those written.
        raise DataError(
            f"store {path} is damaged: the chunk holding features {start}-{stop - 1} fails its checksum ({error}); "
            "convert its table again with 'scalable-assoc ingest' (or give the table itself as the layer)"
        ) from None
    if sample_positions is None or _all_rows(sample_positions, block.shape[0]):
        return block  # a run on every sample (the usual case) needs no block-sized copy
    return block[sample_positions]


def _all_rows(positions: np.ndarray, n: int) -> bool:
    """Whether ``positions`` are exactly ``0..n-1`` in order (selecting them would copy the block unchanged)."""
    positions = np.asarray(positions)
    return positions.shape == (n,) and bool(np.array_equal(positions, np.arange(n)))


def write_store(path: Path, table: AbundanceTable, source_sha256: str, chunk_features: int | None = None) -> AbundanceStore:
    """Write ``table`` as a feature-chunked, checksummed Zarr v3 store (atomically)."""
    return write_store_blocks(
        path,
        table.sample_ids,
        table.feature_ids,
        lambda start, stop: table.values[:, start:stop],
        str(table.source),
        source_sha256,
        chunk_features,
    )


def write_table_stream(path: Path, stream: TableStream, source_sha256: str, chunk_features: int | None = None) -> AbundanceStore:
    """Write a :class:`TableStream` as a store, holding about one chunk of it in memory at a time."""
    n_samples, n_features = len(stream.sample_ids), len(stream.feature_ids)
    chunk = default_chunk_features(n_samples, n_features, chunk_features)
    blocks = stream.blocks(chunk)

    def next_block(start: int, stop: int) -> np.ndarray:
        # write_store_blocks asks for the chunks in order, which is the order the stream yields them
        try:
            return next(blocks)
        except StopIteration:
            raise ValueError(f"{stream.source}: the table ended before feature {start}") from None

    try:
        return write_store_blocks(
            path,
            stream.sample_ids,
            stream.feature_ids,
            next_block,
            str(stream.source),
            source_sha256,
            chunk,
            progress=f"converting {Path(str(stream.source)).name}",
            extra_attrs=_stream_attrs(stream),
        )
    finally:
        # A stream that failed or stopped part-way removes its temporary files now, not when it is garbage-collected.
        close = getattr(blocks, "close", None)
        if close is not None:
            close()


def write_store_blocks(
    path: Path,
    sample_ids: Sequence[str],
    feature_ids: Sequence[str],
    block: Callable[[int, int], np.ndarray],
    source: str,
    source_sha256: str,
    chunk_features: int | None = None,
    progress: str | None = None,
    extra_attrs: dict | None = None,
) -> AbundanceStore:
    """Write a store whose values come one chunk at a time: ``block(start, stop)`` -> ``(n_samples, stop - start)``.

    Only one chunk is in memory at once, so a table larger than memory can be
    written from a generator or a streaming reader. Writes are whole chunks
    (never two writers on one chunk) into a temporary folder renamed at the end.
    ``progress`` (a label such as ``converting x.tsv``) logs progress messages
    (phase ``convert``) as the blocks are written. ``extra_attrs`` (``notes``,
    ``renamed_samples``) are stored with the other attributes.
    """
    n_samples, n_features = len(sample_ids), len(feature_ids)
    chunk = default_chunk_features(n_samples, n_features, chunk_features)

    def writer(temporary: Path) -> None:
        group = zarr.open_group(temporary, mode="w", zarr_format=3)
        group.attrs.update(
            {
                "format_version": STORE_FORMAT_VERSION,
                "sample_ids": list(sample_ids),
                "feature_ids": list(feature_ids),
                "source": source,
                "source_sha256": source_sha256,
                **(extra_attrs or {}),
            }
        )
        array = group.create_array(
            "abundance",
            shape=(n_samples, n_features),
            chunks=(n_samples, chunk),
            dtype="float64",
            fill_value=np.nan,
            compressors=[ZstdCodec(level=3), Crc32cCodec()],
        )
        summaries = {
            name: np.empty(n_features, dtype=dtype) for name, dtype in zip(SUMMARY_ARRAYS, ("int64", "int64", "float64"), strict=True)
        }
        sample_totals = np.zeros(n_samples)  # per sample, over every feature: says whether values are percentages or fractions
        reporter = None
        if progress is not None:
            reporter = ProgressReporter(logger, "convert", -(-n_features // chunk), "feature blocks", label=progress)
            reporter.start()
        for start in range(0, n_features, chunk):
            stop = min(start + chunk, n_features)
            values = np.asarray(block(start, stop), dtype=np.float64)
            if values.shape != (n_samples, stop - start):
                raise ValueError(f"block({start}, {stop}) has shape {values.shape}, expected {(n_samples, stop - start)}")
            array[:, start:stop] = values
            summary = feature_summary(values)
            summaries["feature_nonzero"][start:stop] = summary.nonzero
            summaries["feature_observed"][start:stop] = summary.observed
            summaries["feature_min_positive"][start:stop] = summary.min_positive
            sample_totals += np.nansum(values, axis=1)
            if reporter is not None:
                reporter.advance()
        for name, values in summaries.items():
            group.create_array(name, data=values, chunks=(max(n_features, 1),), compressors=[ZstdCodec(level=3), Crc32cCodec()])
        group.create_array(SAMPLE_TOTALS, data=sample_totals, chunks=(max(n_samples, 1),), compressors=[ZstdCodec(level=3), Crc32cCodec()])

    write_atomically(path, writer)
    return open_store(path)


def store_layers(path: Path) -> tuple[str, ...] | None:
    """The layers of a store holding several (sorted), or None for a single-layer store or anything else."""
    try:
        attrs = json.loads((path / "zarr.json").read_text(encoding="utf-8")).get("attributes", {})
    except (OSError, ValueError):
        return None
    if not isinstance(attrs, dict) or attrs.get(LAYERED_STORE_KEY) != LAYERED_STORE_VALUE:
        return None
    # A layer being written is a hidden temporary folder until it is renamed into place.
    return tuple(sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").is_file()))


def check_layer_name(name: str, what: str) -> str:
    """``name`` if it can name a layer of a store (a folder inside it), else a :class:`DataError` naming ``what``."""
    if not STORE_LAYER_NAME.fullmatch(name):
        raise DataError(f"{what}: a layer name is letters, digits, '_', '-' and '.', not starting with '.', got {name!r}")
    return name


def create_layered_store(path: Path) -> None:
    """Make ``path`` an empty store for several layers (atomically); nothing is done if it already is one."""
    if store_layers(path) is not None:
        return

    def writer(temporary: Path) -> None:
        group = zarr.open_group(temporary, mode="w", zarr_format=3)
        group.attrs.update({LAYERED_STORE_KEY: LAYERED_STORE_VALUE, "format_version": STORE_FORMAT_VERSION})

    try:
        write_atomically(path, writer)
    except OSError:
        # Another ingest created it between the check and the rename: fine if it made the same kind of store.
        if store_layers(path) is None:
            raise


def layer_path(path: Path, layer: str | None) -> Path:
    """The folder of one layer's store: ``path`` itself for a single-layer store, ``path/layer`` for a store of several.

    Raises :class:`DataError` naming the layers held when ``layer`` is missing from (or needed by) a store of several,
    and when a layer is named for a single-layer store.
    """
    layers = store_layers(path)
    if layers is None:
        if layer is not None:
            raise DataError(
                f"{path}: a single-layer store; it holds no layer '{layer}' (name a layer only for a store made by 'ingest --layer')"
            )
        return path
    if layer is None:
        raise DataError(
            f"{path}: a store of several layers ({', '.join(layers) or 'none yet'}); name the layer to read "
            f"({path}/<layer>, or 'store_layer' in a plan)"
        )
    if layer not in layers:
        raise DataError(f"{path}: no layer '{layer}' in this store; it holds {', '.join(layers) or 'no layer yet'}")
    return path / layer


def open_store(path: Path, layer: str | None = None) -> AbundanceStore:
    """Open a store written by :func:`write_store` (``layer``: one layer of a store holding several), checking its layout."""
    path = layer_path(path, layer) if (path / "zarr.json").is_file() else path
    if not (path / "zarr.json").is_file():
        raise DataError(f"{path}: not a scalable-assoc store (no zarr.json); create one with 'scalable-assoc ingest'")
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        array = zarr.open_array(path / "abundance", mode="r")
    except (KeyError, ValueError, FileNotFoundError) as error:
        raise DataError(f"{path}: not a readable scalable-assoc store: {error}") from None
    for key in ("sample_ids", "feature_ids"):
        if key not in attrs:
            raise DataError(f"{path}: store attribute '{key}' is missing; re-create the store with 'scalable-assoc ingest'")
    sample_ids = tuple(str(i) for i in cast(list, attrs["sample_ids"]))
    feature_ids = tuple(str(i) for i in cast(list, attrs["feature_ids"]))
    shape = tuple(array.shape)
    if shape != (len(sample_ids), len(feature_ids)):
        raise DataError(f"{path}: array shape {shape} does not match its {len(sample_ids)} sample and {len(feature_ids)} feature IDs")
    chunks = tuple(array.chunks)
    if chunks[0] != shape[0]:
        raise DataError(f"{path}: chunks split the samples ({chunks}); every chunk must hold all samples")
    return AbundanceStore(
        path=path,
        sample_ids=sample_ids,
        feature_ids=feature_ids,
        chunk_features=int(chunks[1]) if shape[1] else 1,
        source_sha256=str(attrs.get("source_sha256", "")),
        notes=tuple(str(n) for n in cast(list, attrs.get("notes", []))),
        renamed_samples=tuple((str(a), str(b)) for a, b in cast(list, attrs.get("renamed_samples", []))),
    )


def _stream_attrs(stream: TableStream) -> dict:
    """The store attributes a stream adds (only those it has, so other stores keep their attributes)."""
    attrs: dict = {}
    if stream.notes:
        attrs["notes"] = list(stream.notes)
    if stream.renamed_samples:
        attrs["renamed_samples"] = [list(pair) for pair in stream.renamed_samples]
    return attrs
