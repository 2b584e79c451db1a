"""The per-task result table: kernel arrays for (analyses x features) to Arrow rows."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from scalable_assoc.models.fits import STATUS_TEXT, FitStatus, SlopeFits
from scalable_assoc.results.columns import PARTIAL_SCHEMA


def fits_to_table(
    layer: str,
    feature_ids: Sequence[str],
    labels: Sequence[tuple[str, str, str, str, str, bool]],
    fits: SlopeFits,
    design_problem: str | None,
) -> pa.Table:
    """Rows for ``k`` analyses x ``m`` features, analysis-major.

    ``labels`` holds, per analysis, ``(exposure, adjustment, model, covariates, analysis_id, binary)``.
    A design-level problem (collinear covariates) replaces the generic status text.
    """
    k, m = fits.beta.shape
    status_lookup = np.array([STATUS_TEXT[FitStatus(code)] for code in range(len(FitStatus))], dtype=object)
    if design_problem is not None:
        status_lookup[FitStatus.DESIGN_RANK_DEFICIENT] = design_problem
    binary = np.repeat(np.array([label[5] for label in labels], dtype=bool), m)
    n_cases = fits.n_cases.ravel()
    n_controls = fits.n_controls.ravel()
    columns = {
        "layer": pa.array([layer] * (k * m), pa.string()),
        "feature": pa.array(list(feature_ids) * k, pa.string()),
        "exposure": pa.array(np.repeat([label[0] for label in labels], m).tolist(), pa.string()),
        "adjustment": pa.array(np.repeat([label[1] for label in labels], m).tolist(), pa.string()),
        "model": pa.array(np.repeat([label[2] for label in labels], m).tolist(), pa.string()),
        "n": pa.array(fits.n.ravel(), pa.int64()),
        "n_cases": pa.array(n_cases, pa.int64(), mask=~binary | (n_cases < 0)),
        "n_controls": pa.array(n_controls, pa.int64(), mask=~binary | (n_controls < 0)),
        "beta": pa.array(fits.beta.ravel(), pa.float64(), from_pandas=True),
        "se": pa.array(fits.se.ravel(), pa.float64(), from_pandas=True),
        "t": pa.array(fits.t.ravel(), pa.float64(), from_pandas=True),
        "p": pa.array(fits.p.ravel(), pa.float64(), from_pandas=True),
        "status": pa.array(status_lookup[fits.status.ravel().astype(np.intp)].tolist(), pa.string()),
        "covariates": pa.array(np.repeat([label[3] for label in labels], m).tolist(), pa.string()),
        "analysis_id": pa.array(np.repeat([label[4] for label in labels], m).tolist(), pa.string()),
    }
    return pa.table(columns, schema=PARTIAL_SCHEMA)
