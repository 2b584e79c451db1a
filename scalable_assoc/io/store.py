"""The abundance store: a Zarr v3 array chunked along features, all samples in a chunk.

Layout of ``<name>.zarr`` (a Zarr v3 group)::

    abundance      float64 (n_samples, n_features), chunks (n_samples, chunk_features),
                   codecs bytes -> blosc (lz4, no shuffle) -> crc32c (every chunk checksummed),
                   NaN = missing (stores written with zstd read as they are)
    feature_nonzero, feature_observed, feature_min_positive
                   (n_features,) per-feature counts over all samples, computed while
                   writing, so a run on all samples needs no separate pass for its
                   prevalence filter and pseudocount
    sample_totals  (n_samples,) each sample's sum over every feature
    sample_observed, sample_positive, sample_log_positive, sample_log_pseudo
                   (n_samples,) per-sample sums over every feature (observed values,
                   values > 0, sum of log x over them, sum of log(x + c) with c half
                   the layer's smallest positive value; attribute ``per_sample_sums``
                   holds c and the rare-feature cap)
    rare_features, rare_indptr, rare_samples, rare_values
                   a sparse copy of the non-zero and missing cells of the features
                   with prevalence below the cap, in order of increasing prevalence
                   (:mod:`scalable_assoc.io.rare_cells`); with the sums, a run on all
                   samples composes the per-sample sums of any prevalence filter up to
                   the cap without reading the store again
                   (:mod:`scalable_assoc.stats.sample_sums`)
    attributes     sample_ids, feature_ids, source, source_sha256, format_version

Samples are never split across chunks: every regression needs all samples of a
feature, so a task reads whole chunks and never communicates with another.
Stores are written to a temporary folder and renamed, so a half-written store
is never mistaken for a complete one. The abundance chunks are written as they
come, as the files zarr writes (:mod:`scalable_assoc.io.chunk_files`, without zarr's
cost per chunk); the other arrays and the attributes at the end, in one go
(:mod:`scalable_assoc.io.side_arrays`: the same files, without zarr's cost per array).

A store can also hold several layers (``scalable-assoc ingest --layer NAME``, once
per layer): its root group is marked ``scalable_assoc_store: layers`` and each
layer is a sub-group ``<name>/`` laid out as above, written and renamed into place
on its own, so adding a layer never touches the others (nor their checksums).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import google_crc32c
import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from scalable_assoc.errors import DataError
from scalable_assoc.io.atomic import seal_path, sealed, write_atomically
from scalable_assoc.io.chunk_files import chunk_writer, read_block
from scalable_assoc.io.rare_cells import RareCellsWriter, read_rare_cells
from scalable_assoc.io.side_arrays import SideArray, side_values, write_side_arrays
from scalable_assoc.io.table_values import SmallestPositive
from scalable_assoc.io.tables import AbundanceTable, TableStream
from scalable_assoc.plan.blocks import STORE_LAYER_NAME
from scalable_assoc.process_memory import map_large_allocations, release_freed_memory
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.stats.sample_sums import (
    RARE_PREVALENCE_CAP,
    AllFeatureSums,
    BlockStatistics,
    BlockWorkspace,
    block_log_pseudo,
    block_statistics,
)
from scalable_assoc.stats.transforms import FeatureSummary

logger = logging.getLogger(__name__)

SUMMARY_ARRAYS = ("feature_nonzero", "feature_observed", "feature_min_positive")
#: Per-sample sum over every feature, stored at conversion (stores written before it lack it).
SAMPLE_TOTALS = "sample_totals"
#: Per-sample sums over every feature besides SAMPLE_TOTALS, and the sparse copy of the rare
#: features (stores written before them lack them: a run then sums in a pass over the blocks).
SAMPLE_SUM_ARRAYS = ("sample_observed", "sample_positive", "sample_log_positive", "sample_log_pseudo")
#: The attribute describing the sums (their pseudocount, the rare features' cap). Stores whose sparse copy is in
#: feature order have it as LEGACY_SAMPLE_SUMS_KEY: renamed with the prevalence order, so that a version of the
#: tool reading the copy in feature order finds no sums in a newer store and sums in a pass (as for a store
#: without them) instead of reading the copy in the wrong order.
SAMPLE_SUMS_KEY = "per_sample_sums"
LEGACY_SAMPLE_SUMS_KEY = "sample_sums"
#: At most this many bytes of per-sample sums taken ahead with a reader's final pseudocount (beyond: blocks read back).
SUMMED_AHEAD_BYTES = 64 * 2**20
#: Cells per chunk of the rare-feature arrays. A filter reads the chunks of its removed features' cells whole, the
#: last one mostly for nothing: on 20,000 simulated features (1.4 million cells removed), chunks of 2^18 cells
#: read in 31-36 ms where chunks of 2^20 took 36-62 ms.
RARE_CHUNK_CELLS = 1 << 18
#: At most this many rare cells (12 bytes each, 3 MiB) held in memory while a store is written; beyond, in files beside
#: it (written at the end a chunk at a time from the files mapped, a store's own temporaries ~1 chunk of cells).
RARE_IN_MEMORY_CELLS = 1 << 18

STORE_FORMAT_VERSION = 1
#: The root attribute (and its value) that marks a store holding several layers.
LAYERED_STORE_KEY, LAYERED_STORE_VALUE = "scalable_assoc_store", "layers"
#: Target uncompressed bytes per chunk: large enough that per-task overhead is
#: negligible, small enough that a worker holds a few chunks comfortably.
TARGET_CHUNK_BYTES = 32 * 2**20

#: How the abundance chunks are compressed (Zarr v3's built-in ``blosc`` codec): LZ4 inside Blosc, without shuffling.
#: A store is a working copy that every fit task decompresses, not an archive. Against zstd level -1 (the codec before)
#: on one 7,656 x 547 chunk, one thread: compression 1.6-2.6x and decompression 1.9-2.0x faster (species, 56% zeros:
#: 900 against 490 MB/s, 3,050 against 1,610 MB/s), for stores 3-20% larger (ratio 1.76 against 2.11 on species,
#: 1.54 against 1.81 on the 100,000-feature simulation, 1.05 against 1.08 on pathways). What compresses is the
#: zeros; the float mantissas hardly do, and Blosc's byte shuffle (by 8-byte values) breaks the runs of zero bytes
#: (ratio 1.09 on species), hence none. Readers take the codecs from each array's metadata, so stores written with
#: zstd (at any level) read as before.
#: ``typesize`` only sizes Blosc's blocks here (no shuffle); given, so zarr does not choose a byte shuffle for float64.
ABUNDANCE_COMPRESSOR = BloscCodec(typesize=8, cname="lz4", clevel=5, shuffle="noshuffle")

#: Chunks written between two calls of ``malloc_trim`` (:func:`~scalable_assoc.process_memory.release_freed_memory`)
#: while converting. Each call gives back what the readers' threads freed (text, parsed values: ~19 MB a chunk of the
#: limma benchmark's 307 MB table), which the next chunk's text then touches afresh: a call after every chunk was
#: 48,000 of the conversion's 78,000 page faults there (0.15-0.25 s of system time on a VM that backs pages lazily).
#: Every 4 chunks bounds what a long conversion keeps; the 50,000-participant peaks rose by 2-15 MB (species
#: 306-311 -> 308-312 MB, pathways 277 -> 288-290 MB), the same as with no call at all.
TRIM_EVERY_CHUNKS = 4

#: Threads summing the rows of a block read back for the per-sample sums at the end of a conversion.
READ_BACK_THREADS = 2


def abundance_compressors() -> list:
    """The codecs after ``bytes`` of a store's abundance chunks: :data:`ABUNDANCE_COMPRESSOR`, then a CRC-32C of the rest."""
    return [ABUNDANCE_COMPRESSOR, Crc32cCodec()]


