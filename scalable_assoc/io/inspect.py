"""What a table or store holds, before a plan reads it: ``scalable-assoc inspect`` and :func:`inspect_table`.

One pass over the table's feature blocks (:class:`~scalable_assoc.io.table_values.TableStream`,
never the whole matrix) gives the samples, features, missing values, prevalence, value range,
per-sample totals and so the scale the values look like. A store's stored per-feature counts and
per-sample totals (written by ``ingest``) are used where it has them; its chunks are still read
once, for the value range and the whole-number check, which no summary holds; the format-specific counts (MetaPhlAn clades per
rank, BIOM taxonomies per rank, HUMAnN community and per-species rows) come from the ID column
only. The result says which ``data.layers`` entry of a plan reads the table.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from scalable_assoc.errors import DataError
from scalable_assoc.io.biom_table import biom_taxonomy_ends
from scalable_assoc.io.humann import stream_humann
from scalable_assoc.io.store import AbundanceStore, open_store
from scalable_assoc.io.table_text import comment_lines, reading_problem, table_separator
from scalable_assoc.io.tables import RANKED_FORMATS, TableStream, detect_format, stream_abundance_table
from scalable_assoc.plan.schema import RANK_PREFIXES

#: What :func:`inspect_table` accepts as ``format``.
INSPECT_FORMATS = ("auto", "metaphlan", "wide", "parquet", "humann", "long", "biom", "h5ad", "zarr")
#: What the values look like (:func:`classify_scale`).
SCALES = ("percent", "fraction", "counts", "transformed/other")
#: Features per block of the pass over a table.
INSPECT_BLOCK_FEATURES = 256
#: How many sample and feature IDs are shown.
EXAMPLES = 3
#: Readers that know ranks (the ``rank`` layer key).
_QUANTILES = {"min": 0.0, "25%": 0.25, "50%": 0.5, "75%": 0.75, "max": 1.0}
_DESCRIPTIONS = {
    "metaphlan": "MetaPhlAn merged table",
    "wide": "wide table (samples as rows)",
    "parquet": "Parquet table (samples as rows)",
    "humann": "HUMAnN merged table",
    "long": "long table (sample, feature, value rows)",
    "biom": "BIOM table",
    "h5ad": "AnnData .h5ad",
    "zarr": "scalable-assoc store",
}


@dataclass(frozen=True)
class TableInspection:
    """What :func:`inspect_table` found in a table or store.

    ``prevalence`` holds quantiles (``min``, ``25%``, ``50%``, ``75%``, ``max``) over the
    features of each feature's share of samples with a value above zero (among its
    non-missing values, as ``preprocess.min_prevalence`` counts); ``sample_totals`` the
    ``min``, ``median`` and ``max`` of each sample's sum over every feature (missing values
    skipped). ``scale`` is one of :data:`SCALES`, ``scale_rule`` says why.
    """

    path: str
    format: str
    n_samples: int
    n_features: int
    rank: str | None
    features_per_rank: dict[str, int]
    n_missing: int
    prevalence: dict[str, float]
    value_min: float | None
    value_max: float | None
    sample_totals: dict[str, float]
    scale: str
    scale_rule: str
    sample_examples: tuple[str, ...]
    feature_examples: tuple[str, ...]
    plan_snippet: str
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """The inspection as plain JSON values (tuples as lists)."""
        values = asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in values.items()}

    def to_json(self) -> str:
        """:meth:`to_dict` as one JSON object."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def to_text(self) -> str:
        """The summary ``scalable-assoc inspect`` prints."""
        cells = self.n_samples * self.n_features
        ranked = f" at rank {self.rank}" if self.rank else ""
        lines = [
            f"{self.path}: {_DESCRIPTIONS.get(self.format, self.format)} (format: {self.format})",
            f"  {self.n_samples} samples x {self.n_features} features{ranked}",
        ]
        if self.features_per_rank:
            lines.append("  features per rank: " + ", ".join(f"{rank} {count}" for rank, count in self.features_per_rank.items()))
        share = f" ({100 * self.n_missing / cells:.2f}%)" if cells else ""
        lines.append(f"  missing values: {self.n_missing} of {cells}{share}")
        lines.append("  prevalence (share of samples > 0 per feature): " + _quantile_text(self.prevalence))
        span = "no values" if self.value_min is None else f"{_number(self.value_min)} to {_number(self.value_max)}"
        lines.append(f"  values: {span}; per-sample totals: " + _quantile_text(self.sample_totals))
        lines.append(f"  scale: {self.scale}: {self.scale_rule}")
        lines.append(f"  samples: {', '.join(self.sample_examples)}{', ...' if self.n_samples > EXAMPLES else ''}")
        lines.append(f"  features: {', '.join(self.feature_examples)}{', ...' if self.n_features > EXAMPLES else ''}")
        lines.extend(f"  note: {note}" for note in self.notes)
        lines.append("  plan entry (under data.layers):")
        lines.extend(f"    {line}" for line in self.plan_snippet.rstrip("\n").splitlines())
        return "\n".join(lines)


