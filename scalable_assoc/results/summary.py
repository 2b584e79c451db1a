"""Adjustment summaries: does an association survive adjustment (for example for psychotropic drugs)?"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scalable_assoc.results.gather import family_q


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


#: The two parts of MaAsLin3's zero-aware model that a joint p-value combines.
JOINT_MODELS = ("lm_nonzero", "prevalence")


def joint_presence_abundance(results: pd.DataFrame, fdr_by: Sequence[str]) -> pd.DataFrame:
    """Per layer x feature x exposure x adjustment: one p-value for "any association", as MaAsLin3 reports it.

    ``p_joint`` is the Beta(1, 2) distribution function at the smaller of the
    abundance (``lm_nonzero``) and presence (``prevalence``) p-values,
    ``1 - (1 - min(p))^2``: the chance, under no association in either part and
    independent tests, that the smaller of two p-values is this small. Where one
    part has no estimate, ``p_joint`` is the other's p. ``q_joint`` is BH within
    the plan's ``fdr.by`` families (without ``model``). Empty when a layer lacks either model.
    """
    keys = ["layer", "feature", "exposure", "adjustment"]
    parts = {model: results[results["model"] == model].set_index(keys) for model in JOINT_MODELS}
    abundance, presence = parts["lm_nonzero"], parts["prevalence"]
    both = abundance.index.intersection(presence.index, sort=False)
    columns = [*keys, "beta_abundance", "p_abundance", "beta_prevalence", "p_prevalence", "p_joint", "q_joint"]
    if not len(both):
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame(index=both)
    frame["beta_abundance"] = abundance.loc[both, "beta"].to_numpy(dtype=np.float64, na_value=np.nan)
    frame["p_abundance"] = abundance.loc[both, "p"].to_numpy(dtype=np.float64, na_value=np.nan)
    frame["beta_prevalence"] = presence.loc[both, "beta"].to_numpy(dtype=np.float64, na_value=np.nan)
    frame["p_prevalence"] = presence.loc[both, "p"].to_numpy(dtype=np.float64, na_value=np.nan)
    smaller = np.fmin(frame["p_abundance"].to_numpy(), frame["p_prevalence"].to_numpy())  # NaN only where both are
    with np.errstate(invalid="ignore"):
        joint = 1.0 - (1.0 - smaller) ** 2
    one_part = frame["p_abundance"].isna().to_numpy() ^ frame["p_prevalence"].isna().to_numpy()
    frame["p_joint"] = np.where(one_part, smaller, joint)
    frame = frame.reset_index()
    frame["q_joint"] = family_q(frame, [c for c in fdr_by if c in keys], "p_joint")
    return frame[columns]
