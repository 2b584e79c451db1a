"""The per-design driver of the logistic kernel: inputs checked, separation found from counts, Newton's fits per exposure."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.special

from scalable_assoc.models.design import CovariateDesign, ExposureDirections, exposure_directions
from scalable_assoc.models.fits import FitStatus, SlopeFits
from scalable_assoc.models.logistic.newton import Known, Settings, newton
from scalable_assoc.models.logistic.packed import Basis, Cells, make_basis
from scalable_assoc.models.logistic.separation import level_separated, lower_levels, singular_features, used_sums
from scalable_assoc.models.logistic.tuning import EXACT_SINGLE_COUNTS, MAX_ITERATIONS, MIN_EVENTS, TOLERANCE


@dataclass(frozen=True)
class _Options:
    """Per call of :func:`_fit_design`: Firth refits, fewest events, Newton iterations and tolerance (see :func:`fit_logistic_slopes`)."""

    firth: bool
    min_events: int
    max_iter: int
    tol: float


@dataclass(frozen=True)
class _Outcome:
    """Presence over one participant subset: ``(n, m)`` with 0 in the missing cells, and those cells."""

    y: np.ndarray
    y32: np.ndarray  # y in single precision, for the single-precision passes
    missing: Cells
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
        missing = Cells(*np.divmod(np.flatnonzero(np.isnan(y)), m))  # row-major: sorted by row
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
    options = _Options(firth, MIN_EVENTS, MAX_ITERATIONS, TOLERANCE)
    previous: tuple[bytes, list[_FirthState]] | None = None
    for index in sorted(range(len(designs)), key=keys.__getitem__):
        key = keys[index]
        warm = previous[1] if previous is not None and previous[0] == key else None
        fits[index], states = _fit_design(designs[index], exposures[index], binary[index], block, subsets[index], options, warm)
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
        more than ``CORRECTED_STEP`` where the pass measured the variance's change
        along the step (estimates to ~1e-10 relative, standard errors to 1e-9).

    Returns
    -------
    SlopeFits with every array ``(k, m)``: ``beta`` the log odds ratio per
    exposure unit, ``se`` from the inverse Fisher information (at the penalised
    estimate under Firth), ``t`` the Wald z, ``p`` two-sided normal, ``n`` the
    participants used, ``n_cases``/``n_controls`` for binary exposures.
    """
    return _fit_design(design, exposures, binary, presence, rows, _Options(firth, min_events, max_iter, tol))[0]


#: Per exposure of a design: its basis ``(n, p)`` and the Firth estimates ``(p, m)`` on it
#: (NaN for features not fitted by Firth), to start the next design's Firth fits from.
_FirthState = tuple[np.ndarray, np.ndarray] | None


@dataclass(frozen=True)
class _Estimates:
    """The ``(k, m)`` outputs of one design's fit, filled in place exposure by exposure."""

    beta: np.ndarray
    se: np.ndarray
    status: np.ndarray
    n: np.ndarray
    n_cases: np.ndarray
    n_controls: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int], n_used: np.ndarray) -> _Estimates:
        """No estimate, status OK, ``n_used`` (``(m,)``) participants everywhere, case counts -1."""
        return cls(
            np.full(shape, np.nan),
            np.full(shape, np.nan),
            np.zeros(shape, dtype=np.int8),
            np.broadcast_to(n_used.astype(np.int64), shape).copy(),
            np.full(shape, -1, dtype=np.int64),
            np.full(shape, -1, dtype=np.int64),
        )

    def record(self, e: int, features: np.ndarray, coefficients: np.ndarray, variances: np.ndarray, scale: float) -> None:
        """Exposure ``e``'s slope and standard error for ``features`` from their last basis coefficients and variances."""
        self.beta[e, features] = coefficients / scale
        self.se[e, features] = np.sqrt(variances) / scale

    def slope_fits(self) -> SlopeFits:
        """The finished fits: estimates only where the status is OK or FIRTH, Wald z and two-sided normal p."""
        beta, se, status = self.beta, self.se, self.status
        # Only OK and FIRTH rows keep an estimate (a diverged plain fit left none anyway).
        without = (status != FitStatus.OK) & (status != FitStatus.FIRTH)
        beta[without] = np.nan
        se[without] = np.nan
        with np.errstate(invalid="ignore", divide="ignore"):
            z = beta / se
        # Two-sided normal tail, as statsmodels' Logit reports; ndtr keeps tiny p exact.
        p = 2.0 * scipy.special.ndtr(-np.abs(z))
        return SlopeFits(beta, se, z, p, self.n, self.n_cases, self.n_controls, status)


