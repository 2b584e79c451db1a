"""Reading BIOM tables (HDF5 BIOM 2.x and JSON BIOM 1.0) through biom-format: observations are features, samples are columns.

The table is parsed by biom-format (imported here, on first use, so importing the
package stays fast), which knows every BIOM version's layout and metadata
encodings. It is read whole: biom-format's ``Table.from_hdf5(ids=...)`` can load a
subset of observations, but it drops the samples that are empty in that subset and
looks every requested ID up in a Python loop, so blocks of observations would lose
samples and cost O(observations) each. Memory is therefore that of the sparse table:
about 12 bytes per non-zero value (float64 value + int32 index), twice while it is
turned observation-major, plus the IDs and metadata; a JSON BIOM additionally holds
the parsed JSON text (Python lists: roughly 100 bytes per non-zero) while it is read.
The blocks handed on are dense ``(n_samples, width)`` arrays, one at a time.

Features and ``rank`` (:func:`stream_biom`): with a ``taxonomy`` observation
metadata, the features are the observations whose taxonomy ends at ``rank``, named
by that last level (``s__Ruminococcus_bromii``), exactly as the rows of a MetaPhlAn
merged table are chosen and named (:func:`~scalable_assoc.io.metaphlan.stream_metaphlan`),
so a MetaPhlAn table stored as BIOM (one observation per clade, its lineage as
taxonomy) gives the same feature IDs and values. Without taxonomy, the observation
IDs are the features and ``rank`` is ignored (said in a log line).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
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


def stream_biom(path: Path, rank: str = "species") -> TableStream:
    """A BIOM table (HDF5 BIOM 2.x or JSON BIOM 1.0) as a :class:`TableStream`; read whole (see the module docstring).

    Parameters
    ----------
    path
        The ``.biom`` file; HDF5 or JSON is told from its first bytes.
    rank
        With a ``taxonomy`` observation metadata: the rank whose observations are the features
        (those whose taxonomy ends at it, trailing unnamed levels such as ``s__`` ignored),
        named by their last level as MetaPhlAn rows are. Without taxonomy: ignored.

    Returns
    -------
    TableStream
        Samples are the table's columns, features its (chosen) observations; values are
        checked as every reader checks them (non-negative, finite; NaN is a missing value).

    Raises
    ------
    DataError
        Not a BIOM table, repeated IDs, no observation at ``rank``, or a bad value (naming file, sample and feature).
    """
    kind = biom_kind(path)
    if kind is None:
        raise DataError(f"{path}: not a BIOM table: a BIOM file is HDF5 (BIOM 2.x) or JSON (BIOM 1.0), and this one is neither")
    table = _load(path, kind)
    sample_ids = pd.Index([str(s) for s in table.ids(axis="sample")], dtype=object)
    observation_ids = [str(o) for o in table.ids(axis="observation")]
    check_ids(path, "sample", sample_ids)
    check_ids(path, "observation", pd.Index(observation_ids, dtype=object))
    metadata = table.metadata(axis="observation") or ()
    lineages = [_lineage(next((m[k] for k in TAXONOMY_KEYS if m and k in m), None)) for m in metadata]
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
    else:
        logger.info("%s: the BIOM table has no taxonomy; its observation IDs are the features and rank '%s' is ignored", path, rank)
        rows = np.arange(len(observation_ids), dtype=np.int64)
        feature_ids = pd.Index(observation_ids, dtype=object)
    check_ids(path, "feature", feature_ids)
    matrix = table.matrix_data.tocsr()  # observations x samples, rows contiguous
    del table

    def blocks(width: int) -> Iterator[np.ndarray]:
        for start in range(0, len(rows), width):
            chosen = rows[start : start + width]
            frame = pd.DataFrame(matrix[chosen].toarray().T, index=sample_ids, columns=feature_ids[start : start + width])
            # C order, as every reader's blocks: the store's per-sample sums then add in the same order, bit for bit.
            yield np.ascontiguousarray(validated_values(path, frame, samples_are_rows=True))

    return TableStream(tuple(sample_ids), tuple(str(f) for f in feature_ids), blocks, path)
