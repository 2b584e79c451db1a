"""What the summary-statistics files hold: their format tag, columns and names.

A cohort's export is three files: the summary rows (``cohort.parquet``,
:data:`SUMMARY_COLUMNS`), optionally the ``lm`` cross-products
(``cohort.sufficient.parquet``, :data:`SUFFICIENT_SCHEMA`) and the sidecar
(``cohort.json``) that lists both with their checksums.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from scalable_assoc.models.pooled import CrossProducts
from scalable_assoc.results.arrow_arrays import float64_array, int64_array, repeated_strings, tiled_strings

#: The sidecar's ``format``: files of another format are refused.
FORMAT = "scalable_assoc.sumstats/1"

#: Columns of the summary-statistics file, in order.
SUMMARY_COLUMNS = ("layer", "feature", "exposure", "adjustment", "model", "beta", "se", "p", "n", "n_cases", "n_controls", "prevalence")

#: Rows of the sufficient-statistics file: one per (lm analysis, feature).
SUFFICIENT_SCHEMA = pa.schema(
    [
        pa.field("layer", pa.string()),
        pa.field("feature", pa.string()),
        pa.field("exposure", pa.string()),
        pa.field("adjustment", pa.string()),
        pa.field("analysis_id", pa.string()),
        pa.field("n", pa.int64()),
        pa.field("n_cases", pa.int64()),
        pa.field("n_controls", pa.int64()),
        # exposure first, then covariate columns (every categorical level as a dummy)
        pa.field("terms", pa.list_(pa.string())),
        # upper triangle of the centred Z'Z (row-major, numpy triu_indices order)
        pa.field("zz", pa.list_(pa.float64())),
        pa.field("zy", pa.list_(pa.float64())),
        pa.field("yy", pa.float64()),
    ]
)


def cross_products_table(
    layer: str,
    feature_ids: Sequence[str],
    exposure: str,
    adjustment: str,
    analysis_id: str,
    terms: tuple[str, ...],
    products: CrossProducts,
) -> pa.Table:
    """One analysis' cross-products for ``m`` features as rows of :data:`SUFFICIENT_SCHEMA`.

    Parameters
    ----------
    layer, exposure, adjustment, analysis_id
        The analysis the rows belong to (repeated on every row).
    feature_ids
        The ``m`` features, in the order of ``products``' rows.
    terms
        The ``c`` columns of the design: ``"exposure"``, then the covariate columns.
    products
        Centred cross-products of the ``m`` features: ``zz`` ``(m, c (c + 1) / 2)``
        (packed upper triangles), ``zy`` ``(m, c)``, ``yy``, ``n``, ``n_cases``,
        ``n_controls`` ``(m,)`` (cases and controls -1 for a continuous exposure).

    Returns
    -------
    pyarrow.Table
        ``m`` rows of :data:`SUFFICIENT_SCHEMA`; case and control counts null for a continuous exposure.
    """
    m = len(feature_ids)
    q = products.zz.shape[1]
    c = len(terms)

    def lists_of(values: pa.Array, width: int) -> pa.Array:
        offsets = np.arange(0, (m + 1) * width, width, dtype=np.int32)
        return pa.ListArray.from_arrays(pa.Array.from_buffers(pa.int32(), m + 1, [None, pa.py_buffer(offsets)]), values)

    not_binary = products.n_cases < 0
    # Built from buffers (results.arrow_arrays), not by pyarrow.array: this runs in the workers' tasks, where
    # pyarrow.array's first call would import pandas.
    columns = {
        "layer": repeated_strings([layer], m),
        "feature": tiled_strings(list(feature_ids), 1),
        "exposure": repeated_strings([exposure], m),
        "adjustment": repeated_strings([adjustment], m),
        "analysis_id": repeated_strings([analysis_id], m),
        "n": int64_array(products.n),
        "n_cases": int64_array(products.n_cases, null=not_binary),
        "n_controls": int64_array(products.n_controls, null=not_binary),
        "terms": lists_of(tiled_strings(list(terms), m), c),
        "zz": lists_of(float64_array(products.zz), q),
        "zy": lists_of(float64_array(products.zy), c),
        "yy": float64_array(products.yy, nan_is_null=True),
    }
    return pa.Table.from_arrays(list(columns.values()), schema=SUFFICIENT_SCHEMA)


def sidecar_path(path: Path) -> Path:
    """``cohort.parquet`` -> ``cohort.json``."""
    return path.with_suffix(".json")


def sufficient_path(path: Path) -> Path:
    """``cohort.parquet`` -> ``cohort.sufficient.parquet``."""
    return path.with_name(path.stem + ".sufficient.parquet")
