"""Newton's method for every feature of a block at once, with step halving and freezing of converged features.

``newton`` is a loop of named steps: take the final steps of the features
that converged (:func:`_take_final_steps`), shrink the working arrays to the
live features, choose the next pass's precision (:func:`_plan_pass`), run the
pass (:func:`_run_pass`), halve the steps that lower the objective
(:func:`_halve_worse_steps`), and compute the next steps (:func:`_next_point`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse

from scalable_assoc.models.logistic.firth import firth_pass, firth_step, half_logdet
from scalable_assoc.models.logistic.packed import Basis, Cells
from scalable_assoc.models.logistic.passes import Evaluation, evaluate, largest_moves, newton_step, stacked_inverse
from scalable_assoc.models.logistic.tuning import (
    CHECKED_TOGETHER,
    CORRECTED_STEP,
    CORRECTED_VARIANCE,
    DIVERGED_ITERATIONS,
    DIVERGENCE_CHECKS_FROM,
    ETA_DIVERGED,
    ETA_SEPARATED_AT_END,
    EXACT_FISHER_STEP,
    MAX_HALVINGS,
    OBJECTIVE_SLACK,
    OBJECTIVE_SLACK_SINGLE,
    SAFE_STEP,
    SINGLE_PRECISION_STEP,
)


@dataclass(frozen=True)
class Settings:
    """How :func:`newton` runs.

    ``firth``: maximise Firth's penalised log-likelihood (else the plain one);
    ``max_iter``: Newton iterations at most; ``tol``: the longest final step,
    in units of a linear predictor (log odds).
    """

    firth: bool
    max_iter: int
    tol: float


@dataclass(frozen=True)
class Known:
    """What the caller already knows about the ``(n, s)`` outcome ``y``, to spare the start work; None: computed here.

    ``basis_y``: ``(p, s)`` ``B'y``; ``counted``: the ``(s,)`` events per feature
    with the missing cells' ``(s, n)`` indicator (:meth:`Cells.indicator`);
    ``y32``: ``y`` in single precision, for the single-precision passes;
    ``warm``: ``(p, s)`` starts of Firth's fits (NaN columns for none).
    """

    basis_y: np.ndarray | None = None
    counted: tuple[np.ndarray, scipy.sparse.csr_matrix] | None = None
    y32: np.ndarray | None = None
    warm: np.ndarray | None = None


NOTHING_KNOWN = Known()


@dataclass
class Point:
    """Newton's state at the current coefficients of ``w`` features."""

    coefficients: np.ndarray  # (p, w)
    delta: np.ndarray  # (p, w) the Newton step from here (zero for frozen features)
    variance: np.ndarray  # (w,) last diagonal entry of the inverse Fisher information
    objective: np.ndarray  # (w,) log-likelihood (penalised under Firth); NaN where not computed
    rough_variance: np.ndarray  # (w,) bool: the information came from a single-precision product
    rough_objective: np.ndarray  # (w,) bool: the objective came from a single-precision pass
    direction: np.ndarray | None = None  # (p, w) I^-1 e_p, the variance's direction (see evaluate)
    bend: np.ndarray | None = None  # (p, w) the variance's first-order change per unit step, if measured
    bent_along: np.ndarray | None = None  # (p, w) the direction ``bend`` was measured along

    def take(self, columns: np.ndarray) -> Point:
        """The state of ``columns`` only."""
        return Point(
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


def start(basis: Basis, y: np.ndarray, missing: Cells, firth: bool, fitted: np.ndarray, known: Known = NOTHING_KNOWN) -> Point:
    """Newton's start: the constant fit ``eta = logit(prevalence)`` of every feature.

    Its weights are constant per feature, so its Fisher information is that
    constant times the feature's Gram matrix (all rows minus the missing ones, a
    sparse product) and its score ``B'y - prevalence B'1`` and log-likelihood
    have closed forms: no pass over the participants (except for Firth's
    modified score). Under Firth, ``known.warm`` gives other starts for some
    features. ``known.basis_y`` and ``known.counted`` (see :class:`Known`) are
    used where given. Features not ``fitted`` (``(w,)`` bool) get a zero step
    (and an identity information, whatever their data).
    """
    n = basis.matrix.shape[0]
    w = y.shape[1]
    n_used = np.maximum(n - np.bincount(missing.columns, minlength=w), 1)
    events, indicator = (y.sum(axis=0), missing.indicator(n, w)) if known.counted is None else known.counted
    prevalence = np.clip(events / n_used, 0.5 / n_used, 1.0 - 0.5 / n_used)
    logit = np.log(prevalence) - np.log1p(-prevalence)
    coefficients = np.zeros((basis.p, w))
    coefficients[:-1] = (basis.matrix[:, :-1].sum(axis=0))[:, None] * logit  # 1 = Q Q'1 lies in span(Q)
    gram = basis.products.sum(axis=0)[:, None] - np.asarray(indicator @ basis.products).T
    fisher = basis.unpack(gram * (prevalence * (1.0 - prevalence)))
    fisher[~fitted] = np.eye(basis.p)  # a singular one must not fail the stacked solve
    objective = events * np.log(prevalence) + (n_used - events) * np.log1p(-prevalence)
    if firth:
        objective = objective + half_logdet(fisher)
        warm = known.warm
        if warm is not None and (started := np.flatnonzero(np.all(np.isfinite(warm), axis=0) & fitted)).size:
            # Warm starts (see designs.fit_design): their information and objective need a pass.
            coefficients[:, started] = warm[:, started]
            at_warm = evaluate(basis, y[:, started], missing.restrict(started, w), coefficients[:, started], True, False, True)
            assert at_warm.fisher is not None and at_warm.loglik is not None
            fisher[started] = at_warm.fisher
            objective[started] = at_warm.loglik + half_logdet(at_warm.fisher)
        inverse = stacked_inverse(fisher)
        score, negative_hessian = firth_pass(basis, y, missing, coefficients, fisher, inverse)
        delta, variance, direction = firth_step(fisher, negative_hessian, score), inverse[:, -1, -1], inverse[:, :, -1].T
    else:
        used_sums = basis.matrix.sum(axis=0)[:, None] - np.asarray(indicator @ basis.matrix).T
        score = (basis.matrix.T @ y if known.basis_y is None else known.basis_y) - used_sums * prevalence
        delta, variance, direction = newton_step(fisher, score)
    delta[:, ~fitted] = 0.0
    return Point(coefficients, delta, variance, objective, np.zeros(w, dtype=bool), np.zeros(w, dtype=bool), direction)


@dataclass(frozen=True)
class NewtonResult:
    """Per feature (``s``): coefficients ``(p, s)`` on the basis, variance of the last one, outcome (``(s,)`` bool each).

    Made NaN / False by :func:`newton` and filled in place as features converge or diverge.
    """

    coefficients: np.ndarray
    last_variance: np.ndarray
    converged: np.ndarray
    diverged: np.ndarray


@dataclass
class _Working:
    """The working set of Newton's iterations: ``w`` columns, the features not yet frozen among them ``live``."""

    y: np.ndarray  # (n, w) presence, 0 in the missing cells
    missing: Cells
    y32: np.ndarray | None  # y in single precision; dropped once the set shrinks
    point: Point
    position: np.ndarray  # (w,) original feature of each working column
    beyond: np.ndarray  # (w,) consecutive iterations with max |eta| > ETA_DIVERGED
    largest: np.ndarray  # (w,) max |eta| over used participants, as last measured
    live: np.ndarray  # (w,) bool

    def shrink(self, bound: np.ndarray) -> np.ndarray:
        """Keep the live columns only; returns ``bound`` (``(w,)``) likewise restricted."""
        keep = np.flatnonzero(self.live)
        self.missing = self.missing.restrict(keep, self.live.size)
        self.y, self.point, self.position, self.beyond, self.largest = (
            self.y[:, keep],
            self.point.take(keep),
            self.position[keep],
            self.beyond[keep],
            self.largest[keep],
        )
        self.y32 = None
        self.live = self.live[keep]
        return bound[keep]


@dataclass(frozen=True)
class _PassPlan:
    """What the next pass computes, and in which precision."""

    check: np.ndarray  # working columns whose step is checked against the objective
    single: bool  # the whole pass in single precision
    single_fisher: bool  # only the Fisher information's product in single precision
    whole: bool  # the pass computes the log-likelihood of all features (else the checked ones get a pass apart)
    find_largest: bool  # the pass measures max |eta| (for the divergence rule)
    bend_along: np.ndarray | None  # (p, w) directions along which the variance's bend is measured


def newton(
    basis: Basis, y: np.ndarray, missing: Cells, settings: Settings, known: Known = NOTHING_KNOWN, fitted: np.ndarray | None = None
) -> NewtonResult:
    """(Penalised) maximum likelihood for ``s`` features at once, by Newton's method with step halving.

    Parameters
    ----------
    basis:
        The design's orthonormal basis ``B`` (``(n, p)``) with its packed pair products.
    y:
        ``(n, s)`` presence (0/1), 0 in the ``missing`` cells.
    missing:
        The missing cells of ``y``, sorted by row.
    settings:
        Under ``settings.firth`` the objective is Firth's penalised log-likelihood
        and the score the modified score; ``max_iter`` and ``tol`` as in :class:`Settings`.
    known:
        ``B'y``, the events and the missing cells' indicator for the start (see
        :func:`start`), and ``y`` in single precision for the single-precision
        passes (which come before any feature converges, so it is dropped when
        the working arrays shrink); each optional.
    fitted:
        ``(s,)`` bool, the features to fit (default all): the others start
        frozen, which spares a copy of ``y`` without them when they are few.

    Returns
    -------
    NewtonResult
        Coefficients ``(p, s)`` on ``B`` and the variance of the last one where
        ``converged``; ``diverged`` where the fit pushed some fitted probability to
        0 or 1 (separation).

    A feature has converged when its next Newton step cannot move any linear
    predictor by more than ``tol`` (bounded by ``sum_a max_i |B_ia| |delta_a|``,
    no pass needed); it takes that step and is frozen (its step is zero from
    then on). The working arrays shrink to the live features once a third of
    them are frozen, so that copying costs about what it saves.
    """
    s = y.shape[1]
    result = NewtonResult(np.full((basis.p, s), np.nan), np.full(s, np.nan), np.zeros(s, dtype=bool), np.zeros(s, dtype=bool))
    if s == 0:
        return result

    column_max = np.abs(basis.matrix).max(axis=0)
    live = np.ones(s, dtype=bool) if fitted is None else fitted.copy()
    point = start(basis, y, missing, settings.firth, live, known)
    state = _Working(y, missing, known.y32, point, np.arange(s), np.zeros(s, dtype=np.int64), np.full(s, np.nan), live)
    for iteration in range(settings.max_iter):
        bound = column_max @ np.abs(state.point.delta)  # >= max_i |B_i delta|
        _take_final_steps(basis, state, bound, settings.tol, result)
        if not state.live.any():
            return result
        if 3 * state.live.sum() <= 2 * state.live.size:
            bound = state.shrink(bound)
        state.point.delta[:, ~state.live] = 0.0
        plan = _plan_pass(basis, state, bound, settings.firth, iteration)
        trial = state.point.coefficients + state.point.delta
        evaluation, objective = _run_pass(basis, state, plan, trial, settings.firth)
        if plan.check.size:
            _halve_worse_steps(basis, state, plan, trial, evaluation, objective, settings.firth)
        state.point = _next_point(basis, state, plan, trial, evaluation, objective, settings.firth)
        if evaluation.largest is not None:
            _count_divergence(state, result)
        if not state.live.any():
            return result
    # Out of iterations: a fit still pushing probabilities towards 0 or 1 is separated
    # (Firth's estimate is finite whatever the data: it is just not converged).
    if not settings.firth:
        _flag_separated_at_end(basis, state, result)
    return result


def _variance_correction(point: Point) -> tuple[np.ndarray, np.ndarray]:
    """``(w,)`` first-order change of each variance along its step, and ``(w,)`` bool where it can be trusted."""
    # The correction -delta'g was measured along the previous pass's direction u;
    # the variance needs it along this point's, u'. g is quadratic in u, so with
    # u' = a u + r (a least squares) it is a^2 times the measured one, off by about
    # twice |r| / |u'| times the correction, which must stay negligible.
    assert point.bend is not None and point.bent_along is not None and point.direction is not None
    then, now = point.bent_along, point.direction
    scale = np.einsum("aw,aw->w", then, now) / np.einsum("aw,aw->w", then, then)
    correction = scale**2 * np.einsum("aw,aw->w", point.delta, point.bend)
    drift = np.linalg.norm(now - scale * then, axis=0) / np.linalg.norm(now, axis=0)
    trusted = 2.0 * drift * np.abs(correction) <= CORRECTED_VARIANCE * np.abs(point.variance)
    return correction, trusted


def _take_final_steps(basis: Basis, state: _Working, bound: np.ndarray, tol: float, result: NewtonResult) -> None:
    """Freeze the live features whose next step (``bound``, ``(w,)``) is short enough to be the last, taking it into ``result``."""
    point, live = state.point, state.live
    # Converged: take the final step, with the variance from the information just
    # before it (the two differ by the order of tol), or, where the pass measured the
    # variance's first-order change (``bend``), a step up to CORRECTED_STEP long with
    # the variance moved along it: what is left is of the order of the step squared.
    # Only steps from double-precision scores count (single precision rounds them).
    final = np.full(live.size, tol)
    correction = None
    if point.bend is not None:
        correction, trusted = _variance_correction(point)
        final[trusted] = max(tol, CORRECTED_STEP)
    done = live & (bound <= final) & ~point.rough_objective
    if (done & point.rough_variance).any():
        # That information came from a single-precision product: recompute it exactly.
        columns = np.flatnonzero(done & point.rough_variance)
        exact = evaluate(
            basis, state.y[:, columns], state.missing.restrict(columns, live.size), point.coefficients[:, columns], score=False
        )
        assert exact.fisher is not None
        point.variance[columns] = stacked_inverse(exact.fisher)[:, -1, -1]
    position = state.position
    result.coefficients[:, position[done]] = point.coefficients[:, done] + point.delta[:, done]
    if correction is not None:
        point.variance[done] -= correction[done]
    result.last_variance[position[done]] = point.variance[done]
    result.converged[position[done]] = True
    live &= ~done


def _plan_pass(basis: Basis, state: _Working, bound: np.ndarray, firth: bool, iteration: int) -> _PassPlan:
    """Which steps the next pass checks and in which precision it runs; sharpens ``bound`` (``(w,)``) in place where checked."""
    point, live = state.point, state.live
    # Only steps that might lower the objective are checked: all under Firth, whose
    # penalty the certificate does not cover; otherwise only the long ones. The bound is
    # loose (a 13-column basis overstates the first step's move about fivefold), so the
    # candidates get their exact largest move: a product of the basis with their steps
    # costs a third of what the log-likelihood would cost the pass.
    if not firth and (long := np.flatnonzero(live & (bound > SAFE_STEP))).size:
        bound[long] = largest_moves(basis, point.delta[:, long])
    check = np.flatnonzero(live if firth else live & (bound > SAFE_STEP))
    single = not firth and bool(np.all(bound[live] > SINGLE_PRECISION_STEP))
    # After a single-precision pass the steps are ~3e-7 (that pass's rounding): short
    # enough to be final at this pass with the variance corrected along them
    # (CORRECTED_STEP), so this pass's information must be exact.
    after_single = bool(np.all(point.rough_objective[live]))
    single_fisher = not firth and not after_single and bool(np.all(bound[live] > EXACT_FISHER_STEP))
    # The log-likelihood costs a third of a pass: for a few checked features it is
    # cheaper computed on their own, after the pass.
    whole = firth or bool(CHECKED_TOGETHER * check.size > np.count_nonzero(live))
    find_largest = not firth and iteration >= DIVERGENCE_CHECKS_FROM
    # A pass with an exact information may be the last of some features: it also
    # measures how their variance bends along their next (final) step.
    bend_along = point.direction if not (single or single_fisher) else None
    return _PassPlan(check, single, single_fisher, whole, find_largest, bend_along)


def _run_pass(basis: Basis, state: _Working, plan: _PassPlan, trial: np.ndarray, firth: bool) -> tuple[Evaluation, np.ndarray]:
    """The pass at ``trial`` (``(p, w)``), and the ``(w,)`` objective there (NaN where not computed)."""
    check, live = plan.check, state.live
    evaluation = evaluate(
        basis,
        state.y,
        state.missing,
        trial,
        True,
        not firth,
        bool(plan.whole and check.size),
        plan.find_largest,
        plan.single,
        plan.single_fisher,
        state.y32,
        plan.bend_along,
    )
    assert evaluation.fisher is not None
    objective = np.full(live.size, np.nan) if evaluation.loglik is None else evaluation.loglik
    if check.size and not plan.whole:
        alone = evaluate(
            basis, state.y[:, check], state.missing.restrict(check, live.size), trial[:, check], False, False, True, single=plan.single
        )
        assert alone.loglik is not None
        objective[check] = alone.loglik
    if firth:
        objective = objective + half_logdet(evaluation.fisher)
    if evaluation.largest is not None:
        state.largest = evaluation.largest
    return evaluation, objective


def _objective_before(basis: Basis, state: _Working, check: np.ndarray) -> np.ndarray:
    """``(c,)`` objective at the current point of the ``check`` columns, computing the ones not known."""
    point = state.point
    before = point.objective[check]
    unknown = np.isnan(before)
    if unknown.any():
        # A long step after short unchecked ones: its starting value is needed now.
        columns = check[unknown]
        again = evaluate(
            basis, state.y[:, columns], state.missing.restrict(columns, state.live.size), point.coefficients[:, columns], False, False, True
        )
        assert again.loglik is not None
        before[unknown] = again.loglik
    return before


def _halve_worse_steps(
    basis: Basis, state: _Working, plan: _PassPlan, trial: np.ndarray, evaluation: Evaluation, objective: np.ndarray, firth: bool
) -> None:
    """Halve the checked steps that lower the objective until they do not, updating ``trial``, ``evaluation`` and ``objective`` in place.

    Features that no step length helps are given up (no longer live; reported as not converged).
    """
    check, point, live = plan.check, state.point, state.live
    fisher, score, largest = evaluation.fisher, evaluation.score, state.largest
    assert fisher is not None
    before = _objective_before(basis, state, check)
    slack = np.where(point.rough_objective[check] | plan.single, OBJECTIVE_SLACK_SINGLE, OBJECTIVE_SLACK)
    floor = before - slack * (1.0 + np.abs(before))
    worse = ~(objective[check] >= floor)
    factor = np.ones(check.size)
    for _halving in range(MAX_HALVINGS):
        if not worse.any():
            break
        columns = check[worse]
        factor[worse] /= 2.0
        trial[:, columns] = point.coefficients[:, columns] + factor[worse] * point.delta[:, columns]
        # A retry always needs the log-likelihood, even where the pass left it to a pass apart.
        retry = evaluate(
            basis,
            state.y[:, columns],
            state.missing.restrict(columns, live.size),
            trial[:, columns],
            True,
            not firth,
            True,
            plan.find_largest,
            plan.single,
            plan.single_fisher,
        )
        assert retry.fisher is not None and retry.loglik is not None
        fisher[columns] = retry.fisher
        objective[columns] = retry.loglik + (half_logdet(retry.fisher) if firth else 0.0)
        if score is not None and retry.score is not None:
            score[:, columns] = retry.score
        if retry.largest is not None:
            largest[columns] = retry.largest
        worse[worse] = ~(objective[columns] >= floor[worse])
    # No step length helps: give up on these (they are reported as not converged).
    live[check[worse]] = False


def _next_point(
    basis: Basis, state: _Working, plan: _PassPlan, trial: np.ndarray, evaluation: Evaluation, objective: np.ndarray, firth: bool
) -> Point:
    """The state at ``trial``: its next steps (Newton's, or Firth's), variances and objective."""
    fisher, score = evaluation.fisher, evaluation.score
    assert fisher is not None
    if firth:
        inverse = stacked_inverse(fisher)
        score, negative_hessian = firth_pass(basis, state.y, state.missing, trial, fisher, inverse)
        delta, variance, direction = firth_step(fisher, negative_hessian, score), inverse[:, -1, -1], inverse[:, :, -1].T
    else:
        assert score is not None
        delta, variance, direction = newton_step(fisher, score)
    w = state.live.size
    return Point(
        trial,
        delta,
        variance,
        objective,
        np.full(w, plan.single_fisher),
        np.full(w, plan.single),
        direction,
        evaluation.bend,
        plan.bend_along,
    )


def _count_divergence(state: _Working, result: NewtonResult) -> None:
    """Freeze as diverged the features whose |eta| stayed beyond ETA_DIVERGED for DIVERGED_ITERATIONS passes."""
    state.beyond = np.where(state.largest > ETA_DIVERGED, state.beyond + 1, 0)
    done = state.live & (state.beyond >= DIVERGED_ITERATIONS)
    result.diverged[state.position[done]] = True
    state.live &= ~done


def _flag_separated_at_end(basis: Basis, state: _Working, result: NewtonResult) -> None:
    """Out of iterations: mark as diverged the live features with some |eta| beyond ETA_SEPARATED_AT_END."""
    largest = state.largest
    if np.isnan(largest).any():
        again = evaluate(basis, state.y, state.missing, state.point.coefficients, False, False, False, True)
        assert again.largest is not None
        largest = again.largest
    result.diverged[state.position[state.live & (largest > ETA_SEPARATED_AT_END)]] = True
