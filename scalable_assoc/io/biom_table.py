"""Reading BIOM tables (HDF5 BIOM 2.x and JSON BIOM 1.0): observations are features, samples are columns.

An HDF5 BIOM is streamed: its IDs, taxonomies and the observation-major ``indptr``
are read first with h5py (8 bytes per observation, plus IDs and lineages), then each
block reads only the span of ``observation/matrix/data`` and ``indices`` that its
observations lie in, densified to ``(n_samples, width)``, so memory holds one block.
The layout is BIOM 2.x's own (the matrix stored observation-major, the taxonomy a 2-D
string array, parsed by biom-format's ``vlen_list_of_str_parser``). biom-format's
``Table.from_hdf5(ids=...)`` is not used for blocks: it drops the samples that are
empty in the subset and looks every requested ID up in a Python loop.

Any other BIOM (JSON BIOM 1.0, or an HDF5 file laid out otherwise) is parsed whole by
biom-format (imported on first use, so importing the package stays fast): memory is
the sparse table, about 12 bytes per non-zero value (float64 value + int32 index),
twice while it is made observation-major, plus IDs and metadata; a JSON BIOM also
holds its parsed JSON (Python lists, roughly 100 bytes per non-zero) while it is read.

Features and ``rank`` (:func:`stream_biom`): with a ``taxonomy`` observation
metadata, the features are the observations whose taxonomy ends at ``rank``, named
by that last level (``s__Ruminococcus_bromii``), exactly as the rows of a MetaPhlAn
merged table are chosen and named (:func:`~scalable_assoc.io.metaphlan.stream_metaphlan`),
so a MetaPhlAn table stored as BIOM (one observation per clade, its lineage as
taxonomy) gives the same feature IDs and values. Without taxonomy, the observation
IDs are the features and the default ``rank`` is ignored (said in a log line); a ``rank``
the user wrote is refused there, naming the file.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.table_text import reading_problem
from scalable_assoc.io.table_values import TableStream, check_ids, validated_values
from scalable_assoc.plan.schema import RANK_PREFIXES

logger = logging.getLogger(__name__)

#: The first bytes of every HDF5 file (BIOM 2.x); a JSON BIOM (1.0) starts with ``{``.
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

#: Observation metadata keys that hold a lineage (biom-format parses both as lists of levels).
TAXONOMY_KEYS = ("taxonomy", "Taxonomy")

#: Errors biom-format and h5py raise for a file that is not a well-formed BIOM table.
_READ_ERRORS = (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, LookupError)


def biom_kind(path: Path) -> str | None:
    """``hdf5`` or ``json`` from a file's first bytes (leading blanks skipped for JSON); None for anything else."""
    try:
        with path.open("rb") as handle:
            start = handle.read(4096)
    except OSError as error:
        raise DataError(f"{path}: cannot be read: {reading_problem(error)}") from None
    if start.startswith(HDF5_MAGIC):
        return "hdf5"
    if start.lstrip().startswith(b"{"):
        return "json"
    return None


