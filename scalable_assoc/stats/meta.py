"""Batched meta-analysis of per-cohort estimates: fixed and random effects, many rows at once.

Model for every row (one feature x exposure x adjustment) with ``k`` cohorts
reporting an estimate ``y_i`` with sampling variance ``v_i = se_i^2``::

    y_i = mu + u_i + e_i,    u_i ~ N(0, tau^2),    e_i ~ N(0, v_i)

``mu`` is estimated by inverse-variance weighting with ``w_i = 1 / (v_i + tau^2)``:
``mu = sum w_i y_i / sum w_i`` with variance ``1 / sum w_i``. The between-cohort
variance ``tau^2`` is 0 ("fe"), or one of the estimators of R's
``metafor::rma.uni`` (whose results these reproduce, see
tests/reference/meta/):

* "dl" DerSimonian-Laird, ``max(0, (Q - (k - 1)) / (sum w - sum w^2 / sum w))``
  with fixed-effect weights ``w = 1 / v``;
* "reml" restricted maximum likelihood, by Fisher scoring exactly as metafor
  does it: from the Hedges estimate ``max(0, var(y) - mean(v))`` (unweighted),
  step ``(y'PPy - tr P) / tr(PP)`` with ``P = W - w w' / sum w``, halved while
  it would make ``tau^2`` negative, and metafor's final check that the
  restricted likelihood at 0 is not higher (which otherwise sets ``tau^2 = 0``).
  The restricted likelihood can have two maxima, one at 0 (row 17 of the
  reference data): the starting value decides which one is found, so it is
  metafor's, not 0. Fisher scoring converges linearly, slowly when cohort
  variances are very unequal (thousands of steps): after the first
  :data:`_FISHER_STEPS` steps, Newton steps with the observed information take
  over, kept inside the bracket of score sign changes seen so far (bisection,
  or doubling ``tau^2`` while no negative score was seen, where Newton would
  leave it or the likelihood is not concave). The root is metafor's, found to
  ``tol``, except that where the restricted likelihood has several interior
  maxima and scoring needs more than :data:`_FISHER_STEPS` steps, the maximum
  found can be another one than the one metafor's scoring would reach;
* "pm" Paule-Mandel, the root of the generalised ``Q(tau^2) = k - 1``
  (``Q(tau^2) = sum w_i (y_i - mu)^2``, decreasing in ``tau^2``), 0 when
  ``Q(0) <= k - 1``; found by Newton steps kept inside a bracket ``[lo, hi]``
  (``hi`` starts at the unweighted variance of the ``y_i``, where ``Q <= k - 1``
  always holds) and bisection where a step would leave it.

Tests: a z test by default; with ``hksj=True`` the Hartung-Knapp-Sidik-Jonkman
variance ``sum w_i (y_i - mu)^2 / ((k - 1) sum w_i)`` and Student's t with
``k - 1`` degrees of freedom (metafor's ``test="knha"``: the adjustment is not
truncated at 1; a weighted residual sum of squares below machine epsilon gives
a standard error of exactly 0, as in metafor). Heterogeneity: Cochran's ``Q``
with ``w = 1 / v`` against chi2(k - 1), and ``I^2`` as metafor reports it:
``100 tau^2 / (tau^2 + s^2)`` with the "typical" within-cohort variance
``s^2 = (k - 1) / (sum w - sum w^2 / sum w)`` for random-effects methods, and
``100 max(0, (Q - (k - 1)) / Q)`` (0 when ``Q = 0``) for "fe".

Vectorisation: every row is one column of ``(k, r)`` arrays (cohort-major: sums
over cohorts are whole-vector additions, in the same order as a sum along a
row); missing cohorts have weight 0. Iterative estimators update all
unconverged rows at once and freeze a row as soon as its distance to the root (its Newton step) is below ``tol`` times
its scale (``tau^2 + s^2``, so the criterion does not depend on the units of the
estimates), or its bracket is that narrow. No quantity of
one row ever enters another row's computation. Traces that are differences of
nearly equal sums when one cohort's weight dominates (``sum w - sum w^2 / sum w``)
are computed from sums over the *other* cohorts (prefix and suffix cumulative
sums of positive numbers), which lose no digits.

Edge cases (all defined, none raises):

* a cohort is missing where its estimate is NaN or infinite, or its standard
  error is NaN, infinite or <= 0;
* k = 0: every statistic NaN (``k`` = 0, ``converged`` True);
* k = 1: that cohort's estimate and standard error with a z test (also with
  ``hksj=True``, where the t test would have 0 degrees of freedom), ``tau2`` = 0,
  ``Q`` = 0, ``q_p`` and ``i2`` NaN (metafor reports ``QEp`` = 1 and ``I2`` = 0
  there; its knha fit of one cohort is the z test too);
* identical cohorts: ``Q`` = 0 so every estimator gives ``tau2`` = 0;
* ``converged`` is False only for rows where REML or PM reached ``max_iter``
  (their last iterate is reported).

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from scalable_assoc.stats.tails import chi2_sf, norm_sf, t_sf

#: The between-cohort variance estimators, named as in metafor (lower case).
METHODS = ("fe", "dl", "reml", "pm")

#: metafor's limit below which the HKSJ weighted residual sum of squares counts as 0
#: (it is dimensionless: weights are inverse variances).
_RSS_ZERO = float(np.finfo(np.float64).eps)
#: metafor's default ``control$tol``: by how much the restricted log-likelihood at
#: ``tau^2 = 0`` must exceed the one at the Fisher-scoring root for metafor to reset
#: ``tau^2`` to 0 (its "stuck at a local maximum" check).
_LL0_TOL = float(np.finfo(np.float64).eps) ** 0.25
#: REML steps that are metafor's Fisher scoring before Newton steps take over: they
#: decide, as in metafor, which maximum a bimodal restricted likelihood converges to.
_FISHER_STEPS = 10


@dataclass(frozen=True)
class MetaFits:
    """Combined estimates for ``r`` rows (every array ``(r,)``).

    ``k`` counts the cohorts with an estimate; ``beta`` is the combined estimate,
    ``se`` its standard error and ``statistic = beta / se`` (z, or t with
    ``k - 1`` degrees of freedom under HKSJ when ``k >= 2``), ``p`` two-sided.
    ``tau2`` is the between-cohort variance (0 for "fe"), ``i2`` I^2 in percent,
    ``q_stat`` Cochran's Q with inverse-variance weights and ``q_p`` its
    chi2(k - 1) upper tail. ``converged`` is False where an iterative estimator
    (REML, PM) stopped at ``max_iter``.
    """

    k: np.ndarray
    beta: np.ndarray
    se: np.ndarray
    statistic: np.ndarray
    p: np.ndarray
    tau2: np.ndarray
    i2: np.ndarray
    q_stat: np.ndarray
    q_p: np.ndarray
    converged: np.ndarray

    def __post_init__(self) -> None:
        shape = self.k.shape
        for name in ("beta", "se", "statistic", "p", "tau2", "i2", "q_stat", "q_p", "converged"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"MetaFits.{name} has shape {getattr(self, name).shape}, expected {shape}")


@dataclass(frozen=True)
class _Cohorts:
    """Validated inputs, stored ``(k, r)`` (one contiguous row per cohort): estimates, standard errors,
    variances (0, 1, 1 where missing) and a 0/1 mask; ``k`` ``(r,)`` counts the cohorts present.

    Cohort-major storage makes every sum over cohorts ``k`` whole-vector additions, in
    the same order as a row-wise sum (so the same bits), several times faster than
    reducing short rows of a ``(r, k)`` array.
    """

    y: np.ndarray
    s: np.ndarray
    v: np.ndarray
    present: np.ndarray
    k: np.ndarray


def _cohorts(beta: np.ndarray, se: np.ndarray) -> _Cohorts:
    """Check shapes and mark missing cells, filled so that no arithmetic on them warns."""
    beta = np.asarray(beta, dtype=np.float64)
    se = np.asarray(se, dtype=np.float64)
    if beta.ndim != 2 or beta.shape != se.shape:
        raise ValueError(f"beta and se must be (rows, cohorts) arrays of one shape, got {beta.shape} and {se.shape}")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(beta) & np.isfinite(se) & (se > 0)
    # A cohort's variance can underflow to 0 (se < 1e-154): it would get an infinite weight,
    # or overflow to inf (se > 1e154): a cohort with weight 0. Both count as missing.
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):
        variance = np.square(se)
    valid &= (variance > 0) & np.isfinite(variance)
    y = np.ascontiguousarray(np.where(valid, beta, 0.0).T)
    s = np.ascontiguousarray(np.where(valid, se, 1.0).T)
    return _Cohorts(y, s, s**2, np.ascontiguousarray(valid.T).astype(np.float64), valid.sum(axis=1).astype(np.int64))


def _sum_others(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``(k, r)``: for each cell the sum of the other cohorts' cells of its row, for ``x >= 0`` (into ``out`` if given).

    From prefix and suffix cumulative sums, so there is no subtraction of a large
    total (``sum(x) - x_i`` loses every digit when ``x_i`` dominates).
    """
    # Running sums cohort by cohort on whole rows (what cumulative sums from either end do,
    # in the same order, so the same bits): a cumulative sum along the short axis is slower.
    k = x.shape[0]
    if out is None:
        out = np.empty_like(x)
    if k == 0:
        return out
    out[0] = 0.0
    if k > 1:
        out[1] = x[0]
    for j in range(2, k):
        np.add(out[j - 1], x[j - 1], out=out[j])
    if k > 1:
        suffix = x[k - 1].copy()
        out[k - 2] += suffix
        for j in range(k - 3, -1, -1):
            suffix += x[j + 1]
            out[j] += suffix
    return out