@dataclass(frozen=True)
class _LevelCounts:
    """Used participants and those present per level (rows) and feature, ``B'y`` for the start, and the events.

    Rows of ``used``/``present`` (``(L, m)``): the whole sample (row 0), the lower
    level of each two-valued covariate, then of each exposure; ``bounds`` delimit
    these parts (``bounds[2 + e]:bounds[3 + e]`` for exposure ``e``).
    """

    used: np.ndarray
    present: np.ndarray
    bounds: np.ndarray
    basis_y: np.ndarray  # (rank + k, m): Q'y and b_e'y
    events: np.ndarray  # (m,) used participants with the feature

    def separated_by(self, counted: slice) -> np.ndarray:
        """``(m,)``: a level of the columns counted in rows ``counted`` (or its upper level) separates."""
        used, present = self.used[counted], self.present[counted]
        return level_separated(np.vstack([used, self.used[0] - used]), np.vstack([present, self.events - present]))

    def covariate_separated(self) -> np.ndarray:
        """``(m,)``: the whole sample, or a level of a two-valued covariate, separates."""
        return level_separated(self.used[:1], self.present[:1]) | self.separated_by(slice(self.bounds[1], self.bounds[2]))


def _level_counts(design: CovariateDesign, exposures: np.ndarray, directions: np.ndarray, outcome: _Outcome) -> _LevelCounts:
    """Counts of the levels whose presence reveals separation without fitting, and ``B'y``, in one product with ``y``."""
    n = exposures.shape[1]
    # Levels whose presence counts reveal separation without fitting: the whole sample
    # (the intercept's level), each level of a two-valued covariate, then of each exposure.
    # Only the lower levels are counted; the upper ones are the whole sample minus those.
    level_blocks = [np.ones((n, 1)), lower_levels(design.covariates[:, 1:])]
    level_blocks += [lower_levels(exposures[e][:, None]) for e in range(exposures.shape[0])]
    levels = np.hstack(level_blocks)
    # Everything that needs y itself in ONE product (y is read once): level counts,
    # Q'y and b_e'y (the start's score), events (the all-ones level). In single
    # precision: counts of 0/1 values are exact there (below 2^24), and Q'y only places
    # Newton's start, whose step is then off by ~1e-7 of itself.
    stacked = np.hstack([levels, design.q, directions])
    if n < EXACT_SINGLE_COUNTS:
        totals = (stacked.astype(np.float32).T @ outcome.y32).astype(np.float64)
    else:
        totals = stacked.T @ outcome.y
    level_present, basis_y = totals[: levels.shape[1]], totals[levels.shape[1] :]
    bounds = np.cumsum([0] + [part.shape[1] for part in level_blocks])
    return _LevelCounts(used_sums(levels, outcome.missing_indicator), level_present, bounds, basis_y, level_present[0])


@dataclass(frozen=True)
class _Design:
    """What every exposure's fit of one design reads."""

    q: np.ndarray  # (n, rank) the covariates' orthonormal basis
    outcome: _Outcome
    directions: ExposureDirections
    counts: _LevelCounts
    too_few: np.ndarray  # (m,) bool: fewer than min_events with, or without, the feature
    covariate_separated: np.ndarray  # (m,) bool


