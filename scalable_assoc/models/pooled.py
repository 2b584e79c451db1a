"""An exact pooled linear model across cohorts from each cohort's cross-products.

A cohort shares, per analysis and feature, the cross-products of its design
*centred within the cohort* on the participants that feature's model uses::

    Szz = sum_i (z_i - z_bar)(z_i - z_bar)'     (c, c), z = [exposure, covariates]
    Szy = sum_i (z_i - z_bar)(y_i - y_bar)      (c,)
    Syy = sum_i (y_i - y_bar)^2                 ()

With a fixed intercept per cohort (the pooled model ``y ~ cohort + exposure +
covariates``), the slopes depend on the data only through these sums
(Frisch-Waugh-Lovell: the cohort indicators project out each cohort's means),
so the pooled fit is ``beta = (sum Szz)^-1 sum Szy`` with
``RSS = sum Syy - beta' sum Szy`` and ``N - K - c`` residual degrees of
freedom, K the number of cohorts in the fit. The answer equals an OLS on the
stacked individual data with cohort indicators, without any individual value
leaving its cohort.

Centring within the cohort also keeps the sums well conditioned (no
``n * mean^2`` cancellation). Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalable_assoc.models.fits import FitStatus, two_sided_p

#: Relative eigenvalue below which a pooled (correlation-scaled) Szz is treated as singular.
_RANK_TOLERANCE = 1e-10


def packed_size(c: int) -> int:
    """Number of stored entries of a symmetric ``(c, c)`` matrix (its upper triangle)."""
    return c * (c + 1) // 2


def terms_from_packed_size(q: int) -> int:
    """Inverse of :func:`packed_size`; raises ValueError if ``q`` is not triangular."""
    c = int(round((np.sqrt(8 * q + 1) - 1) / 2))
    if packed_size(c) != q:
        raise ValueError(f"{q} values do not fill the upper triangle of a square matrix")
    return c


def unpack_symmetric(packed: np.ndarray) -> np.ndarray:
    """``(m, q)`` upper triangles (row-major, ``np.triu_indices``) -> ``(m, c, c)`` symmetric matrices."""
    c = terms_from_packed_size(packed.shape[1])
    upper_rows, upper_cols = np.triu_indices(c)
    full = np.zeros((packed.shape[0], c, c))
    full[:, upper_rows, upper_cols] = packed
    full[:, upper_cols, upper_rows] = packed
    return full


@dataclass(frozen=True)
class CrossProducts:
    """Within-cohort centred cross-products of one analysis, for ``m`` features.

    ``zz`` is ``(m, q)``: the upper triangle of ``Szz`` (row-major,
    ``np.triu_indices(c)``) over the terms ``[exposure, covariate columns...]``
    (no intercept); ``zy`` ``(m, c)``; ``yy`` and the counts ``(m,)``. ``n_cases``
    / ``n_controls`` count exposure 1 / 0 among the participants used (-1 for a
    continuous exposure). Features with fewer than two participants have NaN sums.
    """

    n: np.ndarray
    n_cases: np.ndarray
    n_controls: np.ndarray
    zz: np.ndarray
    zy: np.ndarray
    yy: np.ndarray


def centred_cross_products(exposure: np.ndarray, covariates: np.ndarray, binary: bool, outcome: np.ndarray) -> CrossProducts:
    """Cross-products of ``z = [exposure, covariates]`` and each feature, centred on that feature's participants.

    Args:
        exposure: ``(n,)`` exposure of the design's participants.
        covariates: ``(n, c - 1)`` covariate columns without the intercept (dummies included).
        binary: whether the exposure is 0/1 (counts cases and controls).
        outcome: ``(n, m)`` transformed feature values; NaN marks a missing value,
            which removes that participant from that feature's sums only.

    Returns:
        :class:`CrossProducts` for the ``m`` features.
    """
    n, m = outcome.shape
    terms = np.column_stack([exposure, covariates]).astype(np.float64)
    if terms.shape[0] != n:
        raise ValueError(f"design has {terms.shape[0]} rows, outcome {n}")
    c = terms.shape[1]
    # Centre once on all rows: the per-feature means of these columns are then small,
    # so removing them below loses nothing to cancellation.
    terms = terms - terms.mean(axis=0) if n else terms
    observed = ~np.isnan(outcome)
    counts = observed.sum(axis=0)
    filled = np.where(observed, outcome, 0.0)
    upper_rows, upper_cols = np.triu_indices(c)
    products = terms[:, upper_rows] * terms[:, upper_cols]  # (n, q), x_ia x_ib per row
    weights = observed.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        if observed.all():
            # No missing cell: every feature uses the same participants and shares Szz.
            term_means = np.broadcast_to(terms.mean(axis=0) if n else np.zeros(c), (m, c))
            raw_zz = np.broadcast_to(products.sum(axis=0), (m, products.shape[1]))
        else:
            term_means = (weights.T @ terms) / counts[:, None]  # (m, c)
            raw_zz = weights.T @ products  # (m, q)
        outcome_means = filled.sum(axis=0) / counts  # (m,)
        centred_outcome = np.where(observed, outcome - outcome_means, 0.0)
        zz = raw_zz - counts[:, None] * term_means[:, upper_rows] * term_means[:, upper_cols]
        # sum_i (z_i - z_bar)(y_i - y_bar) = sum_i z_i (y_i - y_bar): the centred outcome sums to 0.
        zy = centred_outcome.T @ terms
        yy = np.einsum("ij,ij->j", centred_outcome, centred_outcome)
    if binary:
        cases = (observed & (exposure[:, None] == 1)).sum(axis=0)
        controls = (observed & (exposure[:, None] == 0)).sum(axis=0)
    else:
        cases = controls = np.full(m, -1, dtype=np.int64)
    too_few = counts < 2
    zz = np.where(too_few[:, None], np.nan, zz)
    zy = np.where(too_few[:, None], np.nan, zy)
    yy = np.where(too_few, np.nan, yy)
    return CrossProducts(counts.astype(np.int64), np.asarray(cases, np.int64), np.asarray(controls, np.int64), zz, zy, yy)


@dataclass(frozen=True)
class PooledFits:
    """Pooled exposure slopes for ``m`` features (every array ``(m,)``).

    ``beta``: exposure coefficient in feature units per exposure unit; ``se`` its
    standard error; ``t = beta / se``; ``p`` two-sided from Student's t with
    ``df = n - cohorts - c``; ``status`` a :class:`FitStatus` code.
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    n: np.ndarray
    df: np.ndarray
    status: np.ndarray


