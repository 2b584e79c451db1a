"""Batched logistic regression of feature presence (the prevalence model).

Model for every feature ``j`` and exposure ``e`` of one covariate design::

    logit P(feature j present in participant i) = z_i' gamma_j + x_ei beta_ej

over the design's participants, minus those whose presence of feature ``j`` is
missing.

Parametrisation. Newton's method runs on the orthonormal basis ``B = [Q, b_e]``
of the design (``Q`` from the design's QR, ``b_e = x_r / s_e`` the exposure with
the covariates projected out, as in the OLS kernel). It spans the same model as
``[covariates, exposure]``, so the fitted probabilities are identical, while its
Gram matrix is the identity (for complete features) whatever the scale of the
raw covariates (read depth ~1e7 included). The exposure slope is ``c / s_e``
with ``c`` the coefficient on ``b_e``, and its standard error likewise.

Method. Newton's method for every feature of a block at once:

* the start is the constant fit ``logit(prevalence)``, whose weights are
  constant, so its Fisher information and score have closed forms;
* an iteration is one pass over the participants, in chunks of rows that stay
  in cache. Per chunk, the Fisher information ``B' diag(w_j) B`` of every
  feature is ONE product ``P' W`` (``P`` the products of pairs of basis columns,
  ``W`` the chunk's weights, zero in missing cells), the scores ``B'(Y - M)``
  another; the ``(w, p, p)`` systems are then inverted as one stack;
* a feature has converged when its next step provably moves no linear predictor
  by more than ``tol``; it takes that step and is frozen. A double-precision pass
  also measures how each variance bends along the next step (``_evaluate``'s
  ``bend_along``), so a step up to ``_CORRECTED_STEP`` (1e-5) can be the last:
  the estimate takes it (what is left is of the order of its square) and the
  variance is moved along it to first order, to a relative 1e-9. Single-precision
  passes leave steps of ~3e-7, so the double pass after them is the last for most
  features instead of the one after that;
* a step that lowers the log-likelihood is halved until it does not. Short
  steps need no check: one that moves no linear predictor by more than 1.5
  cannot lower a logistic log-likelihood (see ``_SAFE_STEP``);
* passes with long steps (far from the optimum, where only the direction
  matters) run in single precision; every estimate and variance comes from
  double-precision passes.

Firth's penalised likelihood is maximised the same way, with its modified
score ``B'(y - mu + h (1/2 - mu))`` (``h`` the hat-matrix diagonal) and its exact
Hessian, penalty curvature included: Fisher scoring alone crawls under complete
separation. Every step is checked against the penalised log-likelihood.

Separation (no finite maximum-likelihood estimate) is recognised two ways:
directly, when a level of a two-valued design column (a binary exposure, a
dummy covariate, or the whole sample via the intercept) has all its used
participants present or all absent, which is quasi-complete separation; and
by divergence, when Newton's iterations keep pushing some fitted probability
to numerically 0 or 1 (``|eta| > 30``) without converging. Those features are
refitted with Firth's penalised likelihood (``l + 0.5 log det I``, finite
whenever the design has full rank), whose estimate and standard error (from
the inverse Fisher information at the penalised estimate) are reported with
status FIRTH, or, with ``firth=False``, reported as SEPARATION without one.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import combinations_with_replacement, permutations

import numpy as np
import scipy.sparse
import scipy.special

from scalable_assoc.models.design import CovariateDesign, project_out
from scalable_assoc.models.fits import FitStatus, SlopeFits

#: Defaults of :func:`fit_logistic_slopes` (and of :func:`fit_logistic_designs`, which uses them):
#: fewest participants with, and without, the feature for an estimate; Newton iterations
#: per fit; the longest final step that needs no variance correction (see ``tol``).
MIN_EVENTS = 5
MAX_ITERATIONS = 100
TOLERANCE = 1e-10
#: Smallest eigenvalue of a feature's Gram matrix in the orthonormal basis below
#: which its design counts as singular (as in the OLS kernel).
_GRAM_SINGULAR = 1e-10
#: Exposure residual norm, relative to the centred exposure's norm, below which
#: the exposure counts as explained by the covariates (as in the OLS kernel).
_EXPOSURE_COLLINEAR = 1e-8
#: |linear predictor| beyond which a fitted probability is numerically 0 or 1
#: (1 - expit(30) ~ 1e-13, about R's "fitted probabilities numerically 0 or 1").
_ETA_DIVERGED = 30.0
#: Consecutive iterations beyond ``_ETA_DIVERGED`` that make a fit diverging: an
#: overshoot is corrected in an iteration or two, while under separation the
#: predictor grows by about one unit per iteration forever.
_DIVERGED_ITERATIONS = 3
#: Iterations before the divergence rule applies: under separation the predictor
#: grows by about one unit per iteration, so it cannot pass ``_ETA_DIVERGED``
#: much earlier, while the early iterations are where harmless overshoots happen.
_DIVERGENCE_CHECKS_FROM = 10
#: A fit still iterating at ``max_iter`` counts as separated (rather than merely
#: not converged) when some used participant's |eta| exceeds this.
_ETA_SEPARATED_AT_END = 15.0
#: A Newton step that moves no linear predictor by more than this cannot lower the
#: log-likelihood, so it needs no check. Along the step, f(1) - f(0) >= g (1 -
#: (e^M - 1 - M) / M^2) with g = U'I^-1 U >= 0 the Newton decrement and M the
#: largest move, because |d log w / d eta| = |1 - 2 mu| <= 1 bounds how fast the
#: weights, hence the curvature, can grow; the bracket is positive for M < ~1.79.
_SAFE_STEP = 1.5
#: A pass runs in single precision when every live feature's step (its bound on
#: the largest move of a linear predictor) exceeds this: a Newton step that long
#: leaves an error of ~1e-7 or more (about a tenth of its square on the reference
#: study), so the next steps are no shorter than the ~1e-7 rounding single
#: precision leaves in them, none of them is taken as final (only steps from
#: double-precision scores are), and the next double-precision pass removes that
#: rounding with the rest of the error (what it leaves is the square of ~1e-7).
_SINGLE_PRECISION_STEP = 1e-3
#: A pass computes the Fisher information's product in single precision when every
#: live feature's step exceeds this, unless it follows a single-precision pass (see
#: ``_newton``), even if the rest is double: its error only perturbs the next steps
#: by ~1e-7 of themselves, and such passes are followed by at least one more (whose
#: information is exact, for the variance; a feature that converges anyway gets its
#: variance recomputed exactly).
_EXACT_FISHER_STEP = 1e-4
#: A pass computes the log-likelihood of all its features when more than one in this
#: many needs it for a step check; otherwise those few get a pass of their own.
_CHECKED_TOGETHER = 4
#: Longest final step where the pass measured the variance's first-order change along
#: it: the estimate takes the step (what is left is of the order of its square times a
#: curvature ratio, ~1e-13) and the variance moves along it to first order (what is left,
#: ~1e-12 relative, plus ~1e-3 of the correction for measuring it with the previous
#: pass's direction: below 1e-9). A single-precision pass leaves steps of ~3e-7, so the
#: double pass after one can be the last.
_CORRECTED_STEP = 1e-5
#: Largest relative error tolerated in a corrected variance from measuring its change
#: along the previous pass's direction (see ``_newton``); the rest of its error is of
#: the order of the step squared.
_CORRECTED_VARIANCE = 1e-9
#: Participants below which counts of 0/1 values summed in single precision are exact.
_EXACT_SINGLE_COUNTS = 1 << 24
#: Step halvings tried before a feature is given up as not converging.
_MAX_HALVINGS = 30
#: Relative decrease of the (penalised) log-likelihood tolerated before halving
#: a step: far above its rounding, far below any decrease that matters. Values
#: from single-precision passes carry ~1e-7 relative rounding, hence the wider one.
_OBJECTIVE_SLACK = 1e-10
_OBJECTIVE_SLACK_SINGLE = 1e-5
#: Cells (participants x features) per chunk of a pass: the chunk's temporaries
#: stay in cache, so the elementwise work runs at compute speed, not memory speed;
#: at least ``_CHUNK_ROWS`` participants, so that narrow passes (few features) are
#: not dominated by the per-chunk overhead.
_CHUNK_CELLS = 1 << 17
_CHUNK_ROWS = 256


@dataclass(frozen=True)
class _Cells:
    """Missing cells of an ``(n, w)`` array: row and column indices, sorted by row."""

    rows: np.ndarray
    columns: np.ndarray

    def restrict(self, keep: np.ndarray, width: int) -> _Cells:
        """The cells of columns ``keep`` (of ``width``), renumbered as columns of ``[:, keep]``."""
        position = np.full(width, -1, dtype=np.int64)
        position[keep] = np.arange(keep.size)
        renumbered = position[self.columns]
        inside = renumbered >= 0
        return _Cells(self.rows[inside], renumbered[inside])

    def indicator(self, n: int, width: int) -> scipy.sparse.csr_matrix:
        """``(width, n)`` sparse 0/1 matrix of the cells, for sums over missing rows only."""
        return scipy.sparse.csr_matrix((np.ones(self.rows.size), (self.columns, self.rows)), shape=(width, n))


def _chunk_rows(w: int) -> int:
    """Participants per chunk of a pass over ``w`` features (see ``_CHUNK_CELLS``)."""
    return max(_CHUNK_ROWS, _CHUNK_CELLS // max(w, 1))


def _chunks(n: int, w: int, missing: _Cells) -> list[tuple[int, int, tuple[np.ndarray, np.ndarray]]]:
    """``(first, last, cells)`` for the chunks of rows of an ``(n, w)`` pass; ``cells`` the chunk's missing cells."""
    size = _chunk_rows(w)
    starts = np.arange(0, n, size)
    bounds = np.searchsorted(missing.rows, np.append(starts, n))  # missing.rows is sorted
    return [
        (int(first), min(int(first) + size, n), (missing.rows[bounds[i] : bounds[i + 1]] - first, missing.columns[bounds[i] : bounds[i + 1]]))
        for i, first in enumerate(starts)
    ]


