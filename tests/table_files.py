"""What the format tests share: writing a BIOM table with biom-format, and a store's content to compare stores by."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr


def write_biom(
    path: Path, values: np.ndarray, observations: Sequence[str], samples: Sequence[str], taxonomies: Sequence[list[str]] | None, hdf5: bool
) -> Path:
    """Write ``values`` (observations x samples) as a BIOM table with biom-format itself: HDF5 (BIOM 2.x) or JSON (BIOM 1.0).

    ``taxonomies`` (one lineage per observation) becomes the observations' ``taxonomy`` metadata; None writes none.
    """
    import biom
    import h5py

    metadata = [{"taxonomy": lineage} for lineage in taxonomies] if taxonomies is not None else None
    table = biom.Table(np.asarray(values), list(observations), list(samples), metadata)
    if hdf5:
        with h5py.File(path, "w") as handle:
            table.to_hdf5(handle, "scalable_assoc tests")
    else:
        path.write_text(table.to_json("scalable_assoc tests"))
    return path


def store_content(path: Path) -> dict[str, object]:
    """Every array of a store and its sample and feature IDs (not its source's name, checksum or notes, which differ by file)."""
    group = zarr.open_group(path, mode="r")
    content: dict[str, object] = {name: np.asarray(array[...]) for name, array in group.arrays()}
    content["sample_ids"] = list(group.attrs["sample_ids"])
    content["feature_ids"] = list(group.attrs["feature_ids"])
    return content