def solve_pooled(zz: np.ndarray, zy: np.ndarray, yy: np.ndarray, n: np.ndarray, cohorts: np.ndarray) -> PooledFits:
    """Solve the pooled model from summed within-cohort cross-products.

    Args:
        zz: ``(m, c, c)`` sum over cohorts of each cohort's ``Szz`` (exposure first).
        zy: ``(m, c)`` sum of ``Szy``.
        yy: ``(m,)`` sum of ``Syy``.
        n: ``(m,)`` participants over all cohorts in the fit.
        cohorts: ``(m,)`` cohorts in the fit (each has its own intercept).

    Returns:
        :class:`PooledFits`; features whose pooled design is singular, whose
        exposure does not vary within any cohort, or without residual degrees of
        freedom get a status and no estimate.
    """
    m, c, _ = zz.shape
    status = np.full(m, FitStatus.OK, dtype=np.int8)
    beta = np.full(m, np.nan)
    se = np.full(m, np.nan)
    df = (n - cohorts - c).astype(np.float64)
    finite = np.isfinite(zz).all(axis=(1, 2)) & np.isfinite(zy).all(axis=1) & np.isfinite(yy)
    diagonal = np.diagonal(zz, axis1=1, axis2=2)
    exposure_constant = finite & ~(diagonal[:, 0] > 0)
    status[exposure_constant] = FitStatus.EXPOSURE_COLLINEAR
    status[~finite] = FitStatus.TOO_FEW_VALUES
    status[finite & ~exposure_constant & (df < 1)] = FitStatus.TOO_FEW_VALUES
    candidate = np.flatnonzero(status == FitStatus.OK)
    if candidate.size:
        # Correlation scaling makes the rank test and the solve independent of units.
        # A covariate column that is constant within every cohort (diagonal 0) is unidentifiable.
        scale_diag = diagonal[candidate]
        usable = (scale_diag > 0).all(axis=1)
        status[candidate[~usable]] = FitStatus.DESIGN_RANK_DEFICIENT
        candidate = candidate[usable]
    if candidate.size:
        inv_sqrt = 1.0 / np.sqrt(diagonal[candidate])
        scaled = zz[candidate] * inv_sqrt[:, :, None] * inv_sqrt[:, None, :]
        eigenvalues = np.linalg.eigvalsh(scaled)
        singular = eigenvalues[:, 0] <= _RANK_TOLERANCE * eigenvalues[:, -1]
        status[candidate[singular]] = FitStatus.DESIGN_RANK_DEFICIENT
        keep = ~singular
        candidate, scaled, inv_sqrt = candidate[keep], scaled[keep], inv_sqrt[keep]
    if candidate.size:
        inverse = np.linalg.inv(scaled)  # (s, c, c) of the scaled system
        right = zy[candidate] * inv_sqrt
        coefficients = np.einsum("sab,sb->sa", inverse, right) * inv_sqrt  # back to original units
        residual = yy[candidate] - np.einsum("sa,sa->s", coefficients, zy[candidate])
        sigma2 = np.maximum(residual, 0.0) / df[candidate]
        beta[candidate] = coefficients[:, 0]
        se[candidate] = np.sqrt(sigma2 * inverse[:, 0, 0]) * inv_sqrt[:, 0]
        constant = ~(sigma2 > 0)
        status[candidate[constant]] = FitStatus.CONSTANT_FEATURE
        beta[candidate[constant]] = np.nan
        se[candidate[constant]] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        t = beta / se
    p = np.where(np.isfinite(t), two_sided_p(t, np.maximum(df, 1.0)), np.nan)
    df = np.where(status == FitStatus.OK, df, np.nan)
    return PooledFits(beta, se, t, p, n.astype(np.int64), df, status)


