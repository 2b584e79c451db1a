"""The profile REML criterion of the random-intercept model and its minimisation over ``lambda``.

See :mod:`~scalable_assoc.models.lmm` for the model and the method: the
criterion is evaluated from the size-aggregated cluster sums of
:mod:`~scalable_assoc.models.lmm_statistics` for all features at once, and
minimised by a grid over ``log10(lambda)``, bisection on the sign of its
analytic derivative, and a comparison with the boundary ``lambda = 0``.

Pure numpy/scipy: no Dask, no files, no pandas.
"""

from __future__ import annotations

import numpy as np

from scalable_assoc.models.lmm_statistics import ClusterStatistics

#: Search range and grid step of log10(lambda), lambda = sigma_u^2 / sigma_e^2.
#: Below 1e-8 the random intercept changes no estimate; an optimum at 1e8 means
#: no within-cluster residual variation, reported as not converged.
_LOG10_LAMBDA_RANGE = (-8.0, 8.0)
_GRID_STEP = 0.25
#: Bisection steps inside a bracket of two grid steps: 0.5 * 2^-50 ~ 1e-15 in log10(lambda).
_BISECTION_STEPS = 50
#: A REML deviance this much larger than lambda = 0's is a tie, resolved towards the boundary.
_BOUNDARY_TIE = 1e-9


