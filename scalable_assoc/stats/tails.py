"""Upper-tail probabilities of the t, F, chi-squared and normal distributions, elementwise.

The same numbers as ``scipy.stats.<dist>.sf``, bit for bit: those call the
``scipy.special`` functions used here (``stdtr``, ``fdtrc``, ``chdtrc``,
``ndtr``) on the arguments they accept, and this module repeats their handling
of the rest (NaN for a non-positive or NaN degree of freedom and for a NaN
statistic; 1 at or below the support's lower end, 0 at +inf). Importing
``scipy.stats`` costs about half a second, in the client and in every worker
process; ``scipy.special`` a small part of that.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

import numpy as np
import scipy.special


def t_sf(x: np.ndarray, df: np.ndarray | float) -> np.ndarray:
    """``P(T_df > x)`` (``scipy.stats.t.sf(x, df)``); ``x`` and ``df`` broadcast together, float64 out."""
    x, df = _floats(x), _floats(df)
    with np.errstate(invalid="ignore"):
        p = scipy.special.stdtr(df, -x)
    return _checked(p, df > 0, x, -np.inf)


def f_sf(x: np.ndarray, dfn: np.ndarray | float, dfd: np.ndarray | float) -> np.ndarray:
    """``P(F_{dfn, dfd} > x)`` (``scipy.stats.f.sf(x, dfn, dfd)``); 1 for ``x <= 0``."""
    x, dfn, dfd = _floats(x), _floats(dfn), _floats(dfd)
    with np.errstate(invalid="ignore"):
        p = scipy.special.fdtrc(dfn, dfd, x)
    return _checked(p, (dfn > 0) & (dfd > 0), x, 0.0)


def chi2_sf(x: np.ndarray, df: np.ndarray | float) -> np.ndarray:
    """``P(chi2_df > x)`` (``scipy.stats.chi2.sf(x, df)``); 1 for ``x <= 0``."""
    x, df = _floats(x), _floats(df)
    with np.errstate(invalid="ignore"):
        p = scipy.special.chdtrc(df, x)
    return _checked(p, df > 0, x, 0.0)


def norm_sf(x: np.ndarray) -> np.ndarray:
    """``P(Z > x)`` for a standard normal ``Z`` (``scipy.stats.norm.sf(x)``)."""
    x = _floats(x)
    return _checked(scipy.special.ndtr(-x), np.True_, x, -np.inf)


def _floats(values: np.ndarray | float | int) -> np.ndarray:
    # float64 always: scipy.special also has float32 loops, which scipy.stats never uses.
    return np.asarray(values, dtype=np.float64)


def _checked(p: np.ndarray, valid: np.ndarray | np.bool_, x: np.ndarray, lower: float) -> np.ndarray:
    """``p`` inside the support, as ``rv_continuous.sf`` has it: 1 at or below its ``lower`` end, 0 at +inf;
    NaN where the parameters are not ``valid`` or ``x`` is NaN (scipy.stats' ``badvalue``)."""
    p = np.where(x <= lower, 1.0, np.where(x == np.inf, 0.0, p))
    return np.where(valid & ~np.isnan(x), p, np.nan)
