"""Per-sample alpha diversity, accumulated over blocks of features.

Stores are chunked along features (every chunk holds all samples), so a sample's
diversity is built from *partial sums* that add across chunks:
:func:`alpha_partial_sums` turns one ``(n_samples, n_block_features)`` block into
``(n_samples, K)`` sums, the caller adds the sums of all blocks, and
:func:`alpha_from_sums` turns the totals into metrics. Definitions follow R's
vegan: ``shannon`` = ``diversity(x, "shannon")`` (natural log), ``simpson`` =
``diversity(x, "simpson")`` (``1 - sum p^2``), ``richness`` =
``specnumber(x > threshold)``.

Shannon from sums: with ``S1 = sum x`` and ``S2 = sum_{x>0} x log x``,
``H = -sum p log p = log S1 - S2 / S1``. The two terms are of the size of
``log x``, so the cancellation costs about ``|log S1| / H`` ulps: well within
1e-12 relative for counts or relative abundances (checked against vegan in
``tests/test_diversity.py``). The same holds for ``1 - S3 / S1^2``.

Pure numpy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ALPHA_METRICS: tuple[str, ...] = ("shannon", "simpson", "richness")

#: Columns of the partial sums, in order.
PARTIAL_SUMS: tuple[str, ...] = ("sum", "sum_xlogx", "sum_squares", "present", "missing")
_SUM, _XLOGX, _SQUARES, _PRESENT, _MISSING = range(len(PARTIAL_SUMS))


def alpha_partial_sums(block: np.ndarray, presence_threshold: float = 0.0) -> np.ndarray:
    """Partial sums of one block of features, to be added over blocks.

    Parameters
    ----------
    block:
        ``(n_samples, n_block_features)`` raw abundances on any scale (counts,
        proportions, percentages); NaN marks a missing value. Values must be
        non-negative.
    presence_threshold:
        A feature counts towards richness where its value is ``> presence_threshold``.

    Returns
    -------
    sums:
        ``(n_samples, 5)`` float64, columns :data:`PARTIAL_SUMS`: ``sum x``,
        ``sum x log x`` over ``x > 0``, ``sum x^2``, the number of values
        ``> presence_threshold`` and the number of missing values (NaN are left
        out of the first four). The sums of two blocks' results are the sums of
        the two blocks side by side.
    """
    block = np.asarray(block, dtype=np.float64)
    if block.ndim != 2:
        raise ValueError(f"block must be 2-D (samples x features), got shape {block.shape}")
    if np.any(block < 0):  # NaN compares False
        raise ValueError("abundances must be non-negative")
    missing = np.isnan(block)
    values = np.where(missing, 0.0, block)
    positive = values > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        xlogx = np.where(positive, values * np.log(np.where(positive, values, 1.0)), 0.0)
    sums = np.empty((block.shape[0], len(PARTIAL_SUMS)))
    sums[:, _SUM] = values.sum(axis=1)
    sums[:, _XLOGX] = xlogx.sum(axis=1)
    sums[:, _SQUARES] = (values * values).sum(axis=1)
    sums[:, _PRESENT] = (block > presence_threshold).sum(axis=1)
    sums[:, _MISSING] = missing.sum(axis=1)
    return sums


def alpha_from_sums(sums: np.ndarray, metrics: Sequence[str] = ALPHA_METRICS) -> dict[str, np.ndarray]:
    """Alpha diversity metrics from partial sums added over all feature blocks.

    Parameters
    ----------
    sums:
        ``(n_samples, 5)`` the sum over blocks of :func:`alpha_partial_sums`.
    metrics:
        Names from :data:`ALPHA_METRICS`.

    Returns
    -------
    metrics:
        ``{name: (n_samples,) float64}``. ``shannon`` is vegan's
        ``diversity(x, "shannon")`` (natural log), ``simpson`` its
        ``diversity(x, "simpson")`` (``1 - sum p^2``), ``richness`` vegan's
        ``specnumber(x > threshold)``. A sample with any missing value gets NaN
        for every metric; a sample whose total is 0 gets NaN for ``shannon``
        and ``simpson`` (proportions are undefined; vegan would return 0 and
        NaN respectively) and its richness (0).
    """
    sums = np.asarray(sums, dtype=np.float64)
    if sums.ndim != 2 or sums.shape[1] != len(PARTIAL_SUMS):
        raise ValueError(f"sums must have shape (n_samples, {len(PARTIAL_SUMS)}), got {sums.shape}")
    unknown = [m for m in metrics if m not in ALPHA_METRICS]
    if unknown:
        raise ValueError(f"unknown alpha metric(s) {unknown}; choose from {list(ALPHA_METRICS)}")
    total = sums[:, _SUM]
    incomplete = sums[:, _MISSING] > 0
    undefined = incomplete | ~(total > 0)
    safe_total = np.where(undefined, 1.0, total)
    out: dict[str, np.ndarray] = {}
    for metric in metrics:
        if metric == "shannon":
            value = np.log(safe_total) - sums[:, _XLOGX] / safe_total
            out[metric] = np.where(undefined, np.nan, value)
        elif metric == "simpson":
            value = 1.0 - sums[:, _SQUARES] / (safe_total * safe_total)
            out[metric] = np.where(undefined, np.nan, value)
        else:
            out[metric] = np.where(incomplete, np.nan, sums[:, _PRESENT])
    return out