@dataclass(frozen=True)
class _Basis:
    """One design's orthonormal basis ``B`` (``(n, p)``) and the products of pairs of its columns.

    ``products[:, t] = B[:, upper[t]] * B[:, lower[t]]`` over the ``q = p (p + 1) / 2``
    pairs of the upper triangle, so that ``products' W`` holds every Fisher
    information ``B' diag(w_j) B`` of a block. ``*32`` are single-precision copies.
    """

    matrix: np.ndarray
    products: np.ndarray
    upper: np.ndarray
    lower: np.ndarray
    matrix32: np.ndarray
    products32: np.ndarray

    @property
    def p(self) -> int:
        """Number of basis columns."""
        return int(self.matrix.shape[1])

    def unpack(self, flat: np.ndarray) -> np.ndarray:
        """``(q, w)`` upper-triangle entries -> ``(w, p, p)`` symmetric matrices."""
        out = np.empty((flat.shape[1], self.p, self.p))
        out[:, self.upper, self.lower] = flat.T
        out[:, self.lower, self.upper] = flat.T
        return out

    @cached_property
    def triples(self) -> tuple[np.ndarray, np.ndarray]:
        """``(t, n)`` products of the ``t = p (p + 1) (p + 2) / 6`` sorted triples of columns, and ``(p, p, p)`` positions.

        ``triples[0] @ v`` holds every ``sum_i v_i x_ir x_ia x_ib``, a symmetric
        3-tensor, once per distinct entry; ``triples[1][r, a, b]`` is the entry's
        row. Made only when Firth's likelihood is fitted, then reused. Single
        precision: the tensor only shapes Newton's steps (whose fixed point, the
        estimate, it does not move), and the product is memory-bound. Stored
        transposed, so that it is made by contiguous row operations.
        """
        combinations = np.array(list(combinations_with_replacement(range(self.p), 3)))
        matrix, pairs = np.ascontiguousarray(self.matrix32.T), self.products32.T  # pairs: contiguous (see _make_basis)
        products = np.empty((len(combinations), matrix.shape[1]), dtype=np.float32)
        offset = 0
        for pair, a in enumerate(self.lower):  # pairs (r, a), r <= a, in the triples' order
            np.multiply(pairs[pair], matrix[a:], out=products[offset : offset + self.p - a])
            offset += self.p - a
        position = np.empty((self.p,) * 3, dtype=np.int64)
        for order in permutations(range(3)):  # every entry of the symmetric tensor, in six assignments
            position[tuple(combinations[:, order].T)] = np.arange(len(combinations))
        return products, position

    def pack(self, matrices: np.ndarray) -> np.ndarray:
        """``(w, p, p)`` symmetric ``A_j`` -> ``(q, w)`` such that ``products @ pack(A) = x_i' A_j x_i``."""
        # Off-diagonal pairs appear once in the triangle but twice in the quadratic form.
        return matrices[:, self.upper, self.lower].T * np.where(self.upper == self.lower, 1.0, 2.0)[:, None]


