"""Passes over the participants: Fisher information, score, log-likelihood and more at given coefficients, and Newton's step."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scalable_assoc.models.logistic.packed import Basis, Cells, chunk_rows, row_chunks


@dataclass(frozen=True)
class Evaluation:
    """What one pass over the participants computed for ``w`` features (None: not asked for)."""

    fisher: np.ndarray | None  # (w, p, p) Fisher information B' W B
    score: np.ndarray | None  # (p, w) score B'(y - mu)
    loglik: np.ndarray | None  # (w,) log-likelihood (unpenalised)
    largest: np.ndarray | None  # (w,) max |eta| over used participants
    bend: np.ndarray | None = None  # (p, w) sum_i w'_i (B_i u)^2 B_i, see evaluate's bend_along


def evaluate(
    basis: Basis,
    y: np.ndarray,
    missing: Cells,
    coefficients: np.ndarray,
    fisher: bool = True,
    score: bool = True,
    loglik: bool = False,
    largest: bool = False,
    single: bool = False,
    single_fisher: bool = False,
    y32: np.ndarray | None = None,
    bend_along: np.ndarray | None = None,
) -> Evaluation:
    """One pass over the participants at ``eta = B @ coefficients`` (``(p, w)``), for ``w`` features.

    ``y`` is ``(n, w)`` presence, 0 in the ``missing`` cells (``y32``, if given,
    the same in single precision). With ``single`` the products and
    probabilities are computed in single precision (sums and the
    log-likelihood still in double); with ``single_fisher`` only the Fisher
    information's product is.

    ``bend_along`` (``(p, w)`` vectors ``u``) asks for ``g = sum_i w'_i (B_i u)^2 B_i``
    (``w' = w (1 - 2 mu)``, the weights' derivative in eta): along a step ``d``
    the information changes by ``dI = sum_i w'_i (B_i d) B_i B_i'``, so with ``u =
    I^-1 e_p`` the variance ``e_p' I^-1 e_p`` changes by ``-u' dI u = -d'g`` to first
    order. Computed in single precision: it only corrects a variance by a
    relative ~1e-6, so its own ~1e-6 relative rounding is far below 1e-10.

    The linear predictors are recomputed chunk by chunk rather than stored: an
    ``(n, w)`` array in memory costs more to read and write than the small
    product costs to redo.
    """
    n, w = y.shape
    matrix = basis.matrix32 if single else basis.matrix
    products = basis.products32 if single or single_fisher else basis.products
    given = coefficients
    # The pass works with -eta (exp(-eta) is what mu needs): negating the coefficients
    # is exact and costs (p, w) operations instead of (n, w).
    negated = np.negative(coefficients).astype(matrix.dtype)
    fisher_flat = np.zeros((products.shape[1], w)) if fisher else None
    score_sum = np.zeros((basis.p, w)) if score else None
    loglik_sum = np.zeros(w) if loglik else None
    largest_max = np.zeros(w) if largest else None
    bend_sum = np.zeros((basis.p, w)) if bend_along is not None else None
    along32 = None if bend_along is None else bend_along.astype(np.float32)
    chunks = row_chunks(n, w, missing)
    # Chunk-sized work arrays, reused by every chunk (no allocation per chunk).
    size = max(last - first for first, last, _ in chunks)
    if bend_along is not None:
        along_work, slope_work = np.empty((size, w), dtype=np.float32), np.empty((size, w), dtype=np.float32)
    work, spare = np.empty((size, w), dtype=matrix.dtype), np.empty((size, w), dtype=matrix.dtype)
    third = np.empty((size, w), dtype=matrix.dtype) if loglik else work
    # exp(-eta) overflows to inf only for very negative eta, where mu = 0 is its limit
    # (log mu = -inf there: the log-likelihood is then recomputed without overflow, below).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for first, last, cells in chunks:  # chunks of participants, never features
            rows = matrix[first:last]
            observed = (y if y32 is None or not single else y32)[first:last].astype(matrix.dtype, copy=False)
            buffer, other = work[: last - first], spare[: last - first]
            np.matmul(rows, negated, out=buffer)  # -eta
            if largest_max is not None:
                magnitude = np.abs(buffer, out=other)
                magnitude[cells] = 0.0
                np.maximum(largest_max, magnitude.max(axis=0), out=largest_max)
            if loglik_sum is not None:
                # Per cell y log mu + (1 - y) log(1 - mu) = (1 - y)(-eta) + log mu: the first
                # term now, the second once mu is known (no exp of its own). Summed in double
                # precision. In single precision a cell is off by ~1e-7 |eta| (the two terms
                # cancel where y = 0 and eta << 0): enough for step checks, which are all the
                # single-precision log-likelihood serves; estimates come from double passes.
                term = np.subtract(1.0, observed, out=third[: last - first])
                term *= buffer
            np.exp(buffer, out=buffer)
            buffer += 1.0
            mu = np.divide(1.0, buffer, out=buffer)  # np.divide is vectorised, np.reciprocal is not
            if loglik_sum is not None:
                term += np.log(mu, out=other)
                term[cells] = 0.0
                loglik_sum += term.sum(axis=0, dtype=np.float64)
            mu[cells] = 0.0  # with y = 0 there: no weight, no residual
            # mu - mu^2 is accurate in absolute terms, all that the sums need.
            weights = np.multiply(mu, mu, out=other)
            np.subtract(mu, weights, out=weights)
            if fisher_flat is not None:
                fisher_flat += products[first:last].T @ weights.astype(products.dtype, copy=False)
            if bend_sum is not None and along32 is not None:
                rows32 = basis.matrix32[first:last]
                along = np.matmul(rows32, along32, out=along_work[: last - first])
                along *= along
                slope = np.multiply(mu, -2.0, out=slope_work[: last - first], casting="same_kind")
                slope += 1.0
                slope *= weights
                along *= slope  # w' (B u)^2, zero in the missing cells (as w)
                bend_sum += rows32.T @ along
            if score_sum is not None:
                score_sum += rows.T @ np.subtract(observed, mu, out=mu)
    if loglik_sum is not None and not np.all(np.isfinite(loglik_sum)):
        # exp(-eta) overflowed (eta < -88 in single precision, < -709 in double) where the
        # log-likelihood is finite: redo those features with an overflow-free formula.
        redo = np.flatnonzero(~np.isfinite(loglik_sum))
        loglik_sum[redo] = overflow_free_loglik(basis, y[:, redo], missing.restrict(redo, w), given[:, redo])
    return Evaluation(None if fisher_flat is None else basis.unpack(fisher_flat), score_sum, loglik_sum, largest_max, bend_sum)


def largest_moves(basis: Basis, steps: np.ndarray) -> np.ndarray:
    """``(w,)`` largest ``|B_i step|`` over all participants for ``(p, w)`` steps, computed in single precision.

    Its rounding (~1e-7 relative) does not matter where it is used: against
    ``SAFE_STEP``, which sits below the certificate's limit (~1.79).
    """
    n, w = basis.matrix.shape[0], steps.shape[1]
    largest = np.zeros(w)
    steps32 = steps.astype(np.float32)
    size = chunk_rows(w)
    for first in range(0, n, size):  # chunks of participants, never features
        moves = basis.matrix32[first : first + size] @ steps32
        np.maximum(largest, np.abs(moves, out=moves).max(axis=0), out=largest)
    return largest


def overflow_free_loglik(basis: Basis, y: np.ndarray, missing: Cells, coefficients: np.ndarray) -> np.ndarray:
    """``(w,)`` log-likelihood at ``eta = B @ coefficients``, without overflow: ``-sum log(1 + exp(-s eta))``, ``s = 2y - 1``.

    Slower than the pass's formula; only for the few features where that overflowed.
    """
    n, w = y.shape
    total = np.zeros(w)
    for first, last, cells in row_chunks(n, w, missing):  # chunks of participants, never features
        term = np.logaddexp(0.0, (1.0 - 2.0 * y[first:last]) * (basis.matrix[first:last] @ coefficients))
        term[cells] = 0.0
        total -= term.sum(axis=0)
    return total


def stacked_inverse(matrices: np.ndarray) -> np.ndarray:
    """Inverses of a ``(w, p, p)`` stack of symmetric matrices; pseudo-inverses if one is exactly singular."""
    try:
        return np.linalg.inv(matrices)
    except np.linalg.LinAlgError:
        # One exactly singular matrix (weights underflowed) must not sink the whole stack.
        return np.linalg.pinv(matrices, hermitian=True)


def newton_step(fisher: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(delta (p, w), variance (w,), u (p, w))``: ``I^-1 U``, the last diagonal entry of ``I^-1`` and its last column, one stacked solve."""
    w, p, _ = fisher.shape
    right = np.zeros((w, p, 2))
    right[:, :, 0] = score.T
    right[:, -1, 1] = 1.0
    try:
        solved = np.linalg.solve(fisher, right)
    except np.linalg.LinAlgError:
        solved = stacked_inverse(fisher) @ right
    return solved[:, :, 0].T.copy(), solved[:, -1, 1].copy(), solved[:, :, 1].T.copy()