def _checked_inputs(
    design: CovariateDesign, exposures: np.ndarray, binary: np.ndarray, n_total: int, rows: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rows`` (``(n,)``), ``exposures`` (``(k, n)`` float) and ``binary`` (``(k,)`` bool) as arrays, checked against the design."""
    rows = np.arange(n_total) if rows is None else np.asarray(rows)
    exposures = np.atleast_2d(np.asarray(exposures, dtype=np.float64))
    k, n = exposures.shape
    binary = np.broadcast_to(np.asarray(binary, dtype=bool), (k,))
    if rows.size != n or design.n != n:
        raise ValueError(f"design has {design.n} participants, exposures {n}, rows {rows.size}; they must agree")
    if not np.all(np.isfinite(exposures)):
        raise ValueError("exposures must be finite; drop participants with missing exposures first")
    return rows, exposures, binary


def _fit_design(
    design: CovariateDesign,
    exposures: np.ndarray,
    binary: np.ndarray,
    presence: PresenceBlock | np.ndarray,
    rows: np.ndarray | None,
    options: _Options,
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
    rows, exposures, binary = _checked_inputs(design, exposures, binary, n_total, rows)
    k = exposures.shape[0]
    outcome = block.outcome(rows)
    fits = _Estimates.empty((k, m), outcome.n_used)
    if design.problem is not None:  # as the OLS kernel: participants counted, no case counts
        fits.status[:] = FitStatus.DESIGN_RANK_DEFICIENT
        beta = fits.beta
        return SlopeFits(beta, fits.se, beta.copy(), beta.copy(), fits.n, fits.n_cases, fits.n_controls, fits.status), []
    for index in np.flatnonzero(binary):
        cases = used_sums(np.column_stack([exposures[index] == 1.0, exposures[index] == 0.0]).astype(np.float64), outcome.missing_indicator)
        fits.n_cases[index], fits.n_controls[index] = np.rint(cases).astype(np.int64)

    directions = exposure_directions(design, exposures)
    counts = _level_counts(design, exposures, directions.directions, outcome)
    too_few = np.minimum(counts.events, outcome.n_used - counts.events) < options.min_events
    data = _Design(design.q, outcome, directions, counts, too_few, counts.covariate_separated())
    states: list[_FirthState] = []
    for e in range(k):  # a handful of exposures per design; features stay vectorised
        if directions.collinear[e]:
            fits.status[e] = FitStatus.EXPOSURE_COLLINEAR
            states.append(None)
            continue
        previous = warm[e] if warm is not None and e < len(warm) else None
        states.append(_fit_exposure(e, data, options, previous, fits))
    return fits.slope_fits(), states


def _fit_exposure(e: int, data: _Design, options: _Options, previous: _FirthState, fits: _Estimates) -> _FirthState:
    """Fit exposure ``e`` of a design into ``fits``: plain fits first, separated features by Firth (or flagged)."""
    outcome, counts, rank = data.outcome, data.counts, data.q.shape[1]
    basis = make_basis(np.column_stack([data.q, data.directions.directions[:, e]]))
    singular = singular_features(basis, outcome.missing_indicator)
    fitted = ~data.too_few & ~singular
    exposure_separated = counts.separated_by(slice(counts.bounds[2 + e], counts.bounds[3 + e]))
    separated = fitted & (data.covariate_separated | exposure_separated)

    plain = fitted & ~separated
    # The whole block, the other features frozen from the start: no copy of y.
    known = Known(counts.basis_y[np.r_[:rank, rank + e]], (counts.events, outcome.missing_indicator), outcome.y32)
    result = newton(basis, outcome.y, outcome.missing, Settings(False, options.max_iter, options.tol), known, plain)
    estimated = result.converged
    scale = data.directions.scales[e]
    fits.record(e, estimated, result.coefficients[-1, estimated], result.last_variance[estimated], scale)
    fits.status[e, plain & ~estimated] = FitStatus.NOT_CONVERGED
    separated |= result.diverged

    penalised = np.flatnonzero(separated)
    state: _FirthState = None
    if options.firth:
        state = _fit_firth(e, basis, penalised, outcome, options, previous, fits, scale)
    else:
        fits.status[e, penalised] = FitStatus.SEPARATION
    fits.status[e, singular] = FitStatus.FEATURE_RANK_DEFICIENT
    fits.status[e, data.too_few] = FitStatus.TOO_FEW_EVENTS
    return state


def _fit_firth(
    e: int, basis: Basis, penalised: np.ndarray, outcome: _Outcome, options: _Options, previous: _FirthState, fits: _Estimates, scale: float
) -> _FirthState:
    """Firth's fits of the ``penalised`` features of exposure ``e`` into ``fits``, warm-started from ``previous``; their state."""
    m = outcome.y.shape[1]
    start = None
    if previous is not None and penalised.size:
        # The previous design's linear predictors, projected on this basis.
        start = (basis.matrix.T @ previous[0]) @ previous[1][:, penalised]
    missing = outcome.missing.restrict(penalised, m)
    result = newton(basis, outcome.y[:, penalised], missing, Settings(True, options.max_iter, options.tol), Known(warm=start))
    estimated = penalised[result.converged]
    firth_estimates = np.full((basis.p, m), np.nan)
    firth_estimates[:, estimated] = result.coefficients[:, result.converged]
    fits.record(e, estimated, result.coefficients[-1, result.converged], result.last_variance[result.converged], scale)
    fits.status[e, estimated] = FitStatus.FIRTH
    fits.status[e, penalised[~result.converged]] = FitStatus.NOT_CONVERGED
    return (basis.matrix, firth_estimates)