def _number(value: float | None) -> str:
    return "NA" if value is None else f"{value:.6g}"


def _quantile_text(values: dict[str, float]) -> str:
    return ", ".join(f"{name} {_number(value)}" for name, value in values.items())


def classify_scale(value_min: float | None, whole_numbers: bool, totals: np.ndarray) -> tuple[str, str]:
    """What the values look like, and the rule that said so (the first that applies).

    1. a negative value: ``transformed/other`` (already CLR/log-transformed or centred; a layer needs raw abundances);
    2. every value a whole number: ``counts``;
    3. the median per-sample total between 50 and 100.5 and none above 100.5: ``percent``;
    4. the median per-sample total between 0.5 and 1.005 and none above 1.005: ``fraction``;
    5. else ``transformed/other`` (CPM, RPK or normalised values: analysable, but state the transform you want).
    """
    if value_min is None:
        return "transformed/other", "no observed values"
    if value_min < 0:
        return "transformed/other", "negative values: already transformed (CLR, log, centred); a layer needs raw abundances"
    if whole_numbers:
        return "counts", "every value is a non-negative whole number"
    median, top = (float(np.median(totals)), float(np.max(totals))) if totals.size else (0.0, 0.0)
    if 50 <= median <= 100.5 and top <= 100.5:
        return "percent", f"per-sample totals about 100 (median {median:.4g}, max {top:.4g})"
    if 0.5 <= median <= 1.005 and top <= 1.005:
        return "fraction", f"per-sample totals about 1 (median {median:.4g}, max {top:.4g})"
    return "transformed/other", f"not whole numbers, and per-sample totals (median {median:.4g}) are neither about 100 nor about 1"


@dataclass
class _Pass:
    """What one pass over the feature blocks accumulates: O(samples + features) memory."""

    n_samples: int
    nonzero: list[np.ndarray] = field(default_factory=list)
    observed: list[np.ndarray] = field(default_factory=list)
    value_min: float = np.inf
    value_max: float = -np.inf
    whole_numbers: bool = True
    totals: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __post_init__(self) -> None:
        self.totals = np.zeros(self.n_samples)

    def add(self, block: np.ndarray) -> None:
        finite = block[np.isfinite(block)]
        self.observed.append((~np.isnan(block)).sum(axis=0))
        self.nonzero.append((block > 0).sum(axis=0))
        if finite.size:
            self.value_min = min(self.value_min, float(finite.min()))
            self.value_max = max(self.value_max, float(finite.max()))
            self.whole_numbers = self.whole_numbers and bool(np.all(finite == np.floor(finite)))
        self.totals += np.nansum(block, axis=1)


