"""OLS for features with missing values: each feature's Gram matrix over its present rows, solved as one stack.

A feature with missing values uses the design's orthonormal basis restricted
to its present rows: its Gram matrix is ``I - D_j`` where ``D_j`` sums
``v_i v_i'`` over its missing rows (:func:`masked_downdates`), solved as a
stack of small well-conditioned systems (:func:`solve_masked`). A covariate
constant or collinear among a feature's participants is aliased as R's ``lm``
does (:func:`aliased_solve`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from scalable_assoc.models.thresholds import GRAM_SINGULAR


@dataclass(frozen=True)
class AliasedSolution:
    """Least squares on ``[Q, b_e]`` for features whose Gram matrix is singular (``a`` of them)."""

    coefficients: np.ndarray  # (a, rank + 1): minimum-norm on the covariates, unique on the exposure
    exposure_row: np.ndarray  # (a, rank + 1): d(exposure coefficient) / d(B'y)
    variance: np.ndarray  # (a,): the exposure coefficient's variance factor
    covariate_rank: np.ndarray  # (a,): rank of the covariates among the feature's participants
    estimable: np.ndarray  # (a,) bool: the exposure is not a combination of the covariates there


def aliased_solve(gram: np.ndarray, right: np.ndarray) -> AliasedSolution:
    """The exposure coefficient when covariates are collinear among a feature's participants.

    ``gram`` ``(a, r + 1, r + 1)`` and ``right`` ``(a, r + 1)`` are the normal
    equations on ``[Q, b_e]`` restricted to the feature's present rows. A
    covariate constant there (a sequencing batch all carriers share) makes the
    covariate block ``G_cc`` singular; R's ``lm`` then aliases that covariate
    and still estimates the exposure. The same here: with ``G_cc^+`` the
    pseudo-inverse of the covariate block (eigenvalues at or below
    :data:`GRAM_SINGULAR` dropped), ``u = G_cc^+ g_ce`` and the Schur complement
    ``s = g_ee - g_ce'u``, the exposure coefficient is ``(r_e - u'r_c) / s``
    with variance factor ``1 / s``, and the covariate rank lowers the degrees
    of freedom. The fitted values (and so the RSS) equal those of the model
    without the aliased columns. An exposure with ``s`` at or below the
    tolerance is itself collinear with the covariates there: not estimable.
    """
    r = gram.shape[1] - 1
    covariate_block, cross, exposure_square = gram[:, :r, :r], gram[:, :r, r], gram[:, r, r]
    eigenvalues, vectors = np.linalg.eigh(covariate_block)
    keep = eigenvalues > GRAM_SINGULAR
    inverse_values = np.where(keep, 1.0 / np.where(keep, eigenvalues, 1.0), 0.0)
    pseudo_inverse = np.einsum("aij,aj,akj->aik", vectors, inverse_values, vectors)
    along = np.einsum("aij,aj->ai", pseudo_inverse, cross)  # u
    schur = exposure_square - np.einsum("ai,ai->a", cross, along)
    estimable = schur > GRAM_SINGULAR
    safe = np.where(estimable, schur, 1.0)
    right_c, right_e = right[:, :r], right[:, r]
    exposure_coefficient = np.where(estimable, (right_e - np.einsum("ai,ai->a", along, right_c)) / safe, np.nan)
    coefficients = np.empty_like(right)
    coefficients[:, r] = exposure_coefficient
    coefficients[:, :r] = np.einsum("aij,aj->ai", pseudo_inverse, right_c - cross * np.nan_to_num(exposure_coefficient)[:, None])
    exposure_row = np.concatenate([-along, np.ones((along.shape[0], 1))], axis=1) / safe[:, None]
    return AliasedSolution(coefficients, exposure_row, 1.0 / safe, keep.sum(axis=1), estimable)


def masked_downdates(
    vectors: np.ndarray,
    masked: np.ndarray,
    m: int,
    present: np.ndarray | None,
    missing_cells: tuple[np.ndarray, np.ndarray] | None,
    present_gram: np.ndarray | None,
) -> np.ndarray:
    """``(a, w, w)`` ``D_j = I - G_j`` for the ``masked`` features (``(a,)`` of ``m``).

    ``G_j`` is the Gram matrix of ``vectors`` over their present rows.

    ``vectors`` ``(N, w)`` is the design's ``[Q, b_1..b_k]`` padded with zeros
    outside its rows. One of three sources: ``present_gram`` ``(m, w, w)``, built
    once for all designs sharing the covariate set (see
    :func:`~scalable_assoc.models.ols_products.grouped_products`); few missing cells,
    listed as ``missing_cells`` (rows, columns among the design's rows); or the
    block's ``(N, m)`` 0/1 ``present`` matrix, for many missing cells.
    """
    n_total, width = vectors.shape
    if present_gram is not None:
        # Built once for all designs sharing this covariate set (see grouped_products).
        return np.eye(width) - present_gram[masked]
    upper_r, upper_c = np.triu_indices(width)
    if missing_cells is not None:
        # Few missing cells: sum over them only (a sparse product).
        miss_rows, miss_cols = missing_cells
        indicator = scipy.sparse.csr_matrix((np.ones(miss_rows.size), (miss_cols, miss_rows)), shape=(m, n_total))[masked]
        used_rows = np.unique(miss_rows)
        pair_products = np.zeros((n_total, upper_r.size))
        pair_products[used_rows] = vectors[used_rows][:, upper_r] * vectors[used_rows][:, upper_c]
        downdate_flat = np.asarray(indicator @ pair_products)  # (masked, pairs)
    else:
        # Many missing cells (lm_nonzero: every absent participant): build each feature's
        # Gram matrix over its present rows in one dense product instead, D = I - G.
        # The padded basis is zero outside the design, so the product counts design rows only.
        assert present is not None
        pair_products = vectors[:, upper_r] * vectors[:, upper_c]
        gram_flat = (pair_products.T @ present[:, masked]).T  # (masked, pairs)
        downdate_flat = (upper_r == upper_c).astype(np.float64) - gram_flat
    downdate = np.zeros((masked.size, width, width))
    downdate[:, upper_r, upper_c] = downdate_flat
    downdate[:, upper_c, upper_r] = downdate_flat
    return downdate


@dataclass(frozen=True)
class MaskedSolution:
    """Least squares on ``[Q, b_e]`` over each masked feature's present rows (``a`` features, ``r`` covariate columns)."""

    coefficients: np.ndarray  # (a, r + 1)
    exposure_rows: np.ndarray  # (a, r + 1) the exposure's row of G^-1 (its influence on B'y)
    variance: np.ndarray  # (a,) the exposure coefficient's variance factor
    singular: np.ndarray  # (a,) bool: no estimate of the exposure
    aliased: np.ndarray  # (a,) bool: solved by aliasing (``covariate_rank`` below is theirs)
    covariate_rank: np.ndarray  # (aliased.sum(),) rank of the covariates among those features' participants


def solve_masked(gram: np.ndarray, right: np.ndarray, alias: bool) -> MaskedSolution:
    """Solve the ``(a, r + 1, r + 1)`` normal equations ``gram`` with right-hand sides ``right`` (``(a, r + 1)``).

    A singular Gram matrix (smallest eigenvalue at most :data:`GRAM_SINGULAR`) is
    aliased with ``alias`` (:func:`aliased_solve`), else left singular.
    """
    width = gram.shape[1]
    # One inverse per feature serves the solve, the exposure's variance and a
    # singularity bound: lambda_min(G) >= 1 / ||G^-1||_F, so only features failing
    # the bound need their eigenvalues (all of them if some G is exactly singular).
    try:
        inverse = np.linalg.inv(gram)
        with np.errstate(over="ignore", invalid="ignore"):
            frobenius = np.sqrt(np.einsum("mij,mij->m", inverse, inverse))
        doubtful = np.flatnonzero(~(frobenius < 1.0 / GRAM_SINGULAR))
    except np.linalg.LinAlgError:
        inverse = None
        doubtful = np.arange(gram.shape[0])
    bad = np.zeros(gram.shape[0], dtype=bool)
    if doubtful.size:
        bad[doubtful] = np.linalg.eigvalsh(gram[doubtful])[:, 0] <= GRAM_SINGULAR
    if inverse is None or bad.any():
        inverse = np.linalg.inv(np.where(bad[:, None, None], np.eye(width), gram))
    gamma = np.einsum("mij,mj->mi", inverse, right)
    exposure_rows = inverse[:, :, -1]  # G^-1 is symmetric: its last column is its last row
    variance = inverse[:, -1, -1]
    singular = bad.copy()
    covariate_rank = np.zeros(0, dtype=np.int64)
    aliased = bad & alias
    if bad.any() and alias:
        solution = aliased_solve(gram[bad], right[bad])
        gamma[bad], exposure_rows[bad], variance[bad] = solution.coefficients, solution.exposure_row, solution.variance
        singular[bad] = ~solution.estimable
        covariate_rank = solution.covariate_rank
    return MaskedSolution(gamma, exposure_rows, variance, singular, aliased, covariate_rank)
