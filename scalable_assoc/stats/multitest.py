"""Multiple-testing correction, vectorised.

p-values without an estimate (NaN) are left out of the family, as R's
``p.adjust`` does; statsmodels' ``fdrcorrection`` would instead turn every
adjusted value NaN when one input is NaN.

Pure numpy: no Dask, no files, no pandas.
"""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) of one family.

    ``p`` is ``(m,)``; NaN entries are not counted in the family size and stay
    NaN. Equals R ``p.adjust(p, "BH")`` on the non-missing entries.
    """
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if tested.size == 0:
        return q
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = tested[np.argsort(p[tested], kind="stable")]
    family = order.size
    ranked = p[order] * family / np.arange(1, family + 1)
    # Step-up: the running minimum from the largest p-value downwards.
    monotone = np.minimum.accumulate(ranked[::-1])[::-1]
    q[order] = np.minimum(monotone, 1.0)
    return q


def benjamini_hochberg_grouped(p: np.ndarray, family: np.ndarray) -> np.ndarray:
    """BH within each family: ``p`` and ``family`` (integer codes) are ``(m,)``.

    Loops over families (a few hundred at most: layer x exposure x adjustment),
    never over p-values.
    """
    p = np.asarray(p, dtype=np.float64)
    family = np.asarray(family)
    q = np.full(p.shape, np.nan)
    order = np.argsort(family, kind="stable")
    boundaries = np.r_[0, np.flatnonzero(family[order][1:] != family[order][:-1]) + 1, order.size]
    for start, stop in zip(boundaries[:-1], boundaries[1:], strict=True):
        members = order[start:stop]
        q[members] = benjamini_hochberg(p[members])
    return q
