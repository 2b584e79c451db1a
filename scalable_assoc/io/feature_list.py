"""A shared feature list: the features every cohort filters and transforms over.

CLR divides each value by the geometric mean over the layer's kept features, so
cohorts that keep different features (each its own prevalence filter) report
betas on different scales. A list given to every cohort (``run --features FILE``
or the plan key ``features:``) fixes the set instead:

* the layer's kept (and fitted) features are exactly the listed ones it has; the
  prevalence filter is not applied on top;
* a listed feature the layer lacks (a MetaPhlAn table omits clades absent from
  every sample) counts as zero in every sample, so it still enters each sample's
  CLR mean and every cohort divides by the same set.

The file is TSV, CSV or Parquet with a ``feature`` column, optionally ``layer``
(rows of other layers are ignored; without it the list applies to every layer)
and ``kept`` (only rows with kept true are used), so a run's ``features.parquet``
from a reference cohort can be passed as it is. A listed name matches a layer's
feature ID exactly, else by the last rank part of a MetaPhlAn lineage
(:func:`scalable_assoc.results.harmonise.canonical_name`).
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError
from scalable_assoc.io.tables import check_row_lengths, reading_problem
from scalable_assoc.results.harmonise import canonical_name, feature_set_digest

_TRUE = {"true", "t", "1", "yes", "y"}
_FALSE = {"false", "f", "0", "no", "n"}


@dataclass(frozen=True)
class FeatureList:
    """A feature list file as read: names per layer, or for every layer."""

    path: Path
    #: layer -> listed names, when the file has a ``layer`` column
    by_layer: dict[str, tuple[str, ...]] | None
    #: listed names for every layer, when it has none
    common: tuple[str, ...] | None

    def for_layer(self, layer: str) -> tuple[str, ...] | None:
        """The names listed for ``layer``; None when the file has a ``layer`` column without rows for it."""
        if self.by_layer is None:
            return self.common
        return self.by_layer.get(layer)


@dataclass(frozen=True)
class LayerFeatureList:
    """A feature list resolved against one layer's feature IDs."""

    path: Path
    #: :func:`feature_set_digest` of the listed names (absent ones included)
    digest: str
    #: per feature of the layer (all blocks): on the list
    mask: np.ndarray
    n_listed: int
    n_absent: int
    #: normalised listed names the layer lacks (counted as zero in every sample)
    absent: tuple[str, ...]

    @property
    def token(self) -> str:
        """Short hash of the digest and the matched features: part of cached file names and chunk ids."""
        digest = hashlib.sha256(self.digest.encode())
        digest.update(np.flatnonzero(self.mask).astype(np.int64).tobytes())
        return digest.hexdigest()[:16]

    def manifest_entry(self) -> dict:
        """What ``manifest.json`` records for the layer."""
        return {
            "file": str(self.path),
            "names_sha256": self.digest,
            "listed": self.n_listed,
            "present": self.n_listed - self.n_absent,
            "absent": self.n_absent,
            "absent_examples": list(self.absent[:10]),
        }


def _where(path: Path, column: str) -> str:
    return f"feature list {path} (column '{column}')"


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"feature list {path}: no such file (given with --features or the plan key 'features')")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    if not parquet:
        # pandas pads a short line; and a ragged file is no table, whose header must not be quoted below.
        check_row_lengths(path, 0, "feature")
    try:
        if parquet:
            return pd.read_parquet(path)
        sep = "," if path.suffix.lower() == ".csv" else "\t"
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, comment=None)
    except Exception as error:  # pandas and pyarrow raise many types for a file that is not a table
        raise DataError(
            f"feature list {path} cannot be read as a table (TSV, CSV or Parquet with a column 'feature'): {reading_problem(error)}"
        ) from None


