"""Abundance filters and transforms, vectorised over a block of features.

Blocks are ``(n_samples, n_features)`` float64 arrays; NaN marks a missing value.
Transforms that need a whole sample (CLR's geometric mean, TSS's total) take
per-sample summaries computed over *all kept features* of the layer, which the
engine accumulates block by block (:func:`sample_summaries`) before any block is
transformed (:func:`apply_transform`). Order: filter, then transform over the
features kept; or (``preprocess.filter: after_transform``) the pseudocount and
per-sample summaries over all features, the filter then only choosing which
transformed features are fitted. A CLR's per-sample summaries may come from
another layer (``preprocess.clr_reference``): the engine passes them in.

Pure numpy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRANSFORMS: tuple[str, ...] = ("clr", "log", "ast", "tss", "none")


@dataclass(frozen=True)
class FeatureSummary:
    """Per-feature counts for one block (every array ``(m,)``).

    ``nonzero``: values > 0; ``observed``: non-missing values; ``min_positive``:
    smallest value > 0 (inf where none).
    """

    nonzero: np.ndarray
    observed: np.ndarray
    min_positive: np.ndarray


def feature_summary(block: np.ndarray) -> FeatureSummary:
    """Counts for the prevalence filter and the half-minimum pseudocount."""
    observed = ~np.isnan(block)
    positive = block > 0  # NaN compares False
    return FeatureSummary(nonzero=positive.sum(axis=0), observed=observed.sum(axis=0), min_positive=smallest_positive(block, positive))


def smallest_positive(block: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """``(m,)`` each column's smallest value > 0 of ``block`` ``(n, m)``, inf where none; ``positive`` is ``block > 0``.

    The other cells become NaN by a division (``x / 1`` is ``x`` exactly; ``0 / 0`` and ``NaN / 0`` are NaN),
    which ``fmin`` passes over: no branch per cell. ``np.where(positive, block, inf)`` ran 5x slower on
    abundances, where zeros and non-zeros mix and the branch on each cell is mispredicted half the time.
    For abundances (>= 0 or NaN), as every reader checks them and every store holds them: a negative cell
    would be -inf here (``-x / 0``), not passed over.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        candidates = np.divide(block, positive)
    return np.fmin.reduce(candidates, axis=0, initial=np.inf)


def prevalence(summary: FeatureSummary) -> np.ndarray:
    """Fraction of non-missing values that are non-zero, per feature (0 where all are missing)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = summary.nonzero / summary.observed
    return np.where(summary.observed > 0, fraction, 0.0)


def half_min_pseudocount(min_positive_of_kept: np.ndarray) -> float:
    """Half the smallest non-zero value over the kept features of a layer."""
    smallest = float(np.min(min_positive_of_kept)) if min_positive_of_kept.size else np.inf
    if not np.isfinite(smallest):
        raise ValueError("no non-zero value among the kept features: a half-minimum pseudocount is undefined")
    return smallest / 2.0


def select_features(
    summaries: list[FeatureSummary],
    min_prevalence: float,
    pseudocount: float | str,
    listed: list[np.ndarray] | None = None,
    pseudocount_over_all: bool = False,
) -> tuple[list[np.ndarray], float]:
    """The prevalence filter and the pseudocount of a layer, from its blocks' summaries.

    Returns a kept mask per block and the pseudocount: the number given, or for
    ``"half_min"`` half the smallest non-zero value of the kept features (of all
    features with ``pseudocount_over_all``: the filter after the transform).
    ``listed`` (a mask per block: the features of a shared feature list) replaces
    the prevalence filter: exactly those features are kept.
    Raises ValueError when no feature is kept or none has a non-zero value.
    """
    if listed is not None:
        kept = [np.asarray(mask, dtype=bool).copy() for mask in listed]
        if not any(mask.any() for mask in kept):
            raise ValueError("no feature of the feature list is in this layer")
    else:
        kept = [prevalence(summary) >= min_prevalence for summary in summaries]
        if not any(mask.any() for mask in kept):
            raise ValueError(f"no feature is non-zero in at least {min_prevalence:.1%} of samples; lower preprocess.min_prevalence")
    if pseudocount != "half_min":
        return kept, float(pseudocount)
    if pseudocount_over_all:
        minima = np.concatenate([summary.min_positive for summary in summaries])
    else:
        minima = np.concatenate([summary.min_positive[mask] for summary, mask in zip(summaries, kept, strict=True)])
    return kept, half_min_pseudocount(minima)


def needs_sample_summary(transform: str) -> bool:
    """Whether the transform needs per-sample sums over all kept features."""
    return transform in ("clr", "tss", "ast")


def sample_summaries(block: np.ndarray, transform: str, pseudocount: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample partial sums over the kept features of one block.

    Returns ``(total, count)``, each ``(n,)``: for CLR the sum of
    ``log(x + pseudocount)``, for TSS/AST the sum of ``x``; ``count`` is the
    number of non-missing values. Sums of blocks add up to the layer's summary.
    """
    missing = np.isnan(block)
    count = block.shape[1] - missing.sum(axis=1)
    if transform != "clr":
        return np.where(missing, 0.0, block).sum(axis=1), count
    # One temporary, logged in place: this runs over every value of a layer, so each pass and each
    # fresh block-sized allocation shows. Missing cells stay NaN through the log and are zeroed after,
    # which gives the same values, hence the same sums, as masking before the log.
    values = np.add(block, pseudocount)
    np.log(values, out=values)
    if missing.any():
        values[missing] = 0.0
    return values.sum(axis=1), count