#: The zstd level of a store's other arrays (:func:`side_compressors`). Level 1, not 3: the largest of them, the
#: sparse copy of the rare features, is compressed at the end of a conversion while nothing else runs (the first fit
#: waits for the finished store). On the limma benchmark's table (1.45 million rare cells) writing it took 0.136 ->
#: 0.072 s; the cells' values hardly compress at any level (ratio 1.10 -> 1.06), their sample indices 2.82 -> 2.19,
#: and the store 186.9 -> 187.7 MB. Readers take the level from each array's metadata: stores written at level 3 read
#: as before.
SIDE_ZSTD_LEVEL = 1


def side_compressors() -> list:
    """The codecs after ``bytes`` of a store's other arrays (per-feature counts, per-sample sums, the sparse copy of
    the rare features): zstd at :data:`SIDE_ZSTD_LEVEL`, then a CRC-32C, one list for all of them."""
    return [ZstdCodec(level=SIDE_ZSTD_LEVEL), Crc32cCodec()]


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
            return side_values(self.path / SAMPLE_TOTALS)
        except (KeyError, FileNotFoundError):
            return None

    def stored_sample_sums(self) -> tuple[AllFeatureSums, float] | None:
        """Per-sample sums over every feature and the prevalence cap of the rare-feature copy, if the store holds them."""
        try:
            group_attrs = json.loads((self.path / "zarr.json").read_bytes()).get("attributes", {})
            attrs = group_attrs.get(SAMPLE_SUMS_KEY, group_attrs.get(LEGACY_SAMPLE_SUMS_KEY))
            if not isinstance(attrs, dict):
                return None
            arrays = [side_values(self.path / name) for name in (*SAMPLE_SUM_ARRAYS, SAMPLE_TOTALS)]
        except (KeyError, FileNotFoundError):  # a store written before the sums existed
            return None
        observed, positive, log_positive, log_pseudo, total = arrays
        pseudocount = attrs.get("pseudocount")
        sums = AllFeatureSums(
            observed, total, positive, log_positive, log_pseudo, float(pseudocount) if pseudocount is not None else float("nan")
        )
        return sums, float(attrs["rare_prevalence_cap"])

    def rare_cells(self, chosen: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The cells of the ``chosen`` features (bool ``(n_features,)``) in the sparse copy of the rare features.

        Yields ``(sample index, value)`` arrays one stored chunk of cells at a time (chunks holding
        none of them are not read); features without a sparse copy have no cells here (:func:`read_rare_cells`).
        """
        return read_rare_cells(self.path, chosen)

    def stored_feature_summary(self, start: int, stop: int) -> FeatureSummary | None:
        """Per-feature counts over all samples for features ``start:stop``, if the store holds them."""
        try:
            arrays = [side_values(self.path / name, start, stop) for name in SUMMARY_ARRAYS]
        except (KeyError, FileNotFoundError):  # a store written before the summaries existed
            return None
        return FeatureSummary(nonzero=arrays[0], observed=arrays[1], min_positive=arrays[2])


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
            block = next(blocks)
        except StopIteration:
            raise ValueError(f"{stream.source}: the table ended before feature {start}") from None
        if stop == n_features:
            # Run the reader to its end now: its last checks run, and it lets go of the text and the block it held
            # (a chunk) before the store's sums are finished, rather than when the stream is closed.
            for _ in blocks:
                raise ValueError(f"{stream.source}: the table holds more than its {n_features} features")
        return block

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
            smallest_positive=stream.smallest_positive,
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
    smallest_positive: SmallestPositive | None = None,
) -> AbundanceStore:
    """Write a store whose values come one chunk at a time: ``block(start, stop)`` -> ``(n_samples, stop - start)``.

    Only one chunk is in memory at once, so a table larger than memory can be
    written from a generator or a streaming reader. Writes are whole chunks
    (never two writers on one chunk) into a temporary folder renamed at the end.
    ``progress`` (a label such as ``converting x.tsv``) logs progress messages
    (phase ``convert``) as the blocks are written. ``extra_attrs`` (``notes``,
    ``renamed_samples``) are stored with the other attributes. ``smallest_positive``: the values' smallest
    value > 0 once a reader knows it (the half-minimum sums then read no block back).
    """
    n_samples, n_features = len(sample_ids), len(feature_ids)
    chunk = default_chunk_features(n_samples, n_features, chunk_features)

    map_large_allocations()  # chunk-sized buffers mapped and unmapped: a steady peak (see its docstring)

    attributes = {
        "format_version": STORE_FORMAT_VERSION,
        "sample_ids": list(sample_ids),
        "feature_ids": list(feature_ids),
        "source": source,
        "source_sha256": source_sha256,
        **(extra_attrs or {}),
    }

    def writer(temporary: Path) -> None:
        group = zarr.open_group(temporary, mode="w", zarr_format=3)
        array = group.create_array(
            "abundance",
            shape=(n_samples, n_features),
            chunks=(n_samples, chunk),
            dtype="float64",
            fill_value=np.nan,
            compressors=abundance_compressors(),
        )
        summaries = {
            name: np.empty(n_features, dtype=dtype) for name, dtype in zip(SUMMARY_ARRAYS, ("int64", "int64", "float64"), strict=True)
        }
        sample_totals = np.zeros(n_samples)  # per sample, over every feature: says whether values are percentages or fractions
        counts = summaries["feature_nonzero"], summaries["feature_observed"]
        sums = _SampleSumsWriter(temporary, group, array, n_samples, *counts, smallest_positive)
        reporter = None
        if progress is not None:
            reporter = ProgressReporter(logger, "convert", -(-n_features // chunk), "feature blocks", label=progress)
            reporter.start()
        # One block is compressed and written in a thread while the next is read (parsed, for a text table): Blosc
        # and the checksum release the GIL, so the two overlap; at most two blocks are held.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalable-assoc-store-write") as writing:
            write_chunk = _chunk_writing(array, temporary / "abundance")
            _write_blocks(writing, write_chunk, block, n_samples, n_features, chunk, summaries, sample_totals, sums, reporter)
        release_freed_memory()  # before the sums are finished, which may read blocks back
        side = {name: SideArray(values, max(n_features, 1)) for name, values in summaries.items()}
        side[SAMPLE_TOTALS] = SideArray(sample_totals, max(n_samples, 1))
        sums_attributes, sums_arrays = sums.finish()
        attributes.update(sums_attributes)
        # The attributes are written once, at the end: zarr's pure-Python JSON encoder writes the whole zarr.json
        # (every sample ID) each time, which for each key of attrs.update took 70-160 ms a store of 7,656 samples.
        write_side_arrays(temporary, {**side, **sums_arrays}, side_compressors(), attributes)

    write_atomically(path, writer)
    # What open_store(path) reads back (a test checks it), without parsing the metadata just written (3 ms a store).
    return _store_of(path, attributes, chunk)


def _chunk_writing(array: zarr.Array, folder: Path) -> Callable[[int, np.ndarray], None]:
    """How a block of ``array`` (its files in ``folder``) is written: ``write(chunk index, (n_samples, chunk width) values)``.

    As its chunk file (:class:`~scalable_assoc.io.chunk_files.ChunkWriter`, the bytes zarr writes) where the array is
    laid out as :mod:`~scalable_assoc.io.chunk_files` reads it (every array made here), else through zarr.
    """
    writer = chunk_writer(folder)
    if writer is not None:
        return writer.write
    # zarr compares every chunk with the fill value (NaN) before writing it, to leave out a chunk holding nothing
    # else: isnan of the chunk twice and their compare. A block with an observed value in its first row is written
    # without that check (same chunk written); any other block keeps it.
    observed_array = array.with_config({"write_empty_chunks": True})
    size = array.chunks[1]

    def through_zarr(index: int, values: np.ndarray) -> None:
        target = observed_array if values.size and not np.isnan(values[0]).all() else array
        target[:, index * size : index * size + values.shape[1]] = values

    return through_zarr


def _write_blocks(
    writing: ThreadPoolExecutor,
    write_chunk: Callable[[int, np.ndarray], None],
    block: Callable[[int, int], np.ndarray],
    n_samples: int,
    n_features: int,
    chunk: int,
    summaries: dict[str, np.ndarray],
    sample_totals: np.ndarray,
    sums: _SampleSumsWriter,
    reporter: ProgressReporter | None,
) -> None:
    """Write every ``(n_samples, chunk)`` block with ``write_chunk`` (in ``writing``'s thread) and add up its summaries here."""
    pending: Future | None = None
    workspace = BlockWorkspace()  # a slab's scratch and a block's mask, filled again at every block
    for start in range(0, n_features, chunk):
        stop = min(start + chunk, n_features)
        values = np.asarray(block(start, stop), dtype=np.float64)
        if values.shape != (n_samples, stop - start):
            raise ValueError(f"block({start}, {stop}) has shape {values.shape}, expected {(n_samples, stop - start)}")
        if pending is not None:
            pending.result()  # the previous block is written (or its error raised) before the next is handed over
        pending = writing.submit(write_chunk, start // chunk, values)
        statistics = block_statistics(values, sums.pseudocount_ahead(), workspace)
        sample_totals += statistics.total
        summaries["feature_nonzero"][start:stop] = statistics.summary.nonzero
        summaries["feature_observed"][start:stop] = statistics.summary.observed
        summaries["feature_min_positive"][start:stop] = statistics.summary.min_positive
        sums.add_block(start, values, statistics)
        del values, statistics
        if (start // chunk) % TRIM_EVERY_CHUNKS == TRIM_EVERY_CHUNKS - 1:
            release_freed_memory()
        if reporter is not None:
            reporter.advance()
    if pending is not None:
        pending.result()


class _SampleSumsWriter:
    """Accumulates, while a store is written, its per-sample sums and the sparse copy of its rare features.

    The half-minimum pseudocount ``c`` of the whole layer is known only after
    the last block. Each block's ``log(x + c)`` sums use the running candidate
    (half the smallest positive value so far); at the end, only the blocks
    summed with a candidate other than the final ``c`` are read back from the
    store being written and summed again. A reader that knows the table's
    smallest value before its first block (:class:`~scalable_assoc.io.table_values.SmallestPositive`:
    wide tables; MetaPhlAn tables give a guess) gives the final ``c`` from the start: those blocks are summed with it
    as they pass (up to :data:`SUMMED_AHEAD_BYTES`) and none is read back; their sums with an earlier candidate,
    which would be discarded, are not taken (should the reader's minimum not be the table's, the final ``c``'s
    blocks are read back and summed in the same order instead). Tables floored at a print precision
    (MetaPhlAn, HUMAnN) often meet their minimum in an early block.
    """

    def __init__(
        self,
        folder: Path,
        group: zarr.Group,
        array: zarr.Array,
        n_samples: int,
        nonzero: np.ndarray,
        observed: np.ndarray,
        known: SmallestPositive | None = None,
    ) -> None:
        self.group, self.array, self.n_samples, self.known = group, array, n_samples, known
        self.sums = [np.zeros(n_samples, dtype=np.int64), np.zeros(n_samples, dtype=np.int64), np.zeros(n_samples)]
        # candidate c -> (sum with c of its blocks, None when not taken; the blocks)
        self.by_candidate: dict[float, tuple[np.ndarray | None, list[tuple[int, int]]]] = {}
        self.smallest = np.inf
        # The store's per-feature counts over all samples (values > 0, observed values), which the writer fills block
        # by block before each add_block: the rare cells' order at the end.
        self.nonzero, self.observed = nonzero, observed
        self.rare = RareCellsWriter(folder, nonzero.size, RARE_CHUNK_CELLS, RARE_IN_MEMORY_CELLS)
        self.with_final: dict[tuple[int, int], np.ndarray] = {}  # (start, stop) -> its log(x + c) sums with the final c

    def pseudocount_ahead(self) -> float | None:
        """The pseudocount a block's ``log(x + c)`` sums will most likely be taken with, before it is seen.

        Half the reader's smallest value when it knows it (every block's sums are then taken with it), else the
        running candidate (unchanged unless the block holds a smaller value than those before; None before the
        first value > 0). :meth:`add_block` sums the block again with another pseudocount where it needs one.
        """
        known = self.known.value if self.known is not None else None
        if known is not None and np.isfinite(known):
            return known / 2.0
        return self.smallest / 2.0 if np.isfinite(self.smallest) else None

    def add_block(self, start: int, values: np.ndarray, statistics: BlockStatistics) -> None:
        """Add the sums of features ``start:start + m`` (``values`` ``(n, m)``, ``statistics`` their :func:`block_statistics`)."""
        self.sums[0] += statistics.observed
        self.sums[1] += statistics.positive
        self.sums[2] += statistics.log_positive
        self.smallest = min(self.smallest, float(np.min(statistics.summary.min_positive, initial=np.inf)))

        def log_pseudo(pseudocount: float) -> np.ndarray:
            if statistics.log_pseudo is not None and statistics.pseudocount == pseudocount:
                return statistics.log_pseudo
            return block_log_pseudo(values, pseudocount)

        candidate = self.smallest / 2.0
        if np.isfinite(candidate):
            bounds = (start, start + values.shape[1])
            # The reader's smallest value of the whole table, when it knows it (a wide table): the block's sums with the
            # final pseudocount are taken now, while the block is here, instead of reading it back in finish(). Added in
            # the same order as blocks read back, so the store has the same bits whichever reader wrote it.
            known = self.known.value if self.known is not None else None
            final = known / 2.0 if known is not None and np.isfinite(known) else None
            total, blocks = self.by_candidate.get(candidate, (np.zeros(self.n_samples), []))
            # Sums with a candidate other than the known final one would be discarded in finish(): not taken (None),
            # unless the reader's minimum proves wrong, when finish() sums the group's blocks read back instead.
            skip = total is None or (final is not None and candidate != final)
            self.by_candidate[candidate] = (None if skip else total + log_pseudo(candidate), [*blocks, bounds])
            if final is not None and candidate != final and (len(self.with_final) + 1) * 8 * self.n_samples <= SUMMED_AHEAD_BYTES:
                self.with_final[bounds] = log_pseudo(final)
        self.rare.add_block(start, *statistics.rare)

    def _read_back_sums(self, start: int, stop: int, pseudocount: float, pool: ThreadPoolExecutor) -> np.ndarray:
        """``(n_samples,)`` :func:`block_log_pseudo` of features ``start:stop`` read back from the store being written.

        The block's rows are summed in ``pool``'s threads, a share each: the read-back runs after the last block is
        written, when the reader's thread is done, so one thread would leave the second core idle (NumPy's log and
        sums release the GIL). Each sum is over one row, so the bits are those of the whole block at once; one
        decoded chunk is held, as before (threads reading a block each would hold one each).
        """
        values = np.asarray(self.array[:, start:stop], dtype=np.float64)
        step = -(-values.shape[0] // READ_BACK_THREADS) or 1
        shares = [values[first : first + step] for first in range(0, values.shape[0], step)]
        del values
        parts = list(pool.map(block_log_pseudo, shares, [pseudocount] * len(shares)))
        del shares
        release_freed_memory()  # zarr's decoding threads free a compressed and a decoded chunk each time
        return np.concatenate(parts) if parts else np.zeros(0)

    def finish(self) -> tuple[dict, dict[str, SideArray]]:
        """The store attribute describing the sums, and the arrays still to write: the sums, the order and offsets of
        the sparse copy and, when they were held in memory (not written from files here), its cells."""
        arrays = self.rare.finish(self.group, side_compressors(), self.nonzero, self.observed, RARE_PREVALENCE_CAP)
        pseudocount = self.smallest / 2.0 if np.isfinite(self.smallest) else None
        log_pseudo = np.full(self.n_samples, np.nan)
        recomputed = read_back = 0
        if pseudocount is not None:
            summed, final_blocks = self.by_candidate.pop(pseudocount)
            known = self.known.value if self.known is not None else None
            summed_ahead = self.with_final if known is not None and known / 2.0 == pseudocount else {}
            later = [bound for _, blocks in self.by_candidate.values() for bound in blocks]
            # The sums are added in the order of a block-by-block read: the same bits whichever blocks were summed ahead.
            to_read = [*(final_blocks if summed is None else []), *(bound for bound in later if bound not in summed_ahead)]
            with ThreadPoolExecutor(max_workers=READ_BACK_THREADS, thread_name_prefix="scalable-assoc-read-back") as pool:
                read = {bound: self._read_back_sums(bound[0], bound[1], pseudocount, pool) for bound in to_read}
            read_back = len(to_read)
            if summed is None:  # the reader's minimum was not the table's: its group's blocks are summed as they would have been
                summed = np.zeros(self.n_samples)
                for bound in final_blocks:
                    summed = summed + read[bound]
            log_pseudo = summed
            for bound in later:
                ahead = summed_ahead.get(bound)
                log_pseudo = log_pseudo + (ahead if ahead is not None else read[bound])
                recomputed += 1
        for name, data in zip(SAMPLE_SUM_ARRAYS, [*self.sums, log_pseudo], strict=True):
            arrays[name] = SideArray(data, max(self.n_samples, 1))
        logger.debug(
            "per-sample sums: %d blocks summed again for the final pseudocount %s, %d of them read back", recomputed, pseudocount, read_back
        )
        attributes = {
            SAMPLE_SUMS_KEY: {"pseudocount": pseudocount, "rare_prevalence_cap": RARE_PREVALENCE_CAP, "blocks_summed_again": recomputed}
        }
        return attributes, arrays


#: What a converted store's seal starts with (:func:`seal_store`); a seal without it is the SHA-256 of every byte.
STORE_SEAL_PREFIX = "crc32c-chunks:"
#: Bytes read at a time when checking the chunks' CRC-32C (:func:`chunks_match_checksums`).
CHECK_READ_BYTES = 1 << 20


def seal_store(path: Path) -> None:
    """Record beside a store just written what it holds: :data:`STORE_SEAL_PREFIX` and its :func:`store_checksum`.

    Why not the SHA-256 of every byte (``io.atomic.seal``): hashing the whole store took 0.11-0.14 s of every
    conversion of the 307 MB MetaPhlAn table and again of every run reusing it. Every chunk ends with the CRC-32C
    of its bytes, which :func:`store_sealed` checks (about ten times faster than SHA-256), and the checksum covers
    each chunk's size and stored CRC and every metadata file whole: a changed byte, attribute, chunk or file list
    is found as before.
    """
    digest = STORE_SEAL_PREFIX + store_checksum(path)

    def write(temporary: Path) -> None:
        temporary.write_text(digest + "\n", encoding="ascii")

    write_atomically(seal_path(path), write)


def store_sealed(path: Path) -> bool | None:
    """Whether the store at ``path`` holds what :func:`seal_store` recorded (or a seal of every byte, by ``io.atomic.sealed``).

    None when it does not exist; True when the recorded checksum is the store's and every chunk's bytes match their
    CRC-32C; False when unsealed, unreadable or changed.
    """
    if not path.exists():
        return None
    try:
        recorded = seal_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    if not recorded.startswith(STORE_SEAL_PREFIX):
        return sealed(path)  # a store sealed by an earlier version: its seal is the SHA-256 of every byte
    try:
        return recorded == STORE_SEAL_PREFIX + store_checksum(path) and chunks_match_checksums(path)
    except OSError:
        return False


def chunks_match_checksums(path: Path) -> bool:
    """Whether every chunk of the store's arrays whose codecs end with ``crc32c`` holds the CRC-32C of its other
    bytes in its last 4 bytes, as Zarr writes it (and checks it on reading each chunk). Files read into one buffer."""
    _, checked = _store_files(path)
    buffer = bytearray(CHECK_READ_BYTES)
    view, array = memoryview(buffer), np.frombuffer(buffer, dtype=np.uint8)  # google_crc32c takes the array, not the view
    for file in _chunk_files(path, checked):
        size = file.stat().st_size
        if size < 4:
            return False
        crc = 0
        with file.open("rb", buffering=0) as handle:
            left = size - 4
            while left:
                read = handle.readinto(view[: min(left, CHECK_READ_BYTES)])
                if not read:
                    return False
                crc = google_crc32c.extend(crc, array[:read])
                left -= read
            stored = handle.read(4)
        if crc.to_bytes(4, "little") != stored:  # the codec's little-endian uint32
            return False
    return True


def _store_files(path: Path) -> tuple[list[Path], set[Path]]:
    """Every file of the store (sorted) and the folders of its arrays whose codecs end with ``crc32c``."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return files, {file.parent for file in files if file.name == "zarr.json" and _ends_with_crc32c(file)}


def _chunk_files(path: Path, checked: set[Path]) -> Iterator[Path]:
    """The chunk files of the arrays in ``checked`` (every file below one of them but the metadata)."""
    for folder in sorted(checked):
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.name != "zarr.json":
                yield file


def store_checksum(path: Path) -> str:
    """SHA-256 identifying a store's content, for deciding whether results computed from it still hold.

    Every metadata file (``zarr.json``: attributes, sample and feature IDs) is
    hashed whole; a chunk of an array whose codecs end with ``crc32c`` (every
    array this tool writes) by its size and the CRC-32C stored in its last 4
    bytes, which Zarr checks against the chunk on every read: a chunk whose
    values changed has another checksum, or fails to read. Other files are
    hashed whole. Hashing every byte (``file_checksum``) read the whole store at
    every run: 2.8 s of CPU, the most of the client's preparation, for a 3.3 GB
    store of 100,000 features; this reads a few bytes per chunk.
    """
    files, checked = _store_files(path)
    digest = hashlib.sha256()
    for file in files:
        digest.update(str(file.relative_to(path)).encode())
        if file.name != "zarr.json" and any(parent in checked for parent in file.parents):
            size = file.stat().st_size
            with file.open("rb") as handle:
                handle.seek(max(size - 4, 0))
                digest.update(size.to_bytes(8, "little") + handle.read())
        else:
            digest.update(file.read_bytes())
    return digest.hexdigest()


def _ends_with_crc32c(metadata: Path) -> bool:
    """Whether the Zarr v3 metadata file describes an array whose chunks end with a CRC-32C of the rest."""
    try:
        node = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    codecs = node.get("codecs") if isinstance(node, dict) and node.get("node_type") == "array" else None
    return isinstance(codecs, list) and bool(codecs) and isinstance(codecs[-1], dict) and codecs[-1].get("name") == "crc32c"


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
        group.update_attributes({LAYERED_STORE_KEY: LAYERED_STORE_VALUE, "format_version": STORE_FORMAT_VERSION})

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
    n_samples, n_features = len(cast(list, attrs["sample_ids"])), len(cast(list, attrs["feature_ids"]))
    shape = tuple(array.shape)
    if shape != (n_samples, n_features):
        raise DataError(f"{path}: array shape {shape} does not match its {n_samples} sample and {n_features} feature IDs")
    chunks = tuple(array.chunks)
    if chunks[0] != shape[0]:
        raise DataError(f"{path}: chunks split the samples ({chunks}); every chunk must hold all samples")
    return _store_of(path, attrs, int(chunks[1]) if shape[1] else 1)


def _store_of(path: Path, attrs: dict, chunk_features: int) -> AbundanceStore:
    """The store at ``path`` described by its group attributes ``attrs`` (as written, or read back by :func:`open_store`)."""
    return AbundanceStore(
        path=path,
        sample_ids=tuple(str(i) for i in cast(list, attrs["sample_ids"])),
        feature_ids=tuple(str(i) for i in cast(list, attrs["feature_ids"])),
        chunk_features=chunk_features,
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
