"""The per-task result table: kernel arrays for (analyses x features) to Arrow rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from scalable_assoc.models.fits import STATUS_TEXT, FitStatus, SlopeFits
from scalable_assoc.models.lmm import VarianceComponents
from scalable_assoc.results.columns import PARTIAL_SCHEMA


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
) -> pa.Table:
    """Rows for ``k`` analyses x ``m`` features, analysis-major.

    ``labels`` holds one :class:`AnalysisLabels` per analysis, in the order of the fits' rows.
    A design-level problem (collinear covariates) replaces the generic status text.
    ``components`` (mixed models only) fill ``cluster_variance``, ``residual_variance``
    and ``icc`` where the fit is OK; those columns are null everywhere else.
    ``n_present`` ``(k, m)`` counts each row's model participants with the feature
    present (null where not given).
    """
    k, m = fits.beta.shape
    status_lookup = np.array([STATUS_TEXT[FitStatus(code)] for code in range(len(FitStatus))], dtype=object)
    if design_problem is not None:
        status_lookup[FitStatus.DESIGN_RANK_DEFICIENT] = design_problem
    binary = np.repeat(np.array([label.binary for label in labels], dtype=bool), m)

    def repeated(values: list[str]) -> pa.Array:
        return pa.array(np.repeat(values, m).tolist(), pa.string())

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
        "layer": pa.array([layer] * (k * m), pa.string()),
        "feature": pa.array(list(feature_ids) * k, pa.string()),
        "exposure": repeated([label.exposure for label in labels]),
        "adjustment": repeated([label.adjustment for label in labels]),
        "model": repeated([label.model for label in labels]),
        "n": pa.array(fits.n.ravel(), pa.int64()),
        "n_cases": pa.array(n_cases, pa.int64(), mask=~binary | (n_cases < 0)),
        "n_controls": pa.array(n_controls, pa.int64(), mask=~binary | (n_controls < 0)),
        "n_present": pa.nulls(k * m, pa.int64()) if n_present is None else pa.array(np.asarray(n_present, dtype=np.int64).ravel(), pa.int64()),
        "beta": pa.array(fits.beta.ravel(), pa.float64(), from_pandas=True),
        "se": pa.array(fits.se.ravel(), pa.float64(), from_pandas=True),
        "t": pa.array(fits.t.ravel(), pa.float64(), from_pandas=True),
        "p": pa.array(fits.p.ravel(), pa.float64(), from_pandas=True),
        "status": pa.array(status_lookup[fits.status.ravel().astype(np.intp)].tolist(), pa.string()),
        "covariates": repeated([label.covariates for label in labels]),
        "dropped_covariates": repeated([label.dropped for label in labels]),
        "analysis_id": repeated([label.analysis_id for label in labels]),
        "cluster_variance": variance_column(None if components is None else components.sigma_u2),
        "residual_variance": variance_column(None if components is None else components.sigma_e2),
        "icc": variance_column(None if components is None else components.icc),
    }
    return pa.table(columns, schema=PARTIAL_SCHEMA)