@dataclass(frozen=True)
class _Weighted:
    """Inverse-variance quantities of some rows at given ``tau^2`` (each ``(r,)`` unless noted)."""

    w: np.ndarray  # (k, r), 0 for missing cohorts
    sum_w: np.ndarray
    mu: np.ndarray
    resid: np.ndarray  # (k, r) y - mu, 0 for missing cohorts
    rss: np.ndarray  # sum w (y - mu)^2: Q at tau2 = 0, the generalised Q otherwise

    @functools.cached_property
    def _w_others(self) -> np.ndarray:
        """``(k, r)`` ``w_i sum_{j != i} w_j`` (shared by both traces)."""
        return self.w * _sum_others(self.w)

    @property
    def tr_p(self) -> np.ndarray:
        """``tr P = sum w - sum w^2 / sum w = sum_i w_i (sum_{j != i} w_j) / sum w``."""
        return self._w_others.sum(axis=0) / self.sum_w

    @property
    def tr_pp(self) -> np.ndarray:
        """``tr(P P)`` with ``P_ii = w_i sum_{j != i} w_j / sum w`` and ``P_ij = -w_i w_j / sum w``."""
        diagonal = self._w_others**2
        squared = self.w**2
        off_diagonal = squared * _sum_others(squared)
        return (diagonal + off_diagonal).sum(axis=0) / self.sum_w**2