def _kept_rows(path: Path, column: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(column.dtype):
        return column.to_numpy(dtype=bool)
    text = column.astype(str).str.strip().str.lower()
    unknown = ~text.isin(_TRUE | _FALSE)
    if unknown.any():
        row = int(np.flatnonzero(unknown.to_numpy())[0])
        raise DataError(f"{_where(path, 'kept')}: row {row + 1} has {column.iloc[row]!r}; expected true or false")
    return text.isin(_TRUE).to_numpy()


def read_feature_list(path: str | Path) -> FeatureList:
    """Read a feature list file; :class:`DataError` naming the file and column when it is not one."""
    path = Path(path).resolve()
    table = _read_table(path)
    table.columns = [str(c).strip() for c in table.columns]
    if "feature" not in table.columns:
        found = ", ".join(map(str, table.columns[:10])) or "none"
        if len(table.columns) < 2 and not difflib.get_close_matches("feature", [c.lower() for c in table.columns], n=1, cutoff=0.6):
            # One field per line is how any text file reads: its first line (perhaps a secret) is not quoted.
            found = "a single column whose first line is not a column name like 'feature'"
        raise DataError(
            f"{_where(path, 'feature')}: the file has no column 'feature' (found: {found}); list one feature name per row under a header "
            "'feature'"
        )
    if "kept" in table.columns:
        table = table[_kept_rows(path, table["kept"])]
    names = table["feature"].astype(object)
    empty = names.isna() | (names.astype(str).str.strip() == "")
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"{_where(path, 'feature')}: row {row + 1} has no feature name")
    names = names.astype(str).str.strip()
    if not len(names):
        raise DataError(f"{_where(path, 'feature')}: no feature is listed" + (" with kept true" if "kept" in table.columns else ""))
    if "layer" not in table.columns:
        return FeatureList(path, None, tuple(dict.fromkeys(names)))
    layers = table["layer"].astype(str).str.strip()
    by_layer = {str(layer): tuple(dict.fromkeys(group)) for layer, group in names.groupby(layers.to_numpy(), sort=False)}
    return FeatureList(path, by_layer, None)


def match_feature_list(path: Path, layer: str, listed: tuple[str, ...], feature_ids: tuple[str, ...]) -> LayerFeatureList:
    """Match the names listed for ``layer`` to its feature IDs: exactly, else by the last rank part of a lineage."""
    exact = {name: position for position, name in enumerate(feature_ids)}
    by_canonical: dict[str, list[int]] = {}
    for position, name in enumerate(feature_ids):
        by_canonical.setdefault(canonical_name(name), []).append(position)
    matched: dict[str, int] = {}  # normalised listed name -> feature position
    owner: dict[int, str] = {}
    normalised = []
    for name in listed:
        key = canonical_name(name)
        normalised.append(key)
        candidates = [exact[name]] if name in exact else by_canonical.get(key, [])
        if len(candidates) > 1:
            examples = ", ".join(repr(feature_ids[c]) for c in candidates[:3])
            raise DataError(
                f"{_where(path, 'feature')}: {name!r} matches several features of layer '{layer}' ({examples}); list the full name"
            )
        if not candidates:
            continue
        j = candidates[0]
        if matched.get(key, j) != j or owner.get(j, key) != key:
            raise DataError(
                f"{_where(path, 'feature')}: listed names {key!r} and {owner.get(j, key)!r} of layer '{layer}' "
                f"match the same feature or one name matches two ({feature_ids[j]!r}); list each feature once"
            )
        matched[key] = j
        owner[j] = key
    unique = sorted(set(normalised))
    if not matched:
        raise DataError(
            f"{_where(path, 'feature')}: none of its {len(unique)} feature(s) for layer '{layer}' is among the layer's "
            f"{len(feature_ids)} features (listed e.g. {unique[0]!r}; the layer has e.g. "
            f"{feature_ids[0] if feature_ids else 'nothing'!r}); "
            "check that the list belongs to this layer (a 'layer' column picks rows per layer)"
        )
    mask = np.zeros(len(feature_ids), dtype=bool)
    mask[list(matched.values())] = True
    absent = tuple(name for name in unique if name not in matched)
    return LayerFeatureList(path, feature_set_digest(unique), mask, len(unique), len(absent), absent)
