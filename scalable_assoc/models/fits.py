"""What every model kernel returns: slopes with statuses, for features x exposures.

Pure numpy/scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np

from scalable_assoc.stats.tails import t_sf


class FitStatus(IntEnum):
    """Why a (feature, analysis) has or lacks an estimate. Stored as int8 in kernels."""

    OK = 0
    CONSTANT_FEATURE = 1
    TOO_FEW_VALUES = 2
    FEATURE_RANK_DEFICIENT = 3
    EXPOSURE_COLLINEAR = 4
    DESIGN_RANK_DEFICIENT = 5
    FIRTH = 6
    SEPARATION = 7
    NOT_CONVERGED = 8
    TOO_FEW_EVENTS = 9
    TOO_FEW_CARRIERS = 10
    RARE_IN_MODEL = 11


#: Text written to the ``status`` column for each code (the design-level code is
#: replaced by the design's own sentence naming the collinear covariates).
STATUS_TEXT: dict[FitStatus, str] = {
    FitStatus.OK: "ok",
    FitStatus.CONSTANT_FEATURE: "constant feature among these participants",
    FitStatus.TOO_FEW_VALUES: "too few non-missing values for the number of design columns",
    FitStatus.FEATURE_RANK_DEFICIENT: "rank-deficient design among this feature's non-missing participants",
    FitStatus.EXPOSURE_COLLINEAR: "exposure is constant or collinear with the covariates",
    FitStatus.DESIGN_RANK_DEFICIENT: "rank-deficient design",
    FitStatus.FIRTH: "separation: estimated with Firth's penalised likelihood",
    FitStatus.SEPARATION: "complete or quasi-complete separation: no finite maximum-likelihood estimate",
    FitStatus.NOT_CONVERGED: "the fit did not converge",
    FitStatus.TOO_FEW_EVENTS: "too few participants with or without the feature",
    FitStatus.TOO_FEW_CARRIERS: "too few participants with (or without) the feature among this model's participants (min_carriers)",
    FitStatus.RARE_IN_MODEL: "present in fewer than min_prevalence of this model's participants (prevalence_within: model)",
}

#: Statuses whose rows carry an estimate (and a p-value counted in its FDR family).
ESTIMATED = frozenset({FitStatus.OK, FitStatus.FIRTH})


@dataclass(frozen=True)
class SlopeFits:
    """Exposure slopes for ``k`` exposures x ``m`` features (every array ``(k, m)``).

    ``beta`` is the exposure coefficient (feature units per exposure unit for
    linear models, log odds for logistic ones), ``se`` its standard error,
    ``t = beta / se`` and ``p`` two-sided (Student's t with ``n - rank`` degrees
    of freedom for OLS, with ``G - 1`` (or the normal, on request) for
    cluster-robust OLS, the normal for Wald tests of likelihood models). Rows
    without an estimate have NaN statistics and a non-OK status.
    ``n_cases``/``n_controls`` count exposure == 1 / == 0 participants among
    those used (-1 where the exposure is not binary).
    """

    beta: np.ndarray
    se: np.ndarray
    t: np.ndarray
    p: np.ndarray
    n: np.ndarray
    n_cases: np.ndarray
    n_controls: np.ndarray
    status: np.ndarray

    def __post_init__(self) -> None:
        shape = self.beta.shape
        for name in ("se", "t", "p", "n", "n_cases", "n_controls", "status"):
            if getattr(self, name).shape != shape:
                raise ValueError(f"SlopeFits.{name} has shape {getattr(self, name).shape}, expected {shape}")


def two_sided_p(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """Two-sided Student-t p-values, ``2 * P(T_df > |t|)``, elementwise."""
    return 2.0 * t_sf(np.abs(t), df)


def withhold_rare_carriers(
    fits: SlopeFits,
    n_present: np.ndarray,
    min_carriers: int,
    min_prevalence: float = 0.0,
    count_absent: bool = True,
    n_present_cases: np.ndarray | None = None,
) -> SlopeFits:
    """Withdraw the estimate of every estimated row resting on too few carriers.

    A single carrier's association is not a finding (and identifies the
    carrier). ``n_present`` ``(k, m)`` counts the participants of each row's
    model that have the feature present; the row's ``n`` are its participants.
    An estimated row (status in :data:`ESTIMATED`) gets status
    ``TOO_FEW_CARRIERS`` when fewer than ``min_carriers`` participants have the
    feature (none included) or, with ``count_absent`` (models of all
    participants, not only carriers), between 1 and ``min_carriers - 1`` lack it
    (DataSHIELD's rule: no non-zero cell below the threshold); and ``RARE_IN_MODEL`` when the present fraction is
    below ``min_prevalence``. Its statistics become NaN, so it leaves its FDR family.

    ``n_present_cases`` ``(k, m)`` (binary exposures: carriers among the cases,
    -1 elsewhere) extends the cell rule to the feature presence x case/control
    table: a row is also withheld when any non-zero cell of present/absent x
    case/control is below ``min_carriers`` (without ``count_absent`` only the
    present x case/control cells, the absent participants not being in the model).
    """
    n_present = np.asarray(n_present, dtype=np.int64)
    if n_present.shape != fits.beta.shape:
        raise ValueError(f"n_present has shape {n_present.shape}, expected {fits.beta.shape}")
    estimated = np.isin(fits.status, [int(s) for s in ESTIMATED])
    present_cases = None
    if n_present_cases is not None:
        present_cases = np.asarray(n_present_cases, dtype=np.int64)
        if present_cases.shape != fits.beta.shape:
            raise ValueError(f"n_present_cases has shape {present_cases.shape}, expected {fits.beta.shape}")
    few = too_few_carriers(fits.n, n_present, min_carriers, count_absent, present_cases, fits.n_cases, fits.n_controls)
    with np.errstate(invalid="ignore", divide="ignore"):
        rare = n_present < min_prevalence * fits.n
    status = fits.status.copy()
    status[estimated & rare] = FitStatus.RARE_IN_MODEL
    status[estimated & few] = FitStatus.TOO_FEW_CARRIERS
    withdrawn = estimated & (few | rare)
    if not withdrawn.any():
        return fits

    def blank(values: np.ndarray) -> np.ndarray:
        return np.where(withdrawn, np.nan, values)

    return SlopeFits(blank(fits.beta), blank(fits.se), blank(fits.t), blank(fits.p), fits.n, fits.n_cases, fits.n_controls, status)


def too_few_carriers(
    n: np.ndarray,
    n_present: np.ndarray,
    threshold: int,
    count_absent: bool | np.ndarray = True,
    n_present_cases: np.ndarray | None = None,
    n_cases: np.ndarray | None = None,
    n_controls: np.ndarray | None = None,
) -> np.ndarray:
    """Rows resting on fewer than ``threshold`` participants with, or without, the feature (DataSHIELD's cell rule).

    A row is hit when fewer than ``threshold`` of its ``n`` participants have the
    feature (none included), or, with ``count_absent`` (models of all
    participants, not carriers only; a bool or a per-row bool array), between 1
    and ``threshold - 1`` lack it: no one without it is no cell to disclose and
    no problem for the fit (a pathway everyone carries). With
    ``n_present_cases`` (carriers among the cases; negative for rows that are
    not binary) the cells of presence x case/control count too: present x case,
    present x control and, with ``count_absent``, absent x case and absent x
    control; a non-zero one below ``threshold`` hits the row. All arguments
    broadcast together; returns a bool array.
    """
    absent_counts = np.asarray(count_absent, dtype=bool)

    def small(cell: np.ndarray) -> np.ndarray:
        return (cell > 0) & (cell < threshold)

    n_present = np.asarray(n_present)
    few = (n_present < threshold) | (absent_counts & small(np.asarray(n) - n_present))
    if n_present_cases is not None:
        if n_cases is None or n_controls is None:
            raise ValueError("the presence x case/control cells need n_cases and n_controls")
        binary = (np.asarray(n_cases) >= 0) & (np.asarray(n_present_cases) >= 0)
        present_controls = n_present - n_present_cases
        cells = (
            small(n_present_cases)
            | small(present_controls)
            | (absent_counts & (small(n_cases - n_present_cases) | small(n_controls - present_controls)))
        )
        few = few | (binary & cells)
    return few
