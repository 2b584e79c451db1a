"""The per-task result table: kernel arrays for (analyses x features) to Arrow rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from scalable_assoc.models.fits import STATUS_TEXT, FitStatus, SlopeFits, withhold_rare_carriers
from scalable_assoc.models.lmm import VarianceComponents
from scalable_assoc.models.ols_terms import TermFits
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
    status_lookup = np.array([STATUS_TEXT[FitStatus(code)] for code in range(len(FitStatus))], dtype=object)
    if design_problem is not None:
        status_lookup[FitStatus.DESIGN_RANK_DEFICIENT] = design_problem
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
        return pa.array(flat, pa.float64(), mask=not_ok | ~np.isfinite(flat))

    columns = {
        "layer": repeated_strings([layer], k * m),
        "feature": pa.array(list(feature_ids) * k, pa.string()),
        "exposure": repeated([label.exposure for label in labels]),
        "adjustment": repeated([label.adjustment for label in labels]),
        "model": repeated([label.model for label in labels]),
        "n": pa.array(fits.n.ravel(), pa.int64()),
        "n_cases": pa.array(n_cases, pa.int64(), mask=~binary | (n_cases < 0)),
        "n_controls": pa.array(n_controls, pa.int64(), mask=~binary | (n_controls < 0)),
        "n_present": pa.nulls(k * m, pa.int64())
        if n_present is None
        else pa.array(np.asarray(n_present, dtype=np.int64).ravel(), pa.int64()),
        "n_present_cases": _present_cases_column(n_present_cases, binary, k * m),
        "beta": pa.array(fits.beta.ravel(), pa.float64(), from_pandas=True),
        "se": pa.array(fits.se.ravel(), pa.float64(), from_pandas=True),
        "t": pa.array(fits.t.ravel(), pa.float64(), from_pandas=True),
        "p": pa.array(fits.p.ravel(), pa.float64(), from_pandas=True),
        "status": pa.array(status_lookup.tolist(), pa.string()).take(pa.array(fits.status.ravel().astype(np.int32))),
        "covariates": repeated([label.covariates for label in labels]),
        "dropped_covariates": repeated([label.dropped for label in labels]),
        "analysis_id": repeated([label.analysis_id for label in labels]),
        "cluster_variance": variance_column(None if components is None else components.sigma_u2),
        "residual_variance": variance_column(None if components is None else components.sigma_e2),
        "icc": variance_column(None if components is None else components.icc),
        "f_statistic": variance_column(f_statistic),
    }
    return pa.table(columns, schema=PARTIAL_SCHEMA)


def repeated_strings(values: Sequence[str], times: int) -> pa.Array:
    """``(len(values) * times,)`` strings: each of ``values`` ``times`` times over, in order (``np.repeat``).

    Taken by Arrow from the few distinct strings: a Python list of a string per
    row cost about 0.2 ms per 546-row label column, six columns per analysis,
    several analyses per chunk, on the workers.
    """
    positions = np.repeat(np.arange(len(values), dtype=np.int32), times)
    return pa.array(list(values), pa.string()).take(pa.array(positions))


def _present_cases_column(n_present_cases: np.ndarray | None, binary: np.ndarray, size: int) -> pa.Array:
    if n_present_cases is None:
        return pa.nulls(size, pa.int64())
    flat = np.asarray(n_present_cases, dtype=np.int64).ravel()
    return pa.array(flat, pa.int64(), mask=~binary | (flat < 0))


def _status_text(status: np.ndarray, design_problem: str | None) -> list[str]:
    lookup = np.array([STATUS_TEXT[FitStatus(code)] for code in range(len(FitStatus))], dtype=object)
    if design_problem is not None:
        lookup[FitStatus.DESIGN_RANK_DEFICIENT] = design_problem
    return lookup[status.ravel().astype(np.intp)].tolist()  # type: ignore[no-any-return]


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
        return pa.array(flat, pa.float64(), mask=not_ok | ~np.isfinite(flat))

    columns = {
        "layer": pa.array([layer] * (k * m), pa.string()),
        "feature": pa.array(list(feature_ids) * k, pa.string()),
        "exposure": pa.array([label.exposure] * (k * m), pa.string()),
        "adjustment": pa.array([label.adjustment] * (k * m), pa.string()),
        "model": pa.array([label.model] * (k * m), pa.string()),
        "term": pa.array(np.repeat(list(terms), m).tolist(), pa.string()),
        "beta": statistic(fits.beta),
        "se": statistic(fits.se),
        "t": statistic(fits.t),
        "p": statistic(fits.p),
        "n": pa.array(np.tile(fits.n, k), pa.int64()),
        "status": pa.array(_status_text(np.tile(fits.status, k), design_problem), pa.string()),
    }
    return pa.table(columns, schema=COVARIATE_SCHEMA)
