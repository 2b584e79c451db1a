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
    # The pass works with -eta (exp(-eta) is what mu needs): negating the coefficients
    # is exact and costs (p, w) operations instead of (n, w).
    inputs = _PassInputs(
        matrix,
        basis.products32 if single or single_fisher else basis.products,
        y if y32 is None or not single else y32,
        np.negative(coefficients).astype(matrix.dtype),
        None if bend_along is None else bend_along.astype(np.float32),
    )
    sums = _Sums(
        np.zeros((inputs.products.shape[1], w)) if fisher else None,
        np.zeros((basis.p, w)) if score else None,
        np.zeros(w) if loglik else None,
        np.zeros(w) if largest else None,
        np.zeros((basis.p, w)) if bend_along is not None else None,
    )
    chunks = row_chunks(n, w, missing)
    work = _WorkArrays.allocate(max(last - first for first, last, _ in chunks), w, matrix.dtype, loglik, bend_along is not None)
    # exp(-eta) overflows to inf only for very negative eta, where mu = 0 is its limit
    # (log mu = -inf there: the log-likelihood is then recomputed without overflow, below).
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for first, last, cells in chunks:  # chunks of participants, never features
            _accumulate_chunk(basis, inputs, first, last, cells, sums, work)
    loglik_sum = sums.loglik
    if loglik_sum is not None and not np.all(np.isfinite(loglik_sum)):
        # exp(-eta) overflowed (eta < -88 in single precision, < -709 in double) where the
        # log-likelihood is finite: redo those features with an overflow-free formula.
        redo = np.flatnonzero(~np.isfinite(loglik_sum))
        loglik_sum[redo] = overflow_free_loglik(basis, y[:, redo], missing.restrict(redo, w), coefficients[:, redo])
    return Evaluation(None if sums.fisher is None else basis.unpack(sums.fisher), sums.score, loglik_sum, sums.largest, sums.bend)


@dataclass(frozen=True)
class _PassInputs:
    """What every chunk of a pass reads: basis rows and pair products in the pass's precision, outcome, ``-coefficients``."""

    matrix: np.ndarray  # (n, p) basis, double or single
    products: np.ndarray  # (n, q) pair products, double or single
    observed: np.ndarray  # (n, w) presence, double or single
    negated: np.ndarray  # (p, w) -coefficients in the matrix's precision
    along32: np.ndarray | None  # (p, w) bend_along in single precision


@dataclass(frozen=True)
class _Sums:
    """The sums a pass accumulates over its chunks (None: not asked for); see :class:`Evaluation`."""

    fisher: np.ndarray | None  # (q, w) packed upper triangles
    score: np.ndarray | None  # (p, w)
    loglik: np.ndarray | None  # (w,)
    largest: np.ndarray | None  # (w,)
    bend: np.ndarray | None  # (p, w)


@dataclass(frozen=True)
class _WorkArrays:
    """Chunk-sized ``(size, w)`` work arrays, reused by every chunk of a pass (no allocation per chunk)."""

    work: np.ndarray
    spare: np.ndarray
    third: np.ndarray  # the log-likelihood's terms (``work`` itself when not asked for)
    along: np.ndarray | None  # single precision, for the bend
    slope: np.ndarray | None  # single precision, for the bend

    @classmethod
    def allocate(cls, size: int, w: int, dtype: np.dtype, loglik: bool, bend: bool) -> _WorkArrays:
        """Work arrays for chunks of up to ``size`` rows over ``w`` features."""
        along, slope = (np.empty((size, w), dtype=np.float32), np.empty((size, w), dtype=np.float32)) if bend else (None, None)
        work, spare = np.empty((size, w), dtype=dtype), np.empty((size, w), dtype=dtype)
        third = np.empty((size, w), dtype=dtype) if loglik else work
        return cls(work, spare, third, along, slope)


def _accumulate_chunk(
    basis: Basis, inputs: _PassInputs, first: int, last: int, cells: tuple[np.ndarray, np.ndarray], sums: _Sums, work: _WorkArrays
) -> None:
    """Add the participants ``first:last`` (whose missing cells are ``cells``) to the pass's ``sums``."""
    rows = inputs.matrix[first:last]
    observed = inputs.observed[first:last].astype(inputs.matrix.dtype, copy=False)
    buffer, other = work.work[: last - first], work.spare[: last - first]
    np.matmul(rows, inputs.negated, out=buffer)  # -eta
    if sums.largest is not None:
        magnitude = np.abs(buffer, out=other)
        magnitude[cells] = 0.0
        np.maximum(sums.largest, magnitude.max(axis=0), out=sums.largest)
    loglik_sum = sums.loglik
    if loglik_sum is not None:
        # Per cell y log mu + (1 - y) log(1 - mu) = (1 - y)(-eta) + log mu: the first
        # term now, the second once mu is known (no exp of its own). Summed in double
        # precision. In single precision a cell is off by ~1e-7 |eta| (the two terms
        # cancel where y = 0 and eta << 0): enough for step checks, which are all the
        # single-precision log-likelihood serves; estimates come from double passes.
        term = np.subtract(1.0, observed, out=work.third[: last - first])
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
    fisher_flat = sums.fisher
    if fisher_flat is not None:
        fisher_flat += inputs.products[first:last].T @ weights.astype(inputs.products.dtype, copy=False)
    if sums.bend is not None and inputs.along32 is not None:
        _accumulate_bend(basis.matrix32[first:last], inputs.along32, mu, weights, sums.bend, work)
    score_sum = sums.score
    if score_sum is not None:
        score_sum += rows.T @ np.subtract(observed, mu, out=mu)


def _accumulate_bend(
    rows32: np.ndarray, along32: np.ndarray, mu: np.ndarray, weights: np.ndarray, bend_sum: np.ndarray, work: _WorkArrays
) -> None:
    """Add ``sum_i w'_i (B_i u)^2 B_i`` over a chunk's rows (``(c, p)``, single precision) to ``bend_sum`` (``(p, w)``)."""
    assert work.along is not None and work.slope is not None
    size = rows32.shape[0]
    along = np.matmul(rows32, along32, out=work.along[:size])
    along *= along
    slope = np.multiply(mu, -2.0, out=work.slope[:size], casting="same_kind")
    slope += 1.0
    slope *= weights
    along *= slope  # w' (B u)^2, zero in the missing cells (as w)
    bend_sum += rows32.T @ along


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
    """``(delta (p, w), variance (w,), u (p, w))`` from one stacked solve.

    ``I^-1 U``, the last diagonal entry of ``I^-1`` and its last column.
    """
    w, p, _ = fisher.shape
    right = np.zeros((w, p, 2))
    right[:, :, 0] = score.T
    right[:, -1, 1] = 1.0
    try:
        solved = np.linalg.solve(fisher, right)
    except np.linalg.LinAlgError:
        solved = stacked_inverse(fisher) @ right
    return solved[:, :, 0].T.copy(), solved[:, -1, 1].copy(), solved[:, :, 1].T.copy()