def _weighted(y: np.ndarray, v: np.ndarray, present: np.ndarray, tau2: np.ndarray) -> _Weighted:
    """Weights, weighted mean and residuals for rows with at least one cohort."""
    w = present / (v + tau2[None, :])
    sum_w = w.sum(axis=0)
    mu = (w * y).sum(axis=0) / sum_w
    resid = (y - mu[None, :]) * present
    return _Weighted(w, sum_w, mu, resid, (w * resid**2).sum(axis=0))


def _reml_log_likelihood(state: _Weighted, v: np.ndarray, present: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    """Restricted log-likelihood up to a constant: ``-(sum log(v + tau2) + log sum w + Q(tau2)) / 2``."""
    log_variance = (np.log(v + tau2[None, :]) * present).sum(axis=0)
    return -0.5 * (log_variance + np.log(state.sum_w) + state.rss)


class _Workspace:
    """The arrays of one block's REML steps, allocated once and re-used by every step.

    Each step of the active rows would otherwise allocate some twenty fresh ``(k, m)``
    and ``(m,)`` arrays and free them again; re-used buffers stay in the process and in
    the CPU's caches. A ``(k, m)`` matrix is the first ``k * m`` cells of a flat buffer,
    contiguous like a freshly allocated array, so NumPy adds up its columns in the same
    order (the same bits).
    """

    _MATRICES = ("w", "a", "others", "square", "off", "y0", "y1", "v0", "v1")
    _VECTORS = ("sum_w", "sum_w2", "mu", "tr_p", "score", "expected", "a_mean", "observed")

    def __init__(self, k: int, rows: int) -> None:
        self.k = k
        self._flat = {name: np.empty(k * rows) for name in self._MATRICES}
        self._vectors = {name: np.empty(rows) for name in self._VECTORS}

    def matrix(self, name: str, m: int) -> np.ndarray:
        """``(k, m)`` contiguous view of buffer ``name``."""
        return self._flat[name][: self.k * m].reshape(self.k, m)

    def vector(self, name: str, m: int) -> np.ndarray:
        """``(m,)`` view of buffer ``name``."""
        return self._vectors[name][:m]


def _reml_score(y: np.ndarray, v: np.ndarray, t: np.ndarray, work: _Workspace | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Twice) the score, expected and observed information of the restricted likelihood ``(r,)``.

    ``v`` is infinite for missing cohorts (weight 0). With ``P y = w (y - mu) =: a``,
    the score is ``a'a - tr P``, the expected information ``tr(P P)`` and the observed
    one ``2 y'P^3 y - tr(P P)`` with ``y'P^3 y = sum w (a - a_w)^2`` (``a_w`` the
    w-weighted mean of ``a``); the same operations, in the same order, as
    :class:`_Weighted` gives them. ``work`` holds the arrays (the three returned are
    views into it, valid until its next use); without it they are allocated.
    """
    k, m = y.shape
    if work is None:
        work = _Workspace(k, m)
    w, a, w_others, square, off_diagonal = (work.matrix(name, m) for name in ("w", "a", "others", "square", "off"))
    sum_w, sum_w2, mu, tr_p = (work.vector(name, m) for name in ("sum_w", "sum_w2", "mu", "tr_p"))
    score, expected, a_mean, observed = (work.vector(name, m) for name in ("score", "expected", "a_mean", "observed"))
    np.add(v, t[None, :], out=w)
    np.reciprocal(w, out=w)
    w.sum(axis=0, out=sum_w)
    np.multiply(w, y, out=a)
    a.sum(axis=0, out=mu)
    mu /= sum_w
    np.subtract(y, mu[None, :], out=a)
    a *= w
    _sum_others(w, out=w_others)
    w_others *= w
    w_others.sum(axis=0, out=tr_p)
    tr_p /= sum_w
    np.square(a, out=square)
    square.sum(axis=0, out=score)
    score -= tr_p
    np.square(w_others, out=w_others)
    np.square(w, out=square)
    _sum_others(square, out=off_diagonal)
    off_diagonal *= square
    w_others += off_diagonal
    w_others.sum(axis=0, out=expected)
    np.square(sum_w, out=sum_w2)
    expected /= sum_w2
    np.multiply(w, a, out=square)
    square.sum(axis=0, out=a_mean)
    a_mean /= sum_w
    a -= a_mean[None, :]
    np.square(a, out=a)
    a *= w
    a.sum(axis=0, out=observed)
    observed *= 2.0
    observed -= expected
    return score, expected, observed


def _reml_tau2(c: _Cohorts, scale: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """REML ``tau^2`` of rows with ``k >= 2``; returns ``(tau2, converged)``.

    metafor's Fisher scoring for the first :data:`_FISHER_STEPS` steps, then Newton
    steps inside the bracket of score sign changes seen so far (see the module docstring).
    """
    rows = c.y.shape[1]
    # metafor's start: the Hedges (unweighted method of moments) estimate, truncated at 0.
    mean = (c.y * c.present).sum(axis=0) / c.k
    sample_variance = (((c.y - mean[None, :]) * c.present) ** 2).sum(axis=0) / (c.k - 1)
    tau2 = np.maximum(0.0, sample_variance - (c.v * c.present).sum(axis=0) / c.k)
    converged = np.zeros(rows, dtype=bool)
    active = np.arange(rows)
    # Missing cohorts get an infinite variance here, so their weight 1 / (v + tau^2) is exactly 0
    # and no product needs the 0/1 mask: each step gathers two (k, r) arrays, not three, and
    # makes fewer passes (the same numbers: a missing cohort's terms are 0 either way).
    v_inf = np.where(c.present > 0, c.v, np.inf)
    y, v = c.y, v_inf
    # The state of the active rows only (shrunk with them): tau^2, where the score was seen
    # positive (lo, or the boundary 0) and negative (hi), and the scale of the criterion.
    t = tau2.copy()
    lo = np.zeros(rows)
    hi = np.full(rows, np.inf)
    scale_active = scale
    # Every step's arrays in buffers allocated once per block (see _Workspace); the active
    # rows' y and v are gathered into two pairs of buffers in turn.
    work = _Workspace(y.shape[0], rows)
    turn = 0
    for iteration in range(max_iter):
        if active.size == 0:
            break
        score, expected, observed = _reml_score(y, v, t, work)
        lo = np.where(score > 0, np.maximum(lo, t), lo)
        hi = np.where(score < 0, np.minimum(hi, t), hi)
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = np.where(observed > 0, score / observed, np.nan)

        if iteration < _FISHER_STEPS:
            step = score / expected
            # metafor halves a step that would cross 0 until it does not. At 0 a negative
            # step halves down to nothing (the row has converged on the boundary): skip that.
            step[(t == 0) & (step < 0)] = 0.0
            # Halved on the crossing rows only (a tiny step can take dozens of halvings; the whole
            # active set need not be passed over each time).
            crossing = np.flatnonzero(t + step < 0)
            while crossing.size:
                step[crossing] /= 2.0
                crossing = crossing[t[crossing] + step[crossing] < 0]
        else:
            # Fisher scoring converges linearly, at rate 1 - observed/expected information:
            # thousands of steps when cohort variances are very unequal, and it crawls
            # through regions where the likelihood is nearly flat. Newton where the
            # likelihood is concave and the step stays inside the bracket; otherwise
            # bisection of the bracket, or doubling tau^2 while no negative score was seen.
            use_newton = (t + newton > lo) & (t + newton < hi)
            fallback = np.where(np.isfinite(hi), 0.5 * (lo + hi), t + np.maximum(score / expected, t))
            step = np.where(use_newton, newton, fallback - t)
        new = t + step
        tau2[active] = new
        # Distance to the root: the Newton step where the likelihood is concave (as it is near
        # a maximum); a small scoring step alone is no proof when scoring converges slowly.
        distance = np.where(observed > 0, np.abs(newton), np.abs(step))
        done = (
            (distance <= tol * (t + scale_active))
            | (score == 0)
            | ((t == 0) & (score < 0))
            | (np.isfinite(hi) & (hi - lo <= tol * (hi + scale_active)))
        )
        t = new
        if done.any():
            converged[active[done]] = True
            keep = ~done
            active, t, lo, hi, scale_active = active[keep], t[keep], lo[keep], hi[keep], scale_active[keep]
            # from the active rows' own (smaller) arrays, not the whole block's
            kept = np.flatnonzero(keep)
            y = np.take(y, kept, axis=1, out=work.matrix(f"y{turn}", kept.size), mode="clip")
            v = np.take(v, kept, axis=1, out=work.matrix(f"v{turn}", kept.size), mode="clip")
            turn = 1 - turn
    # metafor: if the restricted likelihood is higher at 0 than at the root, the
    # scoring stopped at a local maximum and tau^2 is set to 0.
    positive = np.flatnonzero(converged & (tau2 > 0))
    if positive.size:
        y, v, present = c.y[:, positive], c.v[:, positive], c.present[:, positive]
        zero = np.zeros(positive.size)
        ll0 = _reml_log_likelihood(_weighted(y, v, present, zero), v, present, zero)
        ll = _reml_log_likelihood(_weighted(y, v, present, tau2[positive]), v, present, tau2[positive])
        tau2[positive[ll0 - ll > _LL0_TOL]] = 0.0
    return tau2, converged


def _pm_tau2(c: _Cohorts, fixed: _Weighted, tol: float, max_iter: int) -> tuple[np.ndarray, np.ndarray]:
    """Paule-Mandel ``tau^2`` of rows with ``k >= 2``: root of ``Q(tau^2) = k - 1``; returns ``(tau2, converged)``."""
    rows = c.y.shape[1]
    target = (c.k - 1).astype(np.float64)
    tau2 = np.zeros(rows)
    converged = fixed.rss <= target  # Q(0) <= k - 1: tau^2 = 0
    active = np.flatnonzero(~converged)
    # Upper bracket: Q(t) <= sum w (y - ybar)^2 <= sum (y - ybar)^2 / t, which is k - 1
    # at t = the unweighted sample variance.
    mean = (c.y[:, active] * c.present[:, active]).sum(axis=0) / c.k[active]
    hi = (((c.y[:, active] - mean[None, :]) * c.present[:, active]) ** 2).sum(axis=0) / target[active]
    lo = np.zeros(active.size)
    t = np.zeros(active.size)
    scale = (c.k[active] - 1) / fixed.tr_p[active]
    for _ in range(max_iter):
        if active.size == 0:
            break
        state = _weighted(c.y[:, active], c.v[:, active], c.present[:, active], t)
        excess = state.rss - target[active]
        # Q decreases in tau^2: a positive excess means the root lies above t.
        lo = np.where(excess > 0, t, lo)
        hi = np.where(excess < 0, t, hi)
        # dQ/dtau^2 = -sum w^2 (y - mu)^2 (the derivative of mu drops out as sum w (y - mu) = 0).
        slope = ((state.w * state.resid) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            new = t + excess / slope
        outside = ~((new > lo) & (new < hi))
        new[outside] = 0.5 * (lo[outside] + hi[outside])
        done = (np.abs(new - t) <= tol * (new + scale)) | (excess == 0) | (hi - lo <= tol * (hi + scale))
        new[excess == 0] = t[excess == 0]
        tau2[active] = new
        converged[active[done]] = True
        keep = ~done
        active, lo, hi, t, scale = active[keep], lo[keep], hi[keep], new[keep], scale[keep]
    return tau2, converged


def combine_estimates(
    beta: np.ndarray,
    se: np.ndarray,
    method: str = "reml",
    hksj: bool = False,
    *,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> MetaFits:
    """Meta-analyse every row of ``(r, k)`` per-cohort estimates ``beta`` with standard errors ``se``.

    Parameters
    ----------
    beta, se:
        ``(r, k)`` float arrays; a NaN (or non-finite, or ``se <= 0``) cell is a
        cohort without an estimate for that row.
    method:
        One of :data:`METHODS`: "fe" (fixed effect), "dl" (DerSimonian-Laird),
        "reml", "pm" (Paule-Mandel), as metafor's ``rma.uni`` methods.
    hksj:
        Hartung-Knapp-Sidik-Jonkman standard error and t test (metafor's
        ``test="knha"``) for rows with ``k >= 2``.
    tol, max_iter:
        An iterative estimator (REML, PM) stops for a row when its Newton step
        in ``tau^2`` is at most ``tol * (tau^2 + s^2)`` (``s^2`` the typical
        within-cohort variance), or after ``max_iter`` steps with ``converged``
        False.

    Returns
    -------
    MetaFits
        Every array ``(r,)``; see the module docstring for the edge cases.
    """
    method = method.lower()
    if method not in METHODS:
        raise ValueError(f"unknown meta-analysis method {method!r}; expected one of {', '.join(METHODS)}")
    c = _cohorts(beta, se)
    rows = c.y.shape[1]
    some = np.flatnonzero(c.k >= 1)
    several = c.k >= 2

    tau2 = np.full(rows, np.nan)
    tau2[some] = 0.0
    converged = np.ones(rows, dtype=bool)
    q_stat = np.full(rows, np.nan)
    s2 = np.full(rows, np.nan)  # typical within-cohort variance (k >= 2)
    multi = np.flatnonzero(several)
    if multi.size:
        # every row, as with --min-cohorts 2 or more: the block itself, not four gathered copies of it
        sub = c if multi.size == rows else _Cohorts(c.y[:, multi], c.s[:, multi], c.v[:, multi], c.present[:, multi], c.k[multi])
        fixed = _weighted(sub.y, sub.v, sub.present, np.zeros(multi.size))
        q_stat[multi] = fixed.rss
        s2[multi] = (sub.k - 1) / fixed.tr_p
        if method == "dl":
            tau2[multi] = np.maximum(0.0, (fixed.rss - (sub.k - 1)) / fixed.tr_p)
        elif method == "reml":
            tau2[multi], converged[multi] = _reml_tau2(sub, s2[multi], tol, max_iter)
        elif method == "pm":
            tau2[multi], converged[multi] = _pm_tau2(sub, fixed, tol, max_iter)
    q_stat[c.k == 1] = 0.0

    mu = np.full(rows, np.nan)
    se_mu = np.full(rows, np.nan)
    if some.size:
        if some.size == rows:
            state = _weighted(c.y, c.v, c.present, tau2)
        else:
            state = _weighted(c.y[:, some], c.v[:, some], c.present[:, some], tau2[some])
        mu[some] = state.mu
        variance = 1.0 / state.sum_w
        if hksj:
            # Only rows with k >= 2: with one cohort the t test would have 0 degrees of freedom.
            k_some = c.k[some]
            adjust = k_some >= 2
            scaled = np.where(state.rss <= _RSS_ZERO, 0.0, state.rss / np.maximum(k_some - 1, 1))
            variance = np.where(adjust, scaled * variance, variance)
        se_mu[some] = np.sqrt(variance)
        # One cohort: its own numbers, exactly (w y / w can differ from y in the last bit).
        single = np.flatnonzero(c.k == 1)
        mu[single] = (c.y[:, single] * c.present[:, single]).sum(axis=0)
        se_mu[single] = (c.s[:, single] * c.present[:, single]).sum(axis=0)

    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = mu / se_mu
        if method == "fe":
            i2 = np.where(q_stat > 0, 100.0 * np.maximum(0.0, (q_stat - (c.k - 1)) / q_stat), 0.0)
        else:
            i2 = 100.0 * tau2 / (s2 + tau2)
    i2[~several] = np.nan
    p = 2.0 * norm_sf(np.abs(statistic))
    if hksj and multi.size:
        p[multi] = 2.0 * t_sf(np.abs(statistic[multi]), c.k[multi] - 1)
    q_p = np.full(rows, np.nan)
    q_p[multi] = chi2_sf(q_stat[multi], c.k[multi] - 1)
    return MetaFits(c.k, mu, se_mu, statistic, p, tau2, i2, q_stat, q_p, converged)


def leave_one_out(
    beta: np.ndarray,
    se: np.ndarray,
    method: str = "reml",
    hksj: bool = False,
    *,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Combined estimate, standard error and p-value with each cohort left out in turn.

    Same arguments as :func:`combine_estimates`. Returns three ``(r, k)`` arrays:
    column ``j`` is the meta-analysis of the row without cohort ``j``, NaN where
    cohort ``j`` had no estimate (metafor's ``leave1out``). A row with two cohorts
    leaves one, reported with a z test (see :func:`combine_estimates`).
    """
    present = _cohorts(beta, se).present.T > 0  # (r, k)
    beta_in = np.where(present, np.asarray(beta, dtype=np.float64), np.nan)
    se_in = np.where(present, np.asarray(se, dtype=np.float64), np.nan)
    shape = beta_in.shape
    out_beta, out_se, out_p = np.full(shape, np.nan), np.full(shape, np.nan), np.full(shape, np.nan)
    for j in range(shape[1]):
        rows = np.flatnonzero(present[:, j])
        if rows.size == 0:
            continue
        b, s = beta_in[rows], se_in[rows]
        b[:, j] = np.nan
        fits = combine_estimates(b, s, method, hksj, tol=tol, max_iter=max_iter)
        out_beta[rows, j], out_se[rows, j], out_p[rows, j] = fits.beta, fits.se, fits.p
    return out_beta, out_se, out_p


def direction_strings(beta: np.ndarray) -> np.ndarray:
    """``(r,)`` object array of per-cohort signs, in cohort order, from ``(r, k)`` estimates.

    ``+`` positive, ``-`` negative, ``0`` exactly zero, ``?`` missing (NaN). Only
    the estimate is looked at: pass NaN where a cohort's standard error is invalid.
    """
    beta = np.asarray(beta, dtype=np.float64)
    if beta.ndim != 2:
        raise ValueError(f"beta must be a (rows, cohorts) array, got shape {beta.shape}")
    rows, k = beta.shape
    if k == 0:
        return np.full(rows, "", dtype=object)
    signs = np.where(np.isnan(beta), "?", np.where(beta > 0, "+", np.where(beta < 0, "-", "0")))
    # k one-character cells of a row are one k-character string in memory.
    joined = np.ascontiguousarray(signs.astype("<U1")).view(f"<U{k}").reshape(rows)
    return joined.astype(object)