def _make_basis(matrix: np.ndarray) -> _Basis:
    p = matrix.shape[1]
    upper, lower = np.triu_indices(p)
    # Built pair-major, (q, n) in memory, and used through its transposed view: the
    # Fisher product P' W then reads contiguous rows of P' (measured ~6% faster).
    columns = np.ascontiguousarray(matrix.T)
    pairs = np.empty((upper.size, matrix.shape[0]))
    offset = 0
    for a in range(p):  # row a of the triangle, pairs (a, a..p-1), in triu_indices order
        np.multiply(columns[a], columns[a:], out=pairs[offset : offset + p - a])
        offset += p - a
    return _Basis(matrix, pairs.T, upper, lower, matrix.astype(np.float32), pairs.astype(np.float32).T)


@dataclass(frozen=True)
class _Evaluation:
    """What one pass over the participants computed for ``w`` features (None: not asked for)."""

    fisher: np.ndarray | None  # (w, p, p) Fisher information B' W B
    score: np.ndarray | None  # (p, w) score B'(y - mu)
    loglik: np.ndarray | None  # (w,) log-likelihood (unpenalised)
    largest: np.ndarray | None  # (w,) max |eta| over used participants
    bend: np.ndarray | None = None  # (p, w) sum_i w'_i (B_i u)^2 B_i, see _evaluate's bend_along


def _evaluate(
    basis: _Basis,
    y: np.ndarray,
    missing: _Cells,
    coefficients: np.ndarray,
    fisher: bool = True,
    score: bool = True,
    loglik: bool = False,
    largest: bool = False,
    single: bool = False,
    single_fisher: bool = False,
    y32: np.ndarray | None = None,
    bend_along: np.ndarray | None = None,
) -> _Evaluation:
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
    chunks = _chunks(n, w, missing)
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
        loglik_sum[redo] = _loglik(basis, y[:, redo], missing.restrict(redo, w), given[:, redo])
    return _Evaluation(None if fisher_flat is None else basis.unpack(fisher_flat), score_sum, loglik_sum, largest_max, bend_sum)


def _largest_moves(basis: _Basis, steps: np.ndarray) -> np.ndarray:
    """``(w,)`` largest ``|B_i step|`` over all participants for ``(p, w)`` steps, computed in single precision.

    Its rounding (~1e-7 relative) does not matter where it is used: against
    ``_SAFE_STEP``, which sits below the certificate's limit (~1.79).
    """
    n, w = basis.matrix.shape[0], steps.shape[1]
    largest = np.zeros(w)
    steps32 = steps.astype(np.float32)
    size = _chunk_rows(w)
    for first in range(0, n, size):  # chunks of participants, never features
        moves = basis.matrix32[first : first + size] @ steps32
        np.maximum(largest, np.abs(moves, out=moves).max(axis=0), out=largest)
    return largest


def _loglik(basis: _Basis, y: np.ndarray, missing: _Cells, coefficients: np.ndarray) -> np.ndarray:
    """``(w,)`` log-likelihood at ``eta = B @ coefficients``, without overflow: ``-sum log(1 + exp(-s eta))``, ``s = 2y - 1``.

    Slower than the pass's formula; only for the few features where that overflowed.
    """
    n, w = y.shape
    total = np.zeros(w)
    for first, last, cells in _chunks(n, w, missing):  # chunks of participants, never features
        term = np.logaddexp(0.0, (1.0 - 2.0 * y[first:last]) * (basis.matrix[first:last] @ coefficients))
        term[cells] = 0.0
        total -= term.sum(axis=0)
    return total