def _lineage(value: object) -> list[str]:
    """A taxonomy as its named levels (a list, or a string split on ``;`` or ``|``); unnamed levels (``s__``) dropped from the end."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return []
    if isinstance(value, str):
        parts = value.replace("|", ";").split(";")
    elif isinstance(value, Sequence | np.ndarray):
        parts = [str(v) for v in value]
    else:
        return []
    levels = [p.strip() for p in parts]
    while levels and (not levels[-1] or (levels[-1].endswith("__") and len(levels[-1]) <= 3)):
        levels.pop()
    return levels


def _load(path: Path, kind: str) -> Any:
    """The whole table as a ``biom.Table`` (the only place biom-format is imported)."""
    import biom
    from biom.exception import BiomException

    try:
        if kind == "hdf5":
            import h5py

            with h5py.File(path, "r") as handle:
                return biom.Table.from_hdf5(handle)
        with path.open(encoding="utf-8") as text:
            return biom.Table.from_json(json.load(text))
    except BiomException as error:
        # biom-format refuses repeated IDs while building the table, without naming them: find them for the message.
        if "Duplicate" in str(error):
            _check_raw_ids(path, kind)
        raise DataError(f"{path}: cannot be read as a BIOM table: {reading_problem(error)}") from None
    except (*_READ_ERRORS, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a BIOM table ({kind.upper()}): {reading_problem(error)}") from None


def _check_raw_ids(path: Path, kind: str) -> None:
    """Check the sample and observation IDs as written in the file (to name repeated ones)."""
    try:
        if kind == "hdf5":
            import h5py

            with h5py.File(path, "r") as handle:
                samples = list(handle["sample/ids"].asstr()[:])
                observations = list(handle["observation/ids"].asstr()[:])
        else:
            with path.open(encoding="utf-8") as text:
                content = json.load(text)
            samples = [c.get("id") for c in content["columns"]]
            observations = [r.get("id") for r in content["rows"]]
    except (*_READ_ERRORS, UnicodeDecodeError):
        return
    check_ids(path, "sample", pd.Index(samples, dtype=object))
    check_ids(path, "observation", pd.Index(observations, dtype=object))


def stream_biom(path: Path, rank: str = "species", rank_given: bool = False) -> TableStream:
    """A BIOM table (HDF5 BIOM 2.x or JSON BIOM 1.0) as a :class:`TableStream`; read whole (see the module docstring).

    Parameters
    ----------
    path
        The ``.biom`` file; HDF5 or JSON is told from its first bytes.
    rank
        With a ``taxonomy`` observation metadata: the rank whose observations are the features
        (those whose taxonomy ends at it, trailing unnamed levels such as ``s__`` ignored),
        named by their last level as MetaPhlAn rows are. Without taxonomy: ignored, unless ``rank_given``.
    rank_given
        ``rank`` was written by the user (plan key ``rank``, ``ingest --rank``): a table without taxonomy is then
        refused, as the rank asked for cannot be chosen, rather than read with its observation IDs as features.

    Returns
    -------
    TableStream
        Samples are the table's columns, features its (chosen) observations; values are
        checked as every reader checks them (non-negative, finite; NaN is a missing value).

    Raises
    ------
    DataError
        Not a BIOM table, repeated IDs, no observation at ``rank``, no taxonomy with ``rank_given``, or a bad value
        (naming file, sample and feature).
    """
    kind = biom_kind(path)
    if kind is None:
        raise DataError(f"{path}: not a BIOM table: a BIOM file is HDF5 (BIOM 2.x) or JSON (BIOM 1.0), and this one is neither")
    layout = _hdf5_layout(path) if kind == "hdf5" else None
    table: Any = None if layout is not None else _load(path, kind)
    if layout is not None:
        sample_list, observation_ids, taxonomies, indptr = layout
    else:
        sample_list = [str(s) for s in table.ids(axis="sample")]
        observation_ids = [str(o) for o in table.ids(axis="observation")]
        taxonomies = [next((m[k] for k in TAXONOMY_KEYS if m and k in m), None) for m in table.metadata(axis="observation") or ()]
    sample_ids = pd.Index(sample_list, dtype=object)
    check_ids(path, "sample", sample_ids)
    check_ids(path, "observation", pd.Index(observation_ids, dtype=object))
    lineages = [_lineage(taxonomy) for taxonomy in taxonomies]
    if any(lineages):
        prefix = RANK_PREFIXES[rank]
        rows = np.array([i for i, levels in enumerate(lineages) if levels and levels[-1].startswith(prefix)], dtype=np.int64)
        if not len(rows):
            raise DataError(
                f"{path}: no observation whose taxonomy ends at '{prefix}' ({rank}) in this BIOM table; check 'rank' in the plan"
            )
        feature_ids = pd.Index([lineages[i][-1] for i in rows], dtype=object)
        if feature_ids.duplicated().any():
            repeated = ", ".join(str(v) for v in feature_ids[feature_ids.duplicated()].unique()[:5])
            raise DataError(
                f"{path}: {int(feature_ids.duplicated().sum())} observation(s) repeat a {rank} name of another, for example: "
                f"{repeated}. Each {rank} must be one observation (as in a MetaPhlAn table); a table with several observations "
                f"per taxon (OTUs, ASVs) must be collapsed to one observation per {rank} first."
            )
    elif rank_given:
        raise DataError(
            f"{path}: the BIOM table has no taxonomy metadata (observation metadata 'taxonomy'), so rank '{rank}' cannot be "
            f"chosen; drop 'rank' (plan key 'rank', or --rank) to use its {len(observation_ids)} observation IDs as the features"
        )
    else:
        logger.info("%s: the BIOM table has no taxonomy; its observation IDs are the features and rank '%s' is ignored", path, rank)
        rows = np.arange(len(observation_ids), dtype=np.int64)
        feature_ids = pd.Index(observation_ids, dtype=object)
    check_ids(path, "feature", feature_ids)

    def checked(values: np.ndarray, start: int) -> np.ndarray:
        frame = pd.DataFrame(values, index=sample_ids, columns=feature_ids[start : start + values.shape[1]])
        # C order, as every reader's blocks: the store's per-sample sums then add in the same order, bit for bit.
        return np.ascontiguousarray(validated_values(path, frame, samples_are_rows=True))

    if layout is not None:
        return TableStream(
            tuple(sample_ids), tuple(str(f) for f in feature_ids), _hdf5_blocks(path, rows, indptr, len(sample_ids), checked), path
        )
    matrix = table.matrix_data.tocsr()  # observations x samples, rows contiguous
    del table

    def blocks(width: int) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), width):
            yield checked(matrix[rows[start : start + width]].toarray().T, start)

    return TableStream(tuple(sample_ids), tuple(str(f) for f in feature_ids), blocks, path)


def biom_taxonomy_ends(path: Path) -> list[str]:
    """Each observation's last named taxonomy level (``s__Species``, ``g__Genus``; "" without a taxonomy), in file order.

    What ``rank`` chooses among (:func:`stream_biom`); ``scalable-assoc inspect`` counts them per rank.
    """
    kind = biom_kind(path)
    if kind is None:
        raise DataError(f"{path}: not a BIOM table: a BIOM file is HDF5 (BIOM 2.x) or JSON (BIOM 1.0), and this one is neither")
    layout = _hdf5_layout(path) if kind == "hdf5" else None
    if layout is not None:
        taxonomies = layout[2]
    else:
        table = _load(path, kind)
        taxonomies = [next((m[k] for k in TAXONOMY_KEYS if m and k in m), None) for m in table.metadata(axis="observation") or ()]
    return [levels[-1] if levels else "" for levels in (_lineage(taxonomy) for taxonomy in taxonomies)]


#: The datasets of a BIOM 2.x HDF5 file read directly (the observation-major copy of the matrix and both axes' IDs).
_HDF5_DATASETS = ("sample/ids", "observation/ids", "observation/matrix/data", "observation/matrix/indices", "observation/matrix/indptr")


def _hdf5_layout(path: Path) -> tuple[list[str], list[str], list[Any], np.ndarray] | None:
    """Sample IDs, observation IDs, taxonomies and the observation-major ``indptr`` of a BIOM 2.x HDF5 file, read with h5py.

    None where the file lacks a dataset of :data:`_HDF5_DATASETS` or holds its taxonomy other than as
    biom-format writes it (a 2-D array of strings): such a file is read whole by biom-format instead.
    """
    import h5py
    from biom.table import vlen_list_of_str_parser

    try:
        with h5py.File(path, "r") as handle:
            if not all(isinstance(handle.get(name), h5py.Dataset) for name in _HDF5_DATASETS):
                return None
            ids = {
                axis: [str(v) for v in handle[f"{axis}/ids"].asstr()[:]] if handle[f"{axis}/ids"].size else []
                for axis in ("sample", "observation")
            }
            metadata = handle.get("observation/metadata")
            stored = next((metadata[k] for k in TAXONOMY_KEYS if isinstance(metadata, h5py.Group) and k in metadata), None)
            if stored is not None and stored.ndim != 2:
                return None
            taxonomies = [vlen_list_of_str_parser(row) for row in stored[:]] if stored is not None else [None] * len(ids["observation"])
            indptr = np.asarray(handle["observation/matrix/indptr"][:], dtype=np.int64)
    except (*_READ_ERRORS, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot be read as a BIOM table (HDF5): {reading_problem(error)}") from None
    if len(indptr) != len(ids["observation"]) + 1 or len(taxonomies) != len(ids["observation"]):
        raise DataError(
            f"{path}: cannot be read as a BIOM table (HDF5): {len(ids['observation'])} observation IDs, but "
            f"{len(indptr) - 1} matrix rows and {len(taxonomies)} taxonomies"
        )
    return ids["sample"], ids["observation"], taxonomies, indptr


def _hdf5_blocks(
    path: Path, rows: np.ndarray, indptr: np.ndarray, n_samples: int, checked: Callable[[np.ndarray, int], np.ndarray]
) -> Callable[[int], Iterator[np.ndarray]]:
    """``blocks(width)`` of a BIOM HDF5 file: each block reads the span of ``data``/``indices`` its observations lie in."""

    def blocks(width: int) -> Iterator[np.ndarray]:
        import h5py

        try:
            with h5py.File(path, "r") as handle:
                matrix = handle["observation/matrix"]
                for start in range(0, len(rows), width):
                    chosen = rows[start : start + width]
                    low, high = int(indptr[chosen[0]]), int(indptr[chosen[-1] + 1])
                    data = np.asarray(matrix["data"][low:high], dtype=np.float64)
                    samples = np.asarray(matrix["indices"][low:high], dtype=np.int64)
                    if len(samples) and (samples.min() < 0 or samples.max() >= n_samples):
                        raise DataError(f"{path}: the BIOM matrix refers to a sample beyond its {n_samples} sample IDs")
                    values = np.zeros((n_samples, len(chosen)))
                    for column, row in enumerate(chosen):
                        cells = slice(int(indptr[row]) - low, int(indptr[row + 1]) - low)
                        values[samples[cells], column] = data[cells]
                    yield checked(values, start)
        except (*_READ_ERRORS, UnicodeDecodeError) as error:
            raise DataError(f"{path}: cannot read the BIOM matrix (HDF5): {reading_problem(error)}") from None

    return blocks