def with_reference_dummies(matrix: np.ndarray, names: tuple[str, ...], references: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """A design's covariates with every categorical level as its own dummy, intercept removed.

    ``matrix`` is ``(n, k)`` with the intercept first and dummies named
    ``column[level]``; each of ``references`` (``column[level]``) is re-added as
    one minus the sum of its column's other dummies. Within a cohort the full
    set is collinear with the intercept, which centring removes; across cohorts
    the pooled fit drops one consortium-wide reference level per column instead
    (:func:`drop_reference_levels`), as one OLS on the stacked data would.
    Returns the ``(n, k - 1 + len(references))`` matrix and its names.
    """
    if names[:1] != ("(intercept)",):
        raise ValueError(f"design columns must start with the intercept, got {names[:1]}")
    columns = [matrix[:, 1:]]
    extra = []
    for reference in references:
        prefix = reference.split("[", 1)[0] + "["
        siblings = [i for i, name in enumerate(names) if name.startswith(prefix)]
        columns.append((1.0 - matrix[:, siblings].sum(axis=1))[:, None])
        extra.append(reference)
    return np.hstack(columns), tuple(names[1:]) + tuple(extra)


def drop_reference_levels(terms: list[str], categorical: tuple[str, ...]) -> list[str]:
    """Terms to keep in a pooled fit: all but the first level (sorted) of each categorical column."""
    dropped = set()
    for column in categorical:
        levels = sorted(t for t in terms if t.startswith(column + "["))
        if levels:
            dropped.add(levels[0])
    return [t for t in terms if t not in dropped]