def _firth_pass(
    basis: _Basis, y: np.ndarray, missing: _Cells, coefficients: np.ndarray, fisher: np.ndarray, inverse: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Firth's modified score ``(p, w)`` and the penalised log-likelihood's negative Hessian ``(w, p, p)``.

    At ``eta = B @ coefficients``, with ``fisher`` the Fisher information ``I``
    there and ``inverse`` its inverse ``M``. With ``w' = w (1 - 2 mu)``, ``w'' = w (1 - 6 w)`` (the
    derivatives of the weights in eta) and ``q_i = x_i' M x_i`` (so ``h = w q``)::

        U* = B'(y - mu + h (1/2 - mu))
        -H* = I - 1/2 B' diag(w'' q) B + 1/2 T,   T_rs = tr(M A_r M A_s),  A_r = B' diag(w' x_r) B

    Newton's method needs the exact Hessian here: the Fisher information alone
    misses the penalty's curvature, which dominates along the separating
    direction and makes Fisher scoring crawl (~0.95 per iteration) under
    complete separation.
    """
    n, w = y.shape
    triples, position = basis.triples
    packed = basis.pack(inverse)
    score = np.zeros((basis.p, w))
    curvature_flat = np.zeros((basis.products.shape[1], w))
    derivative_flat = np.zeros((triples.shape[0], w))  # sum_i w'_i x_ir x_ia x_ib, distinct entries
    with np.errstate(over="ignore", invalid="ignore"):
        for first, last, cells in _chunks(n, w, missing):  # chunks of participants, never features
            rows, products = basis.matrix[first:last], basis.products[first:last]
            mu = 1.0 / (1.0 + np.exp(-(rows @ coefficients)))
            mu[cells] = 0.0  # no weight and (with y = 0) no residual in missing cells
            weights = mu - mu * mu
            leverage = products @ packed
            score += rows.T @ (y[first:last] - mu + weights * leverage * (0.5 - mu))
            curvature_flat += products.T @ (weights * (1.0 - 6.0 * weights) * leverage)
            derivative_flat += triples[:, first:last] @ (weights * (1.0 - 2.0 * mu)).astype(np.float32)
    derivatives = derivative_flat.T[:, position]  # (w, p, p, p): A_r = derivatives[:, r]
    sandwich = np.einsum("jab,jrbc->jrac", inverse, derivatives)  # M A_r
    penalty_curvature = np.einsum("jrab,jsba->jrs", sandwich, sandwich)
    return score, fisher - 0.5 * basis.unpack(curvature_flat) + 0.5 * penalty_curvature


def _firth_step(fisher: np.ndarray, negative_hessian: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``(p, w)`` Newton steps ``(-H*)^-1 U*`` where ``-H*`` is positive definite, Fisher scoring steps elsewhere."""
    # Far from the estimate the penalty can make the Hessian indefinite; Fisher scoring
    # (with step halving) still ascends there.
    definite = np.linalg.eigvalsh(negative_hessian)[:, 0] > _GRAM_SINGULAR * np.abs(np.diagonal(fisher, axis1=1, axis2=2)).max(axis=1)
    chosen = np.where(definite[:, None, None], negative_hessian, fisher)
    try:
        return np.linalg.solve(chosen, score.T[:, :, None])[:, :, 0].T
    except np.linalg.LinAlgError:
        return np.einsum("wab,bw->aw", _inverse(chosen), score)


def _half_logdet(fisher: np.ndarray) -> np.ndarray:
    """Firth's penalty ``0.5 log det I`` for a ``(w, p, p)`` stack; -inf where not positive definite."""
    sign, logdet = np.linalg.slogdet(fisher)
    return np.where(sign > 0, 0.5 * logdet, -np.inf)


def _inverse(matrices: np.ndarray) -> np.ndarray:
    """Inverses of a ``(w, p, p)`` stack of symmetric matrices; pseudo-inverses if one is exactly singular."""
    try:
        return np.linalg.inv(matrices)
    except np.linalg.LinAlgError:
        # One exactly singular matrix (weights underflowed) must not sink the whole stack.
        return np.linalg.pinv(matrices, hermitian=True)


def _newton_step(fisher: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(delta (p, w), variance (w,), u (p, w))``: ``I^-1 U``, the last diagonal entry of ``I^-1`` and its last column, one stacked solve."""
    w, p, _ = fisher.shape
    right = np.zeros((w, p, 2))
    right[:, :, 0] = score.T
    right[:, -1, 1] = 1.0
    try:
        solved = np.linalg.solve(fisher, right)
    except np.linalg.LinAlgError:
        solved = _inverse(fisher) @ right
    return solved[:, :, 0].T.copy(), solved[:, -1, 1].copy(), solved[:, :, 1].T.copy()


@dataclass
class _Point:
    """Newton's state at the current coefficients of ``w`` features."""

    coefficients: np.ndarray  # (p, w)
    delta: np.ndarray  # (p, w) the Newton step from here (zero for frozen features)
    variance: np.ndarray  # (w,) last diagonal entry of the inverse Fisher information
    objective: np.ndarray  # (w,) log-likelihood (penalised under Firth); NaN where not computed
    rough_variance: np.ndarray  # (w,) bool: the information came from a single-precision product
    rough_objective: np.ndarray  # (w,) bool: the objective came from a single-precision pass
    direction: np.ndarray | None = None  # (p, w) I^-1 e_p, the variance's direction (see _evaluate)
    bend: np.ndarray | None = None  # (p, w) the variance's first-order change per unit step, if measured
    bent_along: np.ndarray | None = None  # (p, w) the direction ``bend`` was measured along

    def take(self, columns: np.ndarray) -> _Point:
        """The state of ``columns`` only."""
        return _Point(
            self.coefficients[:, columns],
            self.delta[:, columns],
            self.variance[columns],
            self.objective[columns],
            self.rough_variance[columns],
            self.rough_objective[columns],
            None if self.direction is None else self.direction[:, columns],
            None if self.bend is None else self.bend[:, columns],
            None if self.bent_along is None else self.bent_along[:, columns],
        )


def _start(
    basis: _Basis,
    y: np.ndarray,
    missing: _Cells,
    firth: bool,
    basis_y: np.ndarray | None,
    fitted: np.ndarray,
    counted: tuple[np.ndarray, scipy.sparse.csr_matrix] | None = None,
    warm: np.ndarray | None = None,
) -> _Point:
    """Newton's start: the constant fit ``eta = logit(prevalence)`` of every feature.

    Its weights are constant per feature, so its Fisher information is that
    constant times the feature's Gram matrix (all rows minus the missing ones, a
    sparse product) and its score ``B'y - prevalence B'1`` and log-likelihood
    have closed forms: no pass over the participants (except for Firth's
    modified score). Under Firth, ``warm`` (``(p, w)``, NaN columns for none) gives
    other starts for some features. ``basis_y`` is ``B'y`` (``(p, w)``) and ``counted`` the events
    per feature with the missing cells' indicator (:meth:`_Cells.indicator`), if
    already known. Features not ``fitted`` get a zero step (and an identity
    information, whatever their data).
    """
    n = basis.matrix.shape[0]
    w = y.shape[1]
    n_used = np.maximum(n - np.bincount(missing.columns, minlength=w), 1)
    events, indicator = (y.sum(axis=0), missing.indicator(n, w)) if counted is None else counted
    prevalence = np.clip(events / n_used, 0.5 / n_used, 1.0 - 0.5 / n_used)
    logit = np.log(prevalence) - np.log1p(-prevalence)
    coefficients = np.zeros((basis.p, w))
    coefficients[:-1] = (basis.matrix[:, :-1].sum(axis=0))[:, None] * logit  # 1 = Q Q'1 lies in span(Q)
    gram = basis.products.sum(axis=0)[:, None] - np.asarray(indicator @ basis.products).T
    fisher = basis.unpack(gram * (prevalence * (1.0 - prevalence)))
    fisher[~fitted] = np.eye(basis.p)  # a singular one must not fail the stacked solve
    objective = events * np.log(prevalence) + (n_used - events) * np.log1p(-prevalence)
    if firth:
        objective = objective + _half_logdet(fisher)
        if warm is not None and (started := np.flatnonzero(np.all(np.isfinite(warm), axis=0) & fitted)).size:
            # Warm starts (see _fit_design): their information and objective need a pass.
            coefficients[:, started] = warm[:, started]
            at_warm = _evaluate(basis, y[:, started], missing.restrict(started, w), coefficients[:, started], True, False, True)
            assert at_warm.fisher is not None and at_warm.loglik is not None
            fisher[started] = at_warm.fisher
            objective[started] = at_warm.loglik + _half_logdet(at_warm.fisher)
        inverse = _inverse(fisher)
        score, negative_hessian = _firth_pass(basis, y, missing, coefficients, fisher, inverse)
        delta, variance, direction = _firth_step(fisher, negative_hessian, score), inverse[:, -1, -1], inverse[:, :, -1].T
    else:
        used_sums = basis.matrix.sum(axis=0)[:, None] - np.asarray(indicator @ basis.matrix).T
        score = (basis.matrix.T @ y if basis_y is None else basis_y) - used_sums * prevalence
        delta, variance, direction = _newton_step(fisher, score)
    delta[:, ~fitted] = 0.0
    return _Point(coefficients, delta, variance, objective, np.zeros(w, dtype=bool), np.zeros(w, dtype=bool), direction)


@dataclass(frozen=True)
class _NewtonResult:
    """Per feature (``s``): coefficients ``(p, s)`` on the basis, variance of the last one, outcome."""

    coefficients: np.ndarray
    last_variance: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray


def _newton(
    basis: _Basis,
    y: np.ndarray,
    missing: _Cells,
    firth: bool,
    max_iter: int,
    tol: float,
    basis_y: np.ndarray | None = None,
    fitted: np.ndarray | None = None,
    counted: tuple[np.ndarray, scipy.sparse.csr_matrix] | None = None,
    y32: np.ndarray | None = None,
    warm: np.ndarray | None = None,
) -> _NewtonResult:
    """(Penalised) maximum likelihood for ``s`` features at once, by Newton's method with step halving.

    ``y`` is ``(n, s)`` presence with 0 in the ``missing`` cells. Under ``firth``
    the objective is Firth's penalised log-likelihood and the score the modified
    score. ``basis_y`` and ``counted`` optionally give ``B'y``, the events and the missing
    cells' indicator for the start (see :func:`_start`), ``y32`` ``y`` in single precision
    for the single-precision passes (which come before any feature converges,
    so it is dropped when the working arrays shrink). Only the features
    ``fitted`` (``(s,)`` bool, default all) are fitted: the others start frozen, which
    spares a copy of ``y`` without them when they are few.

    A feature has converged when its next Newton step cannot move any linear
    predictor by more than ``tol`` (bounded by ``sum_a max_i |B_ia| |delta_a|``,
    no pass needed); it takes that step and is frozen (its step is zero from
    then on). The working arrays shrink to the live features once a third of
    them are frozen, so that copying costs about what it saves.
    """
    s = y.shape[1]
    coefficients = np.full((basis.p, s), np.nan)
    last_variance = np.full(s, np.nan)
    converged = np.zeros(s, dtype=bool)
    diverged = np.zeros(s, dtype=bool)
    if s == 0:
        return _NewtonResult(coefficients, last_variance, converged, diverged)

    column_max = np.abs(basis.matrix).max(axis=0)
    live = np.ones(s, dtype=bool) if fitted is None else fitted.copy()
    point = _start(basis, y, missing, firth, basis_y, live, counted, warm)
    position = np.arange(s)  # original feature of each working column
    beyond = np.zeros(s, dtype=np.int64)  # consecutive iterations with max |eta| > _ETA_DIVERGED
    largest = np.full(s, np.nan)
    for iteration in range(max_iter):
        bound = column_max @ np.abs(point.delta)  # >= max_i |B_i delta|
        # Converged: take the final step, with the variance from the information just
        # before it (the two differ by the order of tol), or, where the pass measured the
        # variance's first-order change (``bend``), a step up to _CORRECTED_STEP long with
        # the variance moved along it: what is left is of the order of the step squared.
        # Only steps from double-precision scores count (single precision rounds them).
        final = np.full(live.size, tol)
        if point.bend is not None:
            # The correction -delta'g was measured along the previous pass's direction u;
            # the variance needs it along this point's, u'. g is quadratic in u, so with
            # u' = a u + r (a least squares) it is a^2 times the measured one, off by about
            # twice |r| / |u'| times the correction, which must stay negligible.
            assert point.bent_along is not None and point.direction is not None
            then, now = point.bent_along, point.direction
            scale = np.einsum("aw,aw->w", then, now) / np.einsum("aw,aw->w", then, then)
            correction = scale**2 * np.einsum("aw,aw->w", point.delta, point.bend)
            drift = np.linalg.norm(now - scale * then, axis=0) / np.linalg.norm(now, axis=0)
            trusted = 2.0 * drift * np.abs(correction) <= _CORRECTED_VARIANCE * np.abs(point.variance)
            final[trusted] = max(tol, _CORRECTED_STEP)
        done = live & (bound <= final) & ~point.rough_objective
        if (done & point.rough_variance).any():
            # That information came from a single-precision product: recompute it exactly.
            columns = np.flatnonzero(done & point.rough_variance)
            exact = _evaluate(basis, y[:, columns], missing.restrict(columns, live.size), point.coefficients[:, columns], score=False)
            assert exact.fisher is not None
            point.variance[columns] = _inverse(exact.fisher)[:, -1, -1]
        coefficients[:, position[done]] = point.coefficients[:, done] + point.delta[:, done]
        if point.bend is not None:
            point.variance[done] -= correction[done]
        last_variance[position[done]] = point.variance[done]
        converged[position[done]] = True
        live &= ~done
        if not live.any():
            break
        if 3 * live.sum() <= 2 * live.size:
            keep = np.flatnonzero(live)
            missing = missing.restrict(keep, live.size)
            y, point, bound, position, beyond, largest = y[:, keep], point.take(keep), bound[keep], position[keep], beyond[keep], largest[keep]
            y32 = None
            live = live[keep]
        point.delta[:, ~live] = 0.0

        # Only steps that might lower the objective are checked: all under Firth, whose
        # penalty the certificate does not cover; otherwise only the long ones. The bound is
        # loose (a 13-column basis overstates the first step's move about fivefold), so the
        # candidates get their exact largest move: a product of the basis with their steps
        # costs a third of what the log-likelihood would cost the pass.
        if not firth and (long := np.flatnonzero(live & (bound > _SAFE_STEP))).size:
            bound[long] = _largest_moves(basis, point.delta[:, long])
        check = np.flatnonzero(live if firth else live & (bound > _SAFE_STEP))
        single = not firth and bool(np.all(bound[live] > _SINGLE_PRECISION_STEP))
        # After a single-precision pass the steps are ~3e-7 (that pass's rounding): short
        # enough to be final at this pass with the variance corrected along them
        # (_CORRECTED_STEP), so this pass's information must be exact.
        after_single = bool(np.all(point.rough_objective[live]))
        single_fisher = not firth and not after_single and bool(np.all(bound[live] > _EXACT_FISHER_STEP))
        # The log-likelihood costs a third of a pass: for a few checked features it is
        # cheaper computed on their own, after the pass.
        whole = firth or _CHECKED_TOGETHER * check.size > np.count_nonzero(live)
        find_largest = not firth and iteration >= _DIVERGENCE_CHECKS_FROM
        trial = point.coefficients + point.delta
        # A pass with an exact information may be the last of some features: it also
        # measures how their variance bends along their next (final) step.
        bend_along = point.direction if not (single or single_fisher) else None
        evaluation = _evaluate(
            basis, y, missing, trial, True, not firth, bool(whole and check.size), find_largest, single, single_fisher, y32, bend_along
        )
        assert evaluation.fisher is not None
        fisher, score = evaluation.fisher, evaluation.score
        objective = np.full(live.size, np.nan) if evaluation.loglik is None else evaluation.loglik
        if check.size and not whole:
            alone = _evaluate(basis, y[:, check], missing.restrict(check, live.size), trial[:, check], False, False, True, single=single)
            assert alone.loglik is not None
            objective[check] = alone.loglik
        if firth:
            objective = objective + _half_logdet(fisher)
        if evaluation.largest is not None:
            largest = evaluation.largest
        if check.size:
            before = point.objective[check]
            unknown = np.isnan(before)
            if unknown.any():
                # A long step after short unchecked ones: its starting value is needed now.
                columns = check[unknown]
                again = _evaluate(basis, y[:, columns], missing.restrict(columns, live.size), point.coefficients[:, columns], False, False, True)
                assert again.loglik is not None
                before[unknown] = again.loglik
            slack = np.where(point.rough_objective[check] | single, _OBJECTIVE_SLACK_SINGLE, _OBJECTIVE_SLACK)
            floor = before - slack * (1.0 + np.abs(before))
            worse = ~(objective[check] >= floor)
            factor = np.ones(check.size)
            for _halving in range(_MAX_HALVINGS):
                if not worse.any():
                    break
                columns = check[worse]
                factor[worse] /= 2.0
                trial[:, columns] = point.coefficients[:, columns] + factor[worse] * point.delta[:, columns]
                # A retry always needs the log-likelihood, even where the pass left it to a pass apart.
                retry = _evaluate(
                    basis, y[:, columns], missing.restrict(columns, live.size), trial[:, columns], True, not firth, True, find_largest, single, single_fisher
                )
                assert retry.fisher is not None and retry.loglik is not None
                fisher[columns] = retry.fisher
                objective[columns] = retry.loglik + (_half_logdet(retry.fisher) if firth else 0.0)
                if score is not None and retry.score is not None:
                    score[:, columns] = retry.score
                if retry.largest is not None:
                    largest[columns] = retry.largest
                worse[worse] = ~(objective[columns] >= floor[worse])
            # No step length helps: give up on these (they are reported as not converged).
            live[check[worse]] = False

        if firth:
            inverse = _inverse(fisher)
            score, negative_hessian = _firth_pass(basis, y, missing, trial, fisher, inverse)
            delta, variance, direction = _firth_step(fisher, negative_hessian, score), inverse[:, -1, -1], inverse[:, :, -1].T
        else:
            assert score is not None
            delta, variance, direction = _newton_step(fisher, score)
        point = _Point(
            trial, delta, variance, objective, np.full(live.size, single_fisher), np.full(live.size, single), direction, evaluation.bend, bend_along
        )
        if evaluation.largest is not None:
            beyond = np.where(largest > _ETA_DIVERGED, beyond + 1, 0)
            done = live & (beyond >= _DIVERGED_ITERATIONS)
            diverged[position[done]] = True
            live &= ~done
        if not live.any():
            break
    else:
        # Out of iterations: a fit still pushing probabilities towards 0 or 1 is separated
        # (Firth's estimate is finite whatever the data: it is just not converged).
        if firth:
            return _NewtonResult(coefficients, last_variance, converged, diverged)
        if np.isnan(largest).any():
            again = _evaluate(basis, y, missing, point.coefficients, False, False, False, True)
            assert again.largest is not None
            largest = again.largest
        diverged[position[live & (largest > _ETA_SEPARATED_AT_END)]] = True
    return _NewtonResult(coefficients, last_variance, converged, diverged)


def _lower_levels(columns: np.ndarray) -> np.ndarray:
    """``(n, L)`` indicators of the lower level of every column of ``columns`` (``(n, c)``) taking exactly two values.

    The upper level is the complement: its counts are the whole sample's minus these.
    """
    lowest, highest = columns.min(axis=0), columns.max(axis=0)
    two_valued = (lowest < highest) & np.all((columns == lowest) | (columns == highest), axis=0)
    return (columns[:, two_valued] == lowest[two_valued]).astype(np.float64)


def _used_sums(vectors: np.ndarray, missing_indicator: scipy.sparse.csr_matrix) -> np.ndarray:
    """``(L, m)`` sums of each column of ``vectors`` (``(n, L)``) over each feature's used participants."""
    # All rows minus the missing ones: a sparse product over the missing cells only.
    return vectors.sum(axis=0)[:, None] - np.asarray(missing_indicator @ vectors).T


def _level_separated(level_used: np.ndarray, level_present: np.ndarray) -> np.ndarray:
    """``(m,)``: some level (a row of the ``(L, m)`` counts) has used participants, all present or all absent.

    With an intercept in the model that is quasi-complete separation: moving the
    level's coefficient (or the intercept, for the all-ones level) towards
    +-infinity only ever increases the likelihood.
    """
    used, present = np.rint(level_used), np.rint(level_present)
    return np.any((used > 0) & ((present == 0) | (present == used)), axis=0)


def _singular_features(basis: _Basis, missing_indicator: scipy.sparse.csr_matrix) -> np.ndarray:
    """``(m,)``: the basis restricted to each feature's used participants is (numerically) singular."""
    # Gram = I - D, D summing v v' over the unused rows: lambda_min >= 1 - trace(D), so
    # features whose unused rows carry little leverage need no eigenvalues.
    trace_missing = missing_indicator @ np.einsum("ij,ij->i", basis.matrix, basis.matrix)
    doubtful = np.flatnonzero(trace_missing >= 0.5)
    singular = np.zeros(missing_indicator.shape[0], dtype=bool)
    if doubtful.size:
        full = basis.products.sum(axis=0)
        gram = basis.unpack(full[:, None] - np.asarray(missing_indicator[doubtful] @ basis.products).T)
        singular[doubtful] = np.linalg.eigvalsh(gram)[:, 0] <= _GRAM_SINGULAR
    return singular


@dataclass(frozen=True)
class _Outcome:
    """Presence over one participant subset: ``(n, m)`` with 0 in the missing cells, and those cells."""

    y: np.ndarray
    y32: np.ndarray  # y in single precision, for the single-precision passes
    missing: _Cells
    missing_indicator: scipy.sparse.csr_matrix
    n_used: np.ndarray  # (m,) participants whose presence is known


class PresenceBlock:
    """A block of presence indicators, checked once for every design fitted to it.

    ``presence`` is ``(N, m)``: 1.0 where the feature is present, 0.0 where
    absent, NaN where missing. The zero-filled view of one participant subset
    (``(n, m)`` in double and single precision, 12 bytes a cell: the largest
    temporary of a fit) is kept for the designs that follow on the same
    participants (adjustment sets of one exposure), and only for those: one
    subset at a time, so memory stays at one view whatever the number of
    subsets.
    """

    def __init__(self, presence: np.ndarray) -> None:
        presence = np.asarray(presence, dtype=np.float64)
        if presence.ndim != 2:
            raise ValueError(f"presence must be (N, m), got shape {presence.shape}")
        if np.count_nonzero(presence == 0.0) + np.count_nonzero(presence == 1.0) + np.count_nonzero(np.isnan(presence)) != presence.size:
            raise ValueError("presence must hold 1.0 (present), 0.0 (absent) or NaN (missing)")
        self.values = presence
        self._last: tuple[bytes, _Outcome] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, m)``."""
        return (int(self.values.shape[0]), int(self.values.shape[1]))

    def outcome(self, rows: np.ndarray) -> _Outcome:
        """The zero-filled presence of participants ``rows`` (``(n,)`` positions), made once per subset in a row."""
        key = np.ascontiguousarray(rows, dtype=np.int64).tobytes()
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        y = self.values[rows]  # a copy: missing cells are zeroed in place
        n, m = y.shape
        missing = _Cells(*np.divmod(np.flatnonzero(np.isnan(y)), m))  # row-major: sorted by row
        y[missing.rows, missing.columns] = 0.0
        y.flags.writeable = False  # shared by the designs that follow
        y32 = y.astype(np.float32)
        y32.flags.writeable = False
        outcome = _Outcome(y, y32, missing, missing.indicator(n, m), n - np.bincount(missing.columns, minlength=m))
        self._last = (key, outcome)
        return outcome


def fit_logistic_designs(
    designs: list[CovariateDesign],
    rows: list[np.ndarray | None],
    exposures: list[np.ndarray],
    binary: list[np.ndarray],
    presence: PresenceBlock | np.ndarray,
    firth: bool = True,
) -> list[SlopeFits]:
    """:func:`fit_logistic_slopes` for several designs over one block, one :class:`SlopeFits` per design, in order.

    Arguments are per design, as in :func:`fit_logistic_slopes`. Designs on the
    same participants are fitted one after another, so that they share the
    block's view of those participants, and each starts its Firth fits from the
    previous one's estimates (see :func:`_fit_design`).
    """
    block = presence if isinstance(presence, PresenceBlock) else PresenceBlock(presence)
    n_total = block.shape[0]
    subsets = [np.arange(n_total) if r is None else np.asarray(r) for r in rows]
    keys = [subset.tobytes() for subset in subsets]
    fits: dict[int, SlopeFits] = {}
    previous: tuple[bytes, list[_FirthState]] | None = None
    for index in sorted(range(len(designs)), key=keys.__getitem__):
        key = keys[index]
        warm = previous[1] if previous is not None and previous[0] == key else None
        fits[index], states = _fit_design(
            designs[index], exposures[index], binary[index], block, subsets[index], firth, MIN_EVENTS, MAX_ITERATIONS, TOLERANCE, warm
        )
        previous = (key, states)
    return [fits[index] for index in range(len(designs))]


def fit_logistic_slopes(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    presence: PresenceBlock | np.ndarray,
    rows: np.ndarray | None = None,
    firth: bool = True,
    min_events: int = MIN_EVENTS,
    max_iter: int = MAX_ITERATIONS,
    tol: float = TOLERANCE,
) -> SlopeFits:
    """Fit ``logit P(present) ~ covariates + exposure`` for every exposure and feature of a block.

    Parameters
    ----------
    design:
        The factorised covariate design of its ``n`` participants (intercept
        first). A design with a problem gives DESIGN_RANK_DEFICIENT everywhere.
    exposures:
        ``(k, n)`` exposure values over the design's participants (0/1 for
        binary exposures), no missing values.
    binary:
        ``(k,)`` bool, whether each exposure is a case/control indicator.
    presence:
        ``(N, m)`` 1.0 where the feature is present, 0.0 where absent, NaN where
        missing (which leaves that participant out for that feature only), or
        that block already wrapped in a :class:`PresenceBlock`.
    rows:
        ``(n,)`` positions of the design's participants among the ``N`` rows;
        None when ``presence`` holds exactly the design's participants.
    firth:
        Refit separated features with Firth's penalised likelihood (status
        FIRTH); otherwise report them as SEPARATION without an estimate.
    min_events:
        Features with fewer than this many used participants with the feature,
        or without it, get TOO_FEW_EVENTS and no estimate.
    max_iter:
        Newton iterations per fit; a fit still moving afterwards is NOT_CONVERGED
        (or separated, if its probabilities are heading to 0 or 1).
    tol:
        A fit has converged when its next Newton step moves no used
        participant's linear predictor (log odds) by more than ``tol``, or by no
        more than ``_CORRECTED_STEP`` where the pass measured the variance's change
        along the step (estimates to ~1e-10 relative, standard errors to 1e-9).

    Returns
    -------
    SlopeFits with every array ``(k, m)``: ``beta`` the log odds ratio per
    exposure unit, ``se`` from the inverse Fisher information (at the penalised
    estimate under Firth), ``t`` the Wald z, ``p`` two-sided normal, ``n`` the
    participants used, ``n_cases``/``n_controls`` for binary exposures.
    """
    return _fit_design(design, exposures, binary, presence, rows, firth, min_events, max_iter, tol)[0]


#: Per exposure of a design: its basis ``(n, p)`` and the Firth estimates ``(p, m)`` on it
#: (NaN for features not fitted by Firth), to start the next design's Firth fits from.
_FirthState = tuple[np.ndarray, np.ndarray] | None


def _fit_design(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    presence: PresenceBlock | np.ndarray,
    rows: np.ndarray | None,
    firth: bool,
    min_events: int,
    max_iter: int,
    tol: float,
    warm: list[_FirthState] | None = None,
) -> tuple[SlopeFits, list[_FirthState]]:
    """:func:`fit_logistic_slopes`, also returning each exposure's Firth estimates; ``warm`` those of a design before.

    Designs on the same participants (adjustment sets) mostly find the same
    separated features, whose Firth estimates move little when a covariate is
    added: starting from the previous design's estimate (its linear predictor
    projected on this basis) spares Firth's long first iterations. It is only a
    start: the estimate is where the iterations converge.
    """
    block = presence if isinstance(presence, PresenceBlock) else PresenceBlock(presence)
    n_total, m = block.shape
    rows = np.arange(n_total) if rows is None else np.asarray(rows)
    exposures = np.atleast_2d(np.asarray(exposures, dtype=np.float64))
    k, n = exposures.shape
    binary = np.broadcast_to(np.asarray(binary, dtype=bool), (k,))
    if rows.size != n or design.n != n:
        raise ValueError(f"design has {design.n} participants, exposures {n}, rows {rows.size}; they must agree")
    if not np.all(np.isfinite(exposures)):
        raise ValueError("exposures must be finite; drop participants with missing exposures first")

    outcome = block.outcome(rows)
    y, missing, missing_indicator, n_used = outcome.y, outcome.missing, outcome.missing_indicator, outcome.n_used

    shape = (k, m)
    beta = np.full(shape, np.nan)
    se = np.full(shape, np.nan)
    status = np.zeros(shape, dtype=np.int8)
    n_out = np.broadcast_to(n_used.astype(np.int64), shape).copy()
    n_cases = np.full(shape, -1, dtype=np.int64)
    n_controls = np.full(shape, -1, dtype=np.int64)
    if design.problem is not None:  # as the OLS kernel: participants counted, no case counts
        status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        return SlopeFits(beta, se, beta.copy(), beta.copy(), n_out, n_cases, n_controls, status), []
    for index in np.flatnonzero(binary):
        counts = _used_sums(np.column_stack([exposures[index] == 1.0, exposures[index] == 0.0]).astype(np.float64), missing_indicator)
        n_cases[index], n_controls[index] = np.rint(counts).astype(np.int64)

    # Orthonormal exposure directions b_e = x_r / s_e, one per exposure (as in the OLS kernel).
    exposure_residuals = project_out(design.q, exposures.T)  # (n, k)
    scales = np.linalg.norm(exposure_residuals, axis=0)
    centred_norms = np.linalg.norm(exposures - exposures.mean(axis=1, keepdims=True), axis=1)
    collinear = scales <= _EXPOSURE_COLLINEAR * np.maximum(centred_norms, np.finfo(float).tiny)
    directions = exposure_residuals / np.where(collinear, 1.0, scales)

    # Levels whose presence counts reveal separation without fitting: the whole sample
    # (the intercept's level), each level of a two-valued covariate, then of each exposure.
    # Only the lower levels are counted; the upper ones are the whole sample minus those.
    level_blocks = [np.ones((n, 1)), _lower_levels(design.covariates[:, 1:])]
    level_blocks += [_lower_levels(exposures[e][:, None]) for e in range(k)]
    levels = np.hstack(level_blocks)
    # Everything that needs y itself in ONE product (y is read once): level counts,
    # Q'y and b_e'y (the start's score), events (the all-ones level). In single
    # precision: counts of 0/1 values are exact there (below 2^24), and Q'y only places
    # Newton's start, whose step is then off by ~1e-7 of itself.
    stacked = np.hstack([levels, design.q, directions])
    if n < _EXACT_SINGLE_COUNTS:
        totals = (stacked.astype(np.float32).T @ outcome.y32).astype(np.float64)
    else:
        totals = stacked.T @ y
    level_present, basis_y = totals[: levels.shape[1]], totals[levels.shape[1] :]
    level_used = _used_sums(levels, missing_indicator)
    events = level_present[0]
    too_few = np.minimum(events, n_used - events) < min_events
    bounds = np.cumsum([0] + [part.shape[1] for part in level_blocks])

    def separated_by(counted: slice) -> np.ndarray:
        """``(m,)``: a level of the columns counted in rows ``counted`` (or its upper level) separates."""
        used, present = level_used[counted], level_present[counted]
        return _level_separated(np.vstack([used, level_used[0] - used]), np.vstack([present, events - present]))

    covariate_separated = _level_separated(level_used[:1], level_present[:1]) | separated_by(slice(bounds[1], bounds[2]))

    rank = design.q.shape[1]
    states: list[_FirthState] = []
    for e in range(k):  # a handful of exposures per design; features stay vectorised
        if collinear[e]:
            status[e] = FitStatus.EXPOSURE_COLLINEAR
            states.append(None)
            continue
        basis = _make_basis(np.column_stack([design.q, directions[:, e]]))
        singular = _singular_features(basis, missing_indicator)
        fitted = ~too_few & ~singular
        exposure_separated = separated_by(slice(bounds[2 + e], bounds[3 + e]))
        separated = fitted & (covariate_separated | exposure_separated)

        plain = fitted & ~separated
        # The whole block, the other features frozen from the start: no copy of y.
        result = _newton(basis, y, missing, False, max_iter, tol, basis_y[np.r_[:rank, rank + e]], plain, (events, missing_indicator), outcome.y32)
        estimated = result.converged
        beta[e, estimated] = result.coefficients[-1, estimated] / scales[e]
        se[e, estimated] = np.sqrt(result.last_variance[estimated]) / scales[e]
        status[e, plain & ~estimated] = FitStatus.NOT_CONVERGED
        separated |= result.diverged

        penalised = np.flatnonzero(separated)
        if firth:
            previous = warm[e] if warm is not None and e < len(warm) else None
            start = None
            if previous is not None and penalised.size:
                # The previous design's linear predictors, projected on this basis.
                start = (basis.matrix.T @ previous[0]) @ previous[1][:, penalised]
            result = _newton(basis, y[:, penalised], missing.restrict(penalised, m), True, max_iter, tol, warm=start)
            estimated = penalised[result.converged]
            firth_estimates = np.full((basis.p, m), np.nan)
            firth_estimates[:, estimated] = result.coefficients[:, result.converged]
            states.append((basis.matrix, firth_estimates))
            beta[e, estimated] = result.coefficients[-1, result.converged] / scales[e]
            se[e, estimated] = np.sqrt(result.last_variance[result.converged]) / scales[e]
            status[e, estimated] = FitStatus.FIRTH
            status[e, penalised[~result.converged]] = FitStatus.NOT_CONVERGED
        else:
            status[e, penalised] = FitStatus.SEPARATION
            states.append(None)
        status[e, singular] = FitStatus.FEATURE_RANK_DEFICIENT
        status[e, too_few] = FitStatus.TOO_FEW_EVENTS

    # Only OK and FIRTH rows keep an estimate (a diverged plain fit left none anyway).
    without = (status != FitStatus.OK) & (status != FitStatus.FIRTH)
    beta[without] = np.nan
    se[without] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        z = beta / se
    # Two-sided normal tail, as statsmodels' Logit reports; ndtr keeps tiny p exact.
    p = 2.0 * scipy.special.ndtr(-np.abs(z))
    return SlopeFits(beta, se, z, p, n_out, n_cases, n_controls, status), states
