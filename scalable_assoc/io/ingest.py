"""Converting abundance tables into stores, once: on first use by a run, or by ``scalable-assoc ingest``."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from scalable_assoc.errors import DataError
from scalable_assoc.io.atomic import file_checksum
from scalable_assoc.io.store import (
    AbundanceStore,
    check_layer_name,
    create_layered_store,
    open_store,
    seal_store,
    store_checksum,
    store_layers,
    store_sealed,
    write_table_stream,
)
from scalable_assoc.io.tables import TableStream, detect_format, stream_abundance_table

logger = logging.getLogger(__name__)

T = TypeVar("T")


def ingest_table(
    source: Path,
    destination: Path,
    fmt: str = "auto",
    rank: str = "species",
    chunk_features: int | None = None,
    rank_given: bool = False,
    layer: str | None = None,
    **read_options: Any,
) -> AbundanceStore:
    """Read a MetaPhlAn / wide TSV / CSV / Parquet / BIOM / h5ad table and write it as a Zarr store at ``destination``.

    The table streams into the store a block of features at a time (a wide
    TSV/CSV through a temporary file beside the store), so memory stays at a
    few blocks whatever the table's size.

    Parameters
    ----------
    source
        The table: a MetaPhlAn merged table (relative abundances, percent), a wide
        TSV/CSV (samples as rows, a sample ID column first) or Parquet.
    destination
        The store to write, a folder ending in ``.zarr``; refused if it exists (unless ``layer`` is given).
    fmt
        ``auto`` (detected from the file), ``metaphlan``, ``wide``, ``parquet``, ``biom`` or ``h5ad``.
    rank
        For MetaPhlAn tables, the rank kept (``species``, ``genus``, ...).
    chunk_features
        Features per store chunk; None: chunks of about 32 MiB.
    rank_given
        ``rank`` was given by the user (not the default): a BIOM table without taxonomy is then refused.
    layer
        Write the table as this layer of a store holding several (``destination`` is created as one if it does
        not exist); the other layers are left as they are. A layer already in the store is refused.
    read_options
        ``stratified`` (HUMAnN tables), ``columns`` and ``missing`` (long tables), ``h5ad_layer`` (.h5ad files), as the plan's layer keys.

    Returns
    -------
    AbundanceStore
        The store: ``(samples, features)`` float64, feature-chunked, with sample and
        feature IDs, per-feature counts and per-sample totals.

    Raises
    ------
    DataError
        The table is missing or malformed (the message names file, row and column), or ``destination`` exists.

    Examples
    --------
    >>> from scalable_assoc import ingest_table
    >>> store = ingest_table(study.out_dir / "species.tsv", tmp / "species.zarr")
    >>> store.n_samples
    600
    """
    if not source.exists():
        raise DataError(f"abundance file {source} does not exist")
    if layer is not None:
        destination = _new_layer_folder(destination, layer)
    # Checked before the conversion (which can take minutes), not when its result cannot be put in place.
    if destination.exists() or destination.is_symlink():
        what = "a store" if (destination / "zarr.json").is_file() else "a file" if destination.is_file() else "a folder"
        raise DataError(
            f"--out {destination} already exists ({what}); remove it first or choose another destination: a store is never overwritten"
        )
    # A wide TSV/CSV goes through a temporary file next to the store (the same disk, removed afterwards).
    checksum, stream = checksum_beside(
        source, lambda: stream_abundance_table(source, fmt, rank, scratch=destination.parent, rank_given=rank_given, **read_options)
    )
    return write_table_stream(destination, stream, checksum, chunk_features)


def checksum_beside(source: Path, first_pass: Callable[[], T]) -> tuple[str, T]:
    """The SHA-256 of ``source`` (:func:`~scalable_assoc.io.atomic.file_checksum`) and ``first_pass()``, the checksum
    computed in a thread of its own meanwhile.

    Why: the checksum and a reader's first pass (IDs, every row's field count) each read the whole table on one
    core; one after the other they took 0.4 s of the 307 MB MetaPhlAn table's conversion with the other core idle.
    SHA-256 releases the GIL while it hashes. An error of ``first_pass`` is raised once the checksum is done.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="scalable-assoc-checksum") as pool:
        hashing = pool.submit(file_checksum, source)
        result = first_pass()
        return hashing.result(), result


def _new_layer_folder(store: Path, layer: str) -> Path:
    """Where layer ``layer`` of the store of several layers at ``store`` is written (the store is created if absent)."""
    check_layer_name(layer, f"--layer for {store}")
    if store.exists() and store_layers(store) is None:
        what = "a single-layer store" if (store / "zarr.json").is_file() else "a file" if store.is_file() else "a folder, not a store"
        raise DataError(f"--out {store} is {what}; a layer can be added only to a store made by 'ingest --layer' (choose another --out)")
    layers = store_layers(store) or ()
    if layer in layers:
        raise DataError(f"{store} already holds layer '{layer}'; a layer is never overwritten (choose another --layer name)")
    create_layered_store(store)
    return store / layer


def _file_label(layer: str) -> str:
    """``layer`` as part of a file name in the cache: letters, digits, '-', '_' and '.' kept, anything else '-'.

    The plan refuses names that could leave the folder; this keeps any other name (a space, a colon) a plain file
    name too. Two layers whose labels coincide share a store only if their tables' checksums, rank and options do.
    """
    label = "".join(c if c.isalnum() or c in "-_." else "-" for c in layer)
    return label if label and not label.startswith(".") else f"-{label}"


