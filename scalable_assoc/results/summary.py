"""Adjustment summaries: does an association survive adjustment (for example for psychotropic drugs)?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def adjustment_summary(results: pd.DataFrame, adjustment_order: Sequence[str], alpha: float) -> pd.DataFrame:
    """One row per layer x feature x exposure x model, one column group per adjustment set.

    Columns: ``beta_<set>``, ``q_<set>``, ``significant_<set>`` (q < alpha) for
    every set; ``change_pct_<set>`` for every set after the first (base):
    ``100 * (beta_set - beta_base) / |beta_base|``; ``survives_all``: significant
    under the base set and under every other set.
    """
    keys = ["layer", "feature", "exposure", "model"]
    present = [a for a in adjustment_order if a in set(results["adjustment"])]
    wide = results.pivot_table(
        index=keys, columns="adjustment", values=["beta", "q"], aggfunc="first", sort=False, dropna=False
    )
    order = results[keys].drop_duplicates()
    wide = wide.reindex(pd.MultiIndex.from_frame(order))
    out = order.reset_index(drop=True)
    base = present[0] if present else None
    for adjustment in present:
        beta = wide[("beta", adjustment)].to_numpy(dtype=np.float64, na_value=np.nan) if ("beta", adjustment) in wide else np.full(len(out), np.nan)
        q = wide[("q", adjustment)].to_numpy(dtype=np.float64, na_value=np.nan) if ("q", adjustment) in wide else np.full(len(out), np.nan)
        out[f"beta_{adjustment}"] = beta
        out[f"q_{adjustment}"] = q
        out[f"significant_{adjustment}"] = q < alpha
    for adjustment in present[1:]:
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"change_pct_{adjustment}"] = 100.0 * (out[f"beta_{adjustment}"] - out[f"beta_{base}"]) / np.abs(out[f"beta_{base}"])
    if present:
        out["survives_all"] = np.logical_and.reduce([out[f"significant_{a}"].to_numpy() for a in present])
    return out


def survival_readout(summary: pd.DataFrame, adjustment_order: Sequence[str]) -> pd.DataFrame:
    """Per layer x exposure x model x later set: associations significant under the base set and how many stay significant."""
    present = [a for a in adjustment_order if f"significant_{a}" in summary.columns]
    if len(present) < 2:
        return pd.DataFrame(columns=["layer", "exposure", "model", "adjustment", "significant_base", "still_significant", "percent"])
    base = present[0]
    rows = []
    for (layer, exposure, model), group in summary.groupby(["layer", "exposure", "model"], sort=False):
        significant_base = group[f"significant_{base}"].to_numpy()
        for adjustment in present[1:]:
            kept = int((significant_base & group[f"significant_{adjustment}"].to_numpy()).sum())
            total = int(significant_base.sum())
            rows.append((layer, exposure, model, adjustment, total, kept, 100.0 * kept / total if total else np.nan))
    return pd.DataFrame(rows, columns=["layer", "exposure", "model", "adjustment", "significant_base", "still_significant", "percent"])
