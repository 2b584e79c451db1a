"""Gathering chunk files into the results table, with BH FDR per family."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_assoc.results.columns import PARTIAL_SCHEMA, RESULT_COLUMNS, RESULT_SCHEMA
from scalable_assoc.stats.multitest import benjamini_hochberg_grouped


def read_chunks(paths: Sequence[Path]) -> pa.Table:
    """Concatenate chunk files (every one must exist and carry the partial schema)."""
    tables = [pq.read_table(path, schema=PARTIAL_SCHEMA) for path in paths]
    return pa.concat_tables(tables) if tables else PARTIAL_SCHEMA.empty_table()


def assemble_results(
    partial: pa.Table,
    layer_order: Sequence[str],
    exposure_order: Sequence[str],
    adjustment_order: Sequence[str],
    feature_order: dict[str, Sequence[str]],
    fdr_by: Sequence[str],
    model_order: Sequence[str] = ("lm",),
) -> pd.DataFrame:
    """Sort rows into plan order (layer, exposure, adjustment, model, feature) and add ``q``.

    The order does not depend on how features were chunked or which worker
    finished first, so results of any two runs compare row by row.
    """
    frame = partial.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    feature_rank = np.zeros(len(frame), dtype=np.int64)
    for layer, features in feature_order.items():
        rows = (frame["layer"] == layer).to_numpy()
        position = pd.Index(features).get_indexer(frame.loc[rows, "feature"])
        feature_rank[rows] = position
    keys = pd.DataFrame(
        {
            "layer": pd.Categorical(frame["layer"], categories=list(layer_order), ordered=True).codes,
            "exposure": pd.Categorical(frame["exposure"], categories=list(exposure_order), ordered=True).codes,
            "adjustment": pd.Categorical(frame["adjustment"], categories=list(adjustment_order), ordered=True).codes,
            "model": pd.Categorical(frame["model"], categories=list(model_order), ordered=True).codes,
            "feature": feature_rank,
        }
    )
    order = np.lexsort((keys["feature"], keys["model"], keys["adjustment"], keys["exposure"], keys["layer"]))
    frame = frame.iloc[order].reset_index(drop=True)
    frame["q"] = pd.array(family_q(frame, fdr_by), dtype="Float64")
    frame["q"] = frame["q"].mask(frame["p"].isna())
    return frame[[c.name for c in RESULT_COLUMNS]]


def family_q(frame: pd.DataFrame, by: Sequence[str], p_column: str = "p") -> np.ndarray:
    """Benjamini-Hochberg q-values within families of rows that share the values of ``by``.

    Columns of ``by`` that ``frame`` lacks are ignored (no column: one family).
    Missing p-values are left out of their family, as R's ``p.adjust`` does, and
    get NaN. Returns ``(len(frame),)`` float64.
    """
    columns = [c for c in by if c in frame.columns]
    family = frame.groupby(columns, sort=False).ngroup().to_numpy() if columns and len(frame) else np.zeros(len(frame), dtype=np.int64)
    p = frame[p_column].to_numpy(dtype=np.float64, na_value=np.nan)
    return np.where(np.isnan(p), np.nan, benjamini_hochberg_grouped(p, family))


def sorted_by_family_q(frame: pd.DataFrame, by: Sequence[str]) -> pd.DataFrame:
    """The rows of ``frame`` (in plan order) sorted by q within each FDR family of ``by``.

    Families keep the order in which they first appear (plan order); within a
    family rows go by q, then p, and rows without a p-value come last, in their
    plan order. Columns of ``by`` that ``frame`` lacks are ignored.
    """
    columns = [c for c in by if c in frame.columns]
    family = frame.groupby(columns, sort=False).ngroup().to_numpy() if columns and len(frame) else np.zeros(len(frame), dtype=np.int64)
    q = frame["q"].to_numpy(dtype=np.float64, na_value=np.nan)
    p = frame["p"].to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(p)
    # Ties keep plan order: the row position is the last key.
    order = np.lexsort((np.arange(len(frame)), np.where(missing, np.inf, p), np.where(np.isnan(q), np.inf, q), missing, family))
    return frame.iloc[order].reset_index(drop=True)


def results_table(frame: pd.DataFrame) -> pa.Table:
    """The results frame as an Arrow table with the registered schema."""
    return pa.Table.from_pandas(frame, schema=RESULT_SCHEMA, preserve_index=False)