class RemlCriterion:
    """The profile REML deviance of one exposure's fits, as a function of ``lambda`` per feature.

    Parameters
    ----------
    statistics:
        The size-aggregated cluster statistics of all ``m`` features of the block.
    take:
        ``(p,)`` the basis columns ``[Q, b_e]`` of this exposure's design.
    features:
        ``(f,)`` the features fitted.
    df:
        ``(f,)`` their residual degrees of freedom ``N_j - p``.
    """

    def __init__(self, statistics: ClusterStatistics, take: np.ndarray, features: np.ndarray, df: np.ndarray) -> None:
        s = statistics
        self.levels = s.levels.astype(np.float64)
        self.counts = s.counts[features]
        self.gram = s.gram[features][:, take][:, :, take]
        self.outer = np.broadcast_to(
            s.outer_shared[:, take][:, :, take], (features.size, *s.outer_shared.shape[:1], take.size, take.size)
        ).copy()
        is_masked = np.isin(features, s.masked)
        if is_masked.any():
            which = np.searchsorted(s.masked, features[is_masked])
            self.outer[is_masked] = s.outer_masked[which][:, :, take][:, :, :, take]
        self.cross = s.cross[features][:, :, take]
        self.squares = s.squares[features]
        self.projections = s.projections[features][:, take]
        self.sum_squares = s.sum_squares[features]
        self.df = df

    def system(self, ratio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``A = W'H^-1W`` (``(f, p, p)``) and ``b = W'H^-1y`` (``(f, p)``) at ``lambda = ratio`` (``(f,)``)."""
        weight = ratio[:, None] / (1.0 + ratio[:, None] * self.levels)  # (f, L)
        gram = self.gram - np.einsum("fl,flab->fab", weight, self.outer)
        right = self.projections - np.einsum("fl,fla->fa", weight, self.cross)
        return gram, right

    def deviance(self, ratio: np.ndarray) -> np.ndarray:
        """``(f,)`` profile REML deviance (up to a constant per feature); +inf where undefined."""
        weight = ratio[:, None] / (1.0 + ratio[:, None] * self.levels)
        gram, right = self.system(ratio)
        quadratic = self.sum_squares - np.einsum("fl,fl->f", weight, self.squares)
        sign, log_det_gram = np.linalg.slogdet(gram)
        solved = np.linalg.solve(np.where((sign > 0)[:, None, None], gram, np.eye(gram.shape[1])), right[:, :, None])[:, :, 0]
        residual = quadratic - np.einsum("fa,fa->f", right, solved)
        log_det_h = np.einsum("fl,fl->f", self.counts, np.log1p(ratio[:, None] * self.levels))
        with np.errstate(invalid="ignore", divide="ignore"):
            value = self.df * np.log(residual) + log_det_h + log_det_gram
        return np.where((sign > 0) & (residual > 0) & np.isfinite(value), value, np.inf)

    def slope(self, ratio: np.ndarray) -> np.ndarray:
        """``(f,)`` derivative of :meth:`deviance` with respect to ``lambda``; NaN where undefined.

        With ``w' = dw/dlambda = 1 / (1 + lambda n_c)^2``: ``A' = -sum w' S S'``,
        ``b' = -sum w' S T``, ``(y'H^-1y)' = -sum w' T^2``, and with ``x = A^-1 b``
        ``r' = (y'H^-1y)' - 2 b''x + x'A'x``, ``(log|A|)' = tr(A^-1 A')``,
        ``(log|H|)' = sum n_c / (1 + lambda n_c)``.
        """
        denominator = 1.0 + ratio[:, None] * self.levels  # (f, L)
        weight, weight_slope = ratio[:, None] / denominator, denominator**-2.0
        gram, right = self.system(ratio)
        gram_slope = -np.einsum("fl,flab->fab", weight_slope, self.outer)
        right_slope = -np.einsum("fl,fla->fa", weight_slope, self.cross)
        quadratic = self.sum_squares - np.einsum("fl,fl->f", weight, self.squares)
        quadratic_slope = -np.einsum("fl,fl->f", weight_slope, self.squares)
        sign, _ = np.linalg.slogdet(gram)
        inverse = np.linalg.inv(np.where((sign > 0)[:, None, None], gram, np.eye(gram.shape[1])))
        solved = np.einsum("fab,fb->fa", inverse, right)
        residual = quadratic - np.einsum("fa,fa->f", right, solved)
        residual_slope = (
            quadratic_slope - 2.0 * np.einsum("fa,fa->f", right_slope, solved) + np.einsum("fa,fab,fb->f", solved, gram_slope, solved)
        )
        log_det_gram_slope = np.einsum("fab,fba->f", inverse, gram_slope)
        log_det_h_slope = np.einsum("fl,fl->f", self.counts, self.levels / denominator)
        with np.errstate(invalid="ignore", divide="ignore"):
            value = self.df * residual_slope / residual + log_det_h_slope + log_det_gram_slope
        return np.where((sign > 0) & (residual > 0), value, np.nan)


def minimise_reml(criterion: RemlCriterion, singletons: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimise the REML criterion over ``lambda`` for every feature at once.

    Grid over log10(lambda), bisection on the derivative's sign between the
    best grid point's neighbours, then the boundary ``lambda = 0`` where it is
    as good.

    Parameters
    ----------
    criterion:
        The profile REML deviance of ``f`` features.
    singletons:
        ``(f,)`` bool, features whose clusters all have at most one member:
        their criterion does not depend on lambda, which is set to 0 (the OLS fit).

    Returns
    -------
    ratio:
        ``(f,)`` REML ``lambda = sigma_u^2 / sigma_e^2``.
    converged:
        ``(f,)`` bool, False where the optimum is at the top of the search
        range or the criterion is not finite.
    """
    n_features = singletons.size
    low, high = _LOG10_LAMBDA_RANGE
    grid = np.arange(low, high + _GRID_STEP / 2, _GRID_STEP)
    values = np.stack([criterion.deviance(np.full(n_features, 10.0**g)) for g in grid])  # (grid, f)
    best = np.argmin(values, axis=0)
    left = grid[np.maximum(best - 1, 0)]
    right = grid[np.minimum(best + 1, grid.size - 1)]
    # The best grid point is below both neighbours, so the deviance has a minimum
    # between them: bisect towards where its derivative turns positive.
    for _ in range(_BISECTION_STEPS):
        middle = (left + right) / 2.0
        rising = criterion.slope(10.0**middle) > 0
        left, right = np.where(rising, left, middle), np.where(rising, middle, right)
    position = (left + right) / 2.0
    value = criterion.deviance(10.0**position)
    # A NaN derivative (undefined criterion) stops nothing above; fall back to the grid's best.
    fallback = ~(value <= values[best, np.arange(n_features)])
    position = np.where(fallback, grid[best], position)
    value = np.where(fallback, values[best, np.arange(n_features)], value)
    ratio = 10.0**position
    at_boundary = criterion.deviance(np.zeros(n_features)) <= value + _BOUNDARY_TIE
    ratio = np.where(at_boundary | singletons, 0.0, ratio)
    converged = at_boundary | singletons | (np.isfinite(value) & (best < grid.size - 1))
    return ratio, converged