def with_absent_zeros(
    summary: tuple[np.ndarray, np.ndarray], n_absent: int, transform: str, pseudocount: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample sums with ``n_absent`` more features that are zero in every sample.

    A feature of a shared feature list that the layer lacks still enters each
    sample's CLR mean: ``(total + n_absent * log(c), count + n_absent)``. TSS/AST
    totals are unchanged by zeros (only the count of values grows).
    """
    total, count = summary
    if n_absent == 0:
        return total, count
    if transform == "clr":
        total = total + n_absent * np.log(pseudocount)
    return total, count + n_absent


def apply_transform(
    block: np.ndarray, transform: str, pseudocount: float, sample_total: np.ndarray | None, sample_count: np.ndarray | None
) -> np.ndarray:
    """Transform a block of kept features; missing values stay NaN.

    * ``clr``: ``log(x + c) - mean_j log(x_j + c)`` over the sample's kept, non-missing features;
    * ``log``: natural ``log(x + c)``;
    * ``tss``: ``x / sum_j x_j`` (proportions of the kept features);
    * ``ast``: ``arcsin(sqrt(x / sum_j x_j))``;
    * ``none``: unchanged.
    """
    if transform == "none":
        return block.astype(np.float64, copy=True)
    if transform == "log":
        return np.log(block + pseudocount)
    if sample_total is None or sample_count is None:
        raise ValueError(f"transform {transform!r} needs per-sample summaries")
    if transform == "clr":
        with np.errstate(invalid="ignore", divide="ignore"):
            geometric_log_mean = sample_total / sample_count
        # One block-sized temporary, transformed in place (same operations, same values, as log(x + c) - mean).
        values = np.add(block, pseudocount)
        np.log(values, out=values)
        values -= geometric_log_mean[:, None]
        return values
    with np.errstate(invalid="ignore", divide="ignore"):
        proportions = block / sample_total[:, None]
    if transform == "tss":
        return proportions
    if transform == "ast":
        return np.arcsin(np.sqrt(np.clip(proportions, 0.0, 1.0)))
    raise ValueError(f"unknown transform {transform!r}; expected one of {', '.join(TRANSFORMS)}")


def presence_indicator(block: np.ndarray, threshold: float) -> np.ndarray:
    """1.0 where a raw value is above ``threshold`` (present), 0.0 where not, NaN where missing."""
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(block), np.nan, (block > threshold).astype(np.float64))


def nonzero_values(block: np.ndarray, threshold: float) -> np.ndarray:
    """The block with every value at or below ``threshold`` (absent) set missing.

    The abundance-when-present view (MaAsLin3's non-zero linear model): a
    participant without the feature is left out of that feature's model, so
    no pseudocount is needed and "how much" is not mixed with "whether".
    """
    with np.errstate(invalid="ignore"):
        return np.where(block > threshold, block, np.nan)


def mixed_closure_scales(totals: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Samples of one relative-abundance table closed on two scales: ``(percent, fraction)`` positions, or None.

    ``totals`` ``(n,)`` are each sample's sum over all features. A table of
    relative abundances sums to about 100 per sample (MetaPhlAn's percent) or
    to about 1 (fractions); a table holding both was put together from two
    sources, and its log or CLR values differ by log(100) between them. Returns
    the positions of the samples near each scale when both occur and together
    they are at least 90% of the samples with a positive total; else None.
    """
    totals = np.asarray(totals, dtype=np.float64)
    positive = np.isfinite(totals) & (totals > 0)
    percent = np.flatnonzero(positive & (totals >= 50) & (totals <= 150))
    fraction = np.flatnonzero(positive & (totals >= 0.5) & (totals <= 1.5))
    if percent.size and fraction.size and percent.size + fraction.size >= 0.9 * positive.sum():
        return percent, fraction
    return None
