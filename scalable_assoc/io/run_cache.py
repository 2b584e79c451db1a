"""The files a run keeps in its work folder (``OUT/.scalable_assoc``) that others re-read: layer filters and design rows.

The engine writes them (``engine/filters``, ``engine/prepare``); the report reads
them back without Dask through the functions here, so both agree on one format:
plain ``.npz`` files of numpy arrays, no pickles.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scalable_assoc.io.atomic import write_npz

#: The run's own folder inside its output folder: lock, status, stores, filters, designs, chunks.
WORK_DIR = ".scalable_assoc"

_TOTALS = ("sample_totals", "nonzero_totals")


@dataclass(frozen=True)
class FilterFile:
    """A layer's saved filter: per feature of the layer (all blocks) ``kept`` (bool), ``nonzero`` and ``observed`` counts,
    the pseudocount, and per used sample ``(total, count)`` sums over the kept features (None where the run needed none)."""

    kept: np.ndarray  # (n_features,) bool
    pseudocount: float
    nonzero: np.ndarray  # (n_features,) int
    observed: np.ndarray  # (n_features,) int
    sample_totals: tuple[np.ndarray, np.ndarray] | None  # each (n_used_samples,)
    nonzero_totals: tuple[np.ndarray, np.ndarray] | None  # each (n_used_samples,): CLR over present values only


def layer_cache_token(rows_hash: str, metadata_sha256: str, input_sha256: str, layer: str, chunk_features: int, list_token: str) -> str:
    """Short hash of what a layer's filter, per-sample sums and blocks depend on (see ``engine.graph.layer_token``)."""
    parts = [rows_hash, metadata_sha256, input_sha256, layer, str(chunk_features)]
    if list_token:  # a feature list (plan key or --features) chooses the kept features
        parts.append(f"features={list_token}")
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def samples_digest(sample_positions: np.ndarray) -> str:
    """Short hash of a layer's used samples ``(n_used,)`` (positions into its store's samples): part of cached file names."""
    return hashlib.sha256(np.ascontiguousarray(sample_positions, dtype=np.int64).tobytes()).hexdigest()[:12]


def filter_path(folder: Path, token: str, digest: str) -> Path:
    """Where a layer's filter is kept in ``folder`` (``OUT/.scalable_assoc/filters``)."""
    return folder / f"filter-{token}-{digest}.npz"


def write_filter_file(path: Path, saved: FilterFile) -> Path:
    """Write a layer's filter atomically."""
    arrays = {"kept": saved.kept, "pseudocount": np.array(saved.pseudocount), "nonzero": saved.nonzero, "observed": saved.observed}
    for which in _TOTALS:
        value = getattr(saved, which)
        if value is not None:
            arrays[f"{which}_0"], arrays[f"{which}_1"] = value
    return write_npz(path, arrays)


def read_filter_file(path: Path) -> FilterFile:
    """Read a filter written by :func:`write_filter_file`."""
    with np.load(path, allow_pickle=False) as data:
        totals = {which: (data[f"{which}_0"], data[f"{which}_1"]) if f"{which}_0" in data.files else None for which in _TOTALS}
        return FilterFile(
            np.asarray(data["kept"], dtype=bool),
            float(data["pseudocount"]),
            data["nonzero"],
            data["observed"],
            totals["sample_totals"],
            totals["nonzero_totals"],
        )


def design_rows(path: Path) -> np.ndarray:
    """The participants ``(n,)`` of a saved design (``OUT/.scalable_assoc/designs/<key>.npz``): positions into the layer's used samples."""
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["rows"], dtype=np.int64)