def _blocks(stream: TableStream) -> Iterator[np.ndarray]:
    blocks = stream.blocks(INSPECT_BLOCK_FEATURES)
    try:
        yield from blocks
    finally:
        close = getattr(blocks, "close", None)  # a wide table's temporary file goes now
        if close is not None:
            close()


def _store_blocks(store: AbundanceStore) -> Iterator[np.ndarray]:
    for start, stop in store.block_bounds():
        yield store.read_block(start, stop)


def metaphlan_rank_counts(path: Path) -> dict[str, int]:
    """Clades of a MetaPhlAn merged table per rank (from the clade column only: the last part of each clade name)."""
    try:
        clades = pd.read_csv(path, sep=table_separator(path), comment=None, skiprows=comment_lines(path), usecols=[0], dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot be read as a MetaPhlAn table: {reading_problem(error)}") from None
    return _count_ranks(clades.iloc[:, 0].dropna().astype(str).str.rsplit("|", n=1).str[-1])


def _count_ranks(names: pd.Series | list[str]) -> dict[str, int]:
    ends = pd.Series(names, dtype=object).astype(str)
    counts = {rank: int(ends.str.startswith(prefix).sum()) for rank, prefix in RANK_PREFIXES.items()}
    return {rank: count for rank, count in counts.items() if count}


def humann_row_counts(path: Path) -> dict[str, int]:
    """A HUMAnN table's community rows and per-species (stratified) rows, special rows (UNMAPPED ...) left out."""
    counts = {}
    for name, stratified in (("community", False), ("stratified", True)):
        try:
            counts[name] = len(stream_humann(path, stratified).feature_ids)
        except DataError:
            if not stratified:
                raise
            counts[name] = 0
    return counts


def _layer_name(path: Path) -> str:
    name = re.sub(r"\W+", "_", path.name.split(".")[0]).strip("_")
    return name or "layer"


def plan_snippet(path: Path, fmt: str, rank: str | None, stratified: bool, missing: str) -> str:
    """The YAML of a ``data.layers`` entry that reads ``path`` as inspected (paste it under ``data: layers:``)."""
    entry: dict[str, Any] = {"path": str(path), "format": fmt}
    if rank is not None:
        entry["rank"] = rank
    if fmt == "humann":
        entry["stratified"] = stratified
    if fmt == "long" and missing != "zero":
        entry["missing"] = missing
    return yaml.safe_dump({_layer_name(path): entry}, sort_keys=False, default_flow_style=False)


def inspect_table(
    path: str | Path, *, format: str = "auto", rank: str | None = None, stratified: bool = False, missing: str = "zero"
) -> TableInspection:
    """Summarise a table or store before a plan reads it: format, samples, features, missing values, prevalence, scale.

    The table is read once, a block of features at a time (never whole); a store made by
    ``scalable-assoc ingest`` gives its stored per-feature counts and per-sample totals.

    Parameters
    ----------
    path
        An abundance table in any format a layer reads, or a ``.zarr`` store.
    format
        ``auto`` (detected as a layer's ``format: auto`` would), or one of ``metaphlan``, ``wide``,
        ``parquet``, ``humann``, ``long``, ``biom``, ``h5ad``, ``zarr``.
    rank
        MetaPhlAn and BIOM tables: the rank whose features are counted and summarised (default ``species``).
    stratified
        HUMAnN tables: summarise the per-species rows instead of the community totals.
    missing
        Long tables: a (sample, feature) pair not listed is ``zero`` or ``na`` (missing).

    Returns
    -------
    TableInspection
        The summary, with ``to_text()``, ``to_dict()`` and ``plan_snippet`` (the layer entry that reads it).

    Raises
    ------
    DataError
        The file does not exist, cannot be read in that format, or holds a bad value (naming file, sample and feature).

    Examples
    --------
    >>> from scalable_assoc import inspect_table
    >>> summary = inspect_table(tmp / "study" / "species.tsv")
    >>> summary.format, summary.scale, summary.n_samples, summary.features_per_rank["species"]
    ('metaphlan', 'percent', 600, 60)
    """
    path = Path(path)
    if format not in INSPECT_FORMATS:
        raise DataError(f"{path}: format {format!r} is not a table format; use one of {', '.join(INSPECT_FORMATS)}")
    if rank is not None and rank not in RANK_PREFIXES:
        raise DataError(f"{path}: rank {rank!r} is not a MetaPhlAn rank; use one of {', '.join(RANK_PREFIXES)}")
    if not path.exists():
        raise DataError(f"abundance file {path} does not exist")
    fmt = detect_format(path) if format == "auto" else format
    per_rank: dict[str, int] = {}
    notes: tuple[str, ...] = ()
    if fmt == "zarr":
        store = open_store(path)
        sample_ids, feature_ids, notes = store.sample_ids, store.feature_ids, store.notes
        used_rank = None
        blocks = _store_blocks(store)
    else:
        used_rank = (rank or "species") if fmt in RANKED_FORMATS else None
        read_options: dict[str, Any] = {}
        if stratified:
            read_options["stratified"] = True
        if missing != "zero":
            read_options["missing"] = missing
        stream = stream_abundance_table(path, fmt, used_rank or "species", **read_options)
        sample_ids, feature_ids, notes = stream.sample_ids, stream.feature_ids, stream.notes
        if fmt == "metaphlan":
            per_rank = metaphlan_rank_counts(path)
        elif fmt == "biom":
            per_rank = _count_ranks(biom_taxonomy_ends(path))
            used_rank = used_rank if per_rank else None  # without a taxonomy, rank is ignored
        elif fmt == "humann":
            per_rank = humann_row_counts(path)
        blocks = _blocks(stream)
    found = _Pass(len(sample_ids))
    try:
        for block in blocks:
            found.add(block)
    except DataError as error:
        if "negative value" not in str(error):
            raise
        raise DataError(
            f"{error} Scale: transformed/other: negative values look already transformed (CLR, log or centred); give the "
            "table of raw abundances (counts, percent or fractions) and let preprocess.transform transform it."
        ) from None
    nonzero = np.concatenate(found.nonzero) if found.nonzero else np.zeros(0, dtype=np.int64)
    observed = np.concatenate(found.observed) if found.observed else np.zeros(0, dtype=np.int64)
    totals = found.totals
    if fmt == "zarr":
        stored = store.stored_feature_summary(0, store.n_features)
        if stored is not None:
            nonzero, observed = stored.nonzero, stored.observed
        stored_totals = store.stored_sample_totals()
        totals = totals if stored_totals is None else stored_totals
    with np.errstate(invalid="ignore", divide="ignore"):
        prevalence = np.where(observed > 0, nonzero / np.maximum(observed, 1), 0.0)
    has_values = bool(np.isfinite(found.value_min))
    value_min = found.value_min if has_values else None
    scale, rule = classify_scale(value_min, found.whole_numbers, totals)
    return TableInspection(
        path=str(path),
        format=fmt,
        n_samples=len(sample_ids),
        n_features=len(feature_ids),
        rank=used_rank,
        features_per_rank=per_rank,
        n_missing=int(len(sample_ids) * len(feature_ids) - int(observed.sum())),
        prevalence={name: float(np.quantile(prevalence, q)) if prevalence.size else 0.0 for name, q in _QUANTILES.items()},
        value_min=value_min,
        value_max=found.value_max if has_values else None,
        sample_totals={
            name: float(function(totals)) if totals.size else 0.0
            for name, function in (("min", np.min), ("median", np.median), ("max", np.max))
        },
        scale=scale,
        scale_rule=rule,
        sample_examples=tuple(sample_ids[:EXAMPLES]),
        feature_examples=tuple(feature_ids[:EXAMPLES]),
        plan_snippet=plan_snippet(path, fmt, used_rank, stratified, missing),
        notes=tuple(notes),
    )