def layer_store(
    source: Path,
    fmt: str,
    rank: str,
    cache_dir: Path,
    layer: str,
    chunk_features: int | None,
    rank_given: bool = False,
    store_layer: str | None = None,
    **read_options: Any,
) -> tuple[AbundanceStore, str]:
    """The store for one layer and the checksum of its input.

    A store given directly (``.zarr`` folder) is opened as it is; its checksum is
    that of the layer's whole content (values and attributes, sample IDs included; chunks
    by their stored CRC-32C, :func:`store_checksum`), so results computed from it are never reused once it changes. A table is
    converted into ``cache_dir`` once and sealed (its :func:`store_checksum` beside
    it, every chunk's CRC-32C checked when it is reused: :func:`store_sealed`); the
    cache name holds the table's checksum, rank and chunk size, so an edited table
    or a new chunk size makes a new store and a resumed run finds the old one. A
    cached store that no longer matches its seal (a damaged disk block, edited
    attributes) is rebuilt from the table, with a warning.
    ``read_options`` (``stratified``, ``columns``, ``missing``, ``h5ad_layer``: :meth:`LayerSpec.read_options`, only
    those not at their defaults) change the store's values, so they are part of the cache name too;
    ``rank_given`` (the plan wrote ``rank``) only refuses a BIOM table without taxonomy, so it is not.

    A store holding several layers gives the layer named ``store_layer`` (default: the plan's
    layer name ``layer``); its checksum is that layer's alone, so adding another layer to the
    store later leaves earlier results valid.
    """
    if not source.exists():
        raise DataError(f"layer '{layer}' (plan key 'data.layers.{layer}'): abundance file {source} does not exist")
    resolved = detect_format(source) if fmt == "auto" else fmt
    if store_layer is not None and resolved != "zarr":
        raise DataError(f"layer '{layer}': 'store_layer' applies to a store made by 'ingest --layer', not to {source} (format {resolved})")
    if resolved == "zarr":
        if read_options:
            raise DataError(
                f"layer '{layer}': the keys {', '.join(sorted(read_options))} do not apply to a store ({source}); they apply to tables"
            )
        if rank_given:
            raise DataError(
                f"layer '{layer}' (plan key 'data.layers.{layer}.rank'): {source} is a store, whose rank was chosen when it was "
                "ingested; remove 'rank'"
            )
        source = _layer_of_store(source, layer, store_layer)
        store = open_store(source)
        if chunk_features and chunk_features != store.chunk_features:
            raise DataError(
                f"layer '{layer}': store {source} has {store.chunk_features} features per chunk; "
                f"--chunk-features {chunk_features} cannot change a store (re-ingest it instead)"
            )
        return store, store_checksum(source)  # a few bytes per chunk, not the whole store (io/store.py)

    def stream() -> TableStream:
        return stream_abundance_table(source, resolved, rank, scratch=cache_dir, rank_given=rank_given, **read_options)

    name = f"{rank}{_options_tag(read_options)}-c{chunk_features or 'auto'}.zarr"
    # No store of this layer at all: the table is converted whatever its checksum, so the reader's first pass runs
    # beside the checksum. Otherwise the checksum first, as a converted store is most likely there to be reused.
    first_read = None
    label = _file_label(layer)
    if not any(cache_dir.glob(f"{glob.escape(label)}-*-{glob.escape(name)}")):
        checksum, first_read = checksum_beside(source, stream)
    else:
        checksum = file_checksum(source)
    destination = cache_dir / f"{label}-{checksum[:16]}-{name}"
    state = store_sealed(destination)
    if state:
        return open_store(destination), checksum
    if state is False:
        logger.warning(
            "layer '%s': the converted store %s no longer matches what was written (damaged or edited); rebuilding it from %s",
            layer,
            destination,
            source,
        )
        shutil.rmtree(destination, ignore_errors=True)
    store = write_table_stream(destination, first_read or stream(), checksum, chunk_features)
    seal_store(destination)
    return store, checksum


def input_checksum(source: Path, layer: str, store_layer: str | None = None) -> str:
    """The checksum :func:`layer_store` records for a layer's input ``source``, without converting anything.

    A store: :func:`store_checksum` of the plan layer's folder (one layer of a
    store made by ``ingest --layer``, or the store itself); a table: its SHA-256.
    ``store_layer`` as the plan gives it. Raises DataError as :func:`layer_store`
    does when the store lacks that layer.
    """
    if source.is_dir():
        return store_checksum(_layer_of_store(source, layer, store_layer))
    return file_checksum(source)


def _layer_of_store(source: Path, layer: str, store_layer: str | None) -> Path:
    """The folder of the plan layer ``layer`` in the store ``source``: the store itself, or one of its layers."""
    layers = store_layers(source)
    if layers is None:
        if store_layer is not None:
            raise DataError(
                f"layer '{layer}' (plan key 'data.layers.{layer}.store_layer'): {source} is a single-layer store; "
                "'store_layer' names a layer of a store made by 'ingest --layer'"
            )
        return source
    name = store_layer or layer
    if name not in layers:
        how = f"'store_layer: {store_layer}'" if store_layer else "the plan's layer name (set 'store_layer' to read another)"
        raise DataError(
            f"layer '{layer}' (plan key 'data.layers.{layer}'): {source} holds layers {', '.join(layers) or '(none yet)'}, "
            f"not '{name}' named by {how}"
        )
    return source / name


def _options_tag(read_options: dict[str, Any]) -> str:
    """The part of a cached store's name that says how the table was read ('' at the defaults, so older caches stay valid)."""
    if not read_options:
        return ""
    text = json.dumps(read_options, sort_keys=True, default=list)
    return "-o" + hashlib.sha256(text.encode()).hexdigest()[:8]
