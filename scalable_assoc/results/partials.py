"""The per-task result table: kernel arrays for (analyses x features) to Arrow rows.

Built on the workers, from buffers (:mod:`scalable_assoc.results.arrow_arrays`):
``pyarrow.array`` would import pandas in each of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from scalable_assoc.models.fits import STATUS_TEXT, FitStatus, SlopeFits, withhold_rare_carriers
from scalable_assoc.models.lmm import VarianceComponents
from scalable_assoc.models.ols_terms import TermFits
from scalable_assoc.results.arrow_arrays import float64_array, int64_array, repeated_strings, strings_at, tiled_strings
from scalable_assoc.results.columns import COVARIATE_SCHEMA, PARTIAL_SCHEMA


class AnalysisLabels(NamedTuple):
    """What the rows of one analysis say about it, besides the statistics."""

    exposure: str
    adjustment: str
    model: str
    covariates: str  # metadata columns adjusted for, joined by '+'
    analysis_id: str
    binary: bool
    dropped: str = ""  # adjustment-set columns left out of the model, joined by '+'


def fits_to_table(
    layer: str,
    feature_ids: Sequence[str],
    labels: Sequence[AnalysisLabels],
    fits: SlopeFits,
    design_problem: str | None,
    components: VarianceComponents | None = None,
    n_present: np.ndarray | None = None,
    f_statistic: np.ndarray | None = None,
    n_present_cases: np.ndarray | None = None,
) -> pa.Table:
    """Rows for ``k`` analyses x ``m`` features, analysis-major.

    ``labels`` holds one :class:`AnalysisLabels` per analysis, in the order of the fits' rows.
    A design-level problem (collinear covariates) replaces the generic status text.
    ``components`` (mixed models only) fill ``cluster_variance``, ``residual_variance``
    and ``icc`` where the fit is OK; those columns are null everywhere else.
    ``n_present`` ``(k, m)`` counts each row's model participants with the feature
    present (null where not given).
    ``f_statistic`` (``(k, m)``, categorical exposures' omnibus rows only) likewise.
    ``n_present_cases`` ``(k, m)`` counts the carriers among the cases (null where
    not given, negative, or the exposure is not binary).
    """
    k, m = fits.beta.shape
    binary = np.repeat(np.array([label.binary for label in labels], dtype=bool), m)

    def repeated(values: list[str]) -> pa.Array:
        return repeated_strings(values, m)

    n_cases = fits.n_cases.ravel()
    n_controls = fits.n_controls.ravel()
    not_ok = fits.status.ravel() != FitStatus.OK

    def variance_column(values: np.ndarray | None) -> pa.Array:
        if values is None:
            return pa.nulls(k * m, pa.float64())
        if values.shape != (k, m):
            raise ValueError(f"variance components have shape {values.shape}, expected {(k, m)}")
        flat = values.ravel()
        return float64_array(flat, not_ok | ~np.isfinite(flat))

    columns = {
        "layer": repeated_strings([layer], k * m),
        "feature": tiled_strings(feature_ids, k),
        "exposure": repeated([label.exposure for label in labels]),
        "adjustment": repeated([label.adjustment for label in labels]),
        "model": repeated([label.model for label in labels]),
        "n": int64_array(fits.n),
        "n_cases": int64_array(n_cases, ~binary | (n_cases < 0)),
        "n_controls": int64_array(n_controls, ~binary | (n_controls < 0)),
        "n_present": pa.nulls(k * m, pa.int64()) if n_present is None else int64_array(np.asarray(n_present, dtype=np.int64)),
        "n_present_cases": _present_cases_column(n_present_cases, binary, k * m),
        "beta": float64_array(fits.beta, nan_is_null=True),
        "se": float64_array(fits.se, nan_is_null=True),
        "t": float64_array(fits.t, nan_is_null=True),
        "p": float64_array(fits.p, nan_is_null=True),
        "status": strings_at(_status_lookup(design_problem), fits.status.ravel()),
        "covariates": repeated([label.covariates for label in labels]),
        "dropped_covariates": repeated([label.dropped for label in labels]),
        "analysis_id": repeated([label.analysis_id for label in labels]),
        "cluster_variance": variance_column(None if components is None else components.sigma_u2),
        "residual_variance": variance_column(None if components is None else components.sigma_e2),
        "icc": variance_column(None if components is None else components.icc),
        "f_statistic": variance_column(f_statistic),
    }
    return pa.table(columns, schema=PARTIAL_SCHEMA)


def _present_cases_column(n_present_cases: np.ndarray | None, binary: np.ndarray, size: int) -> pa.Array:
    if n_present_cases is None:
        return pa.nulls(size, pa.int64())
    flat = np.asarray(n_present_cases, dtype=np.int64).ravel()
    return int64_array(flat, ~binary | (flat < 0))


def _status_lookup(design_problem: str | None) -> list[str]:
    """The ``status`` text of each code (position = :class:`FitStatus` value), the design's own sentence for its code."""
    lookup = [STATUS_TEXT[FitStatus(code)] for code in range(len(FitStatus))]
    if design_problem is not None:
        lookup[FitStatus.DESIGN_RANK_DEFICIENT] = design_problem
    return lookup


def categorical_to_table(
    layer: str,
    feature_ids: Sequence[str],
    label: AnalysisLabels,
    levels: Sequence[str],
    fits: TermFits,
    design_problem: str | None,
    n_present: np.ndarray | None = None,
    min_carriers: int = 0,
    min_prevalence: float = 0.0,
    count_absent: bool = True,
) -> pa.Table:
    """Rows of one categorical exposure: one per non-reference level (``exposure[level]``), then the omnibus row.

    ``levels`` start with the reference; ``fits`` hold the ``L - 1`` level dummies'
    coefficients and their joint F test. The omnibus row (exposure = the plan name)
    has null beta, se and t, the F test's p and ``f_statistic``. With ``n_present``
    ``(m,)`` (carriers among the model's participants) every row of a feature
    resting on too few carriers loses its estimate (:func:`withhold_rare_carriers`).
    """
    n_terms, m = fits.beta.shape
    if n_terms != len(levels) - 1:
        raise ValueError(f"{n_terms} level coefficients for {len(levels)} levels")
    no_cases = np.full((n_terms, m), -1, dtype=np.int64)
    per_level = SlopeFits(
        fits.beta,
        fits.se,
        fits.t,
        fits.p,
        np.broadcast_to(fits.n, (n_terms, m)).copy(),
        no_cases,
        no_cases.copy(),
        np.broadcast_to(fits.status, (n_terms, m)).copy(),
    )
    level_labels = [label._replace(exposure=f"{label.exposure}[{level}]") for level in levels[1:]]
    nothing = np.full((1, m), np.nan)
    omnibus = SlopeFits(
        nothing,
        nothing.copy(),
        nothing.copy(),
        fits.f_p[None].copy(),
        fits.n[None].copy(),
        no_cases[:1].copy(),
        no_cases[:1].copy(),
        fits.status[None].copy(),
    )
    carriers = None
    if n_present is not None:
        carriers = np.asarray(n_present, dtype=np.int64)
        per_level = withhold_rare_carriers(per_level, np.broadcast_to(carriers, (n_terms, m)), min_carriers, min_prevalence, count_absent)
        omnibus = withhold_rare_carriers(omnibus, carriers[None], min_carriers, min_prevalence, count_absent)
    return pa.concat_tables(
        [
            fits_to_table(
                layer,
                feature_ids,
                level_labels,
                per_level,
                design_problem,
                n_present=None if carriers is None else np.broadcast_to(carriers, (n_terms, m)),
            ),
            fits_to_table(
                layer,
                feature_ids,
                [label],
                omnibus,
                design_problem,
                f_statistic=fits.f_statistic[None],
                n_present=None if carriers is None else carriers[None],
            ),
        ]
    )


def covariate_table(
    layer: str,
    feature_ids: Sequence[str],
    label: AnalysisLabels,
    terms: Sequence[str],
    fits: TermFits,
    first: int,
    design_problem: str | None,
) -> pa.Table:
    """Coefficient rows of ``terms`` (rows ``first:`` of ``fits``) for every feature, term-major."""
    k, m = len(terms), len(feature_ids)
    take = slice(first, first + k)
    not_ok = np.broadcast_to(fits.status != FitStatus.OK, (k, m)).ravel()

    def statistic(values: np.ndarray) -> pa.Array:
        flat = values[take].ravel()
        return float64_array(flat, not_ok | ~np.isfinite(flat))

    columns = {
        "layer": repeated_strings([layer], k * m),
        "feature": tiled_strings(feature_ids, k),
        "exposure": repeated_strings([label.exposure], k * m),
        "adjustment": repeated_strings([label.adjustment], k * m),
        "model": repeated_strings([label.model], k * m),
        "term": repeated_strings(terms, m),
        "beta": statistic(fits.beta),
        "se": statistic(fits.se),
        "t": statistic(fits.t),
        "p": statistic(fits.p),
        "n": int64_array(np.tile(fits.n, k)),
        "status": strings_at(_status_lookup(design_problem), np.tile(fits.status, k)),
    }
    return pa.table(columns, schema=COVARIATE_SCHEMA)
