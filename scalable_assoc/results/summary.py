"""Adjustment summaries: does an association survive adjustment (for example for psychotropic drugs)?

With ``analyses:`` blocks in the plan an exposure need not run under every
adjustment set. Each layer x exposure x model is therefore compared with its
own base: the first adjustment set, in plan order, under which it ran. The
later sets compared with it are only those it ran under; a combination that
never ran is empty in the wide summary (never counted as "not significant")
and has no row in the survival readout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from scalable_assoc.results.gather import combined_codes, family_q, first_appearance

#: A layer x exposure x model: the unit whose adjustment sets are compared with its base.
GROUP_KEYS = ["layer", "exposure", "model"]
SURVIVAL_COLUMNS = ["layer", "exposure", "model", "adjustment", "significant_base", "still_significant", "percent"]


def sets_run(
    results: pd.DataFrame, adjustment_order: Sequence[str], factorised: dict[str, tuple[np.ndarray, int]] | None = None
) -> dict[tuple[str, str, str], list[str]]:
    """Per layer x exposure x model, in results order: the plan's adjustment sets it ran under, in plan order.

    The first set of each list is that group's base. ``factorised``: columns' codes already made (:func:`_row_keys`).
    """
    rank = {name: i for i, name in enumerate(adjustment_order)}
    groups: dict[tuple[str, str, str], list[str]] = {}
    columns = [*GROUP_KEYS, "adjustment"]
    first = first_appearance(_row_keys(results, columns, factorised))[1]  # drop_duplicates, on integer codes
    for layer, exposure, model, adjustment in results[columns].iloc[first].itertuples(index=False):
        if adjustment in rank:
            groups.setdefault((layer, exposure, model), []).append(adjustment)
    return {key: sorted(names, key=rank.__getitem__) for key, names in groups.items()}


def base_sets(frame: pd.DataFrame, runs: dict[tuple[str, str, str], list[str]]) -> np.ndarray:
    """Per row of ``frame`` (with the :data:`GROUP_KEYS` columns): the base set of its group, None if it never ran."""
    if not len(frame):
        return np.array([], dtype=object)
    bases = pd.DataFrame([(*key, names[0]) for key, names in runs.items()], columns=[*GROUP_KEYS, "base"])
    if not len(bases):
        return np.full(len(frame), None, dtype=object)
    return frame[GROUP_KEYS].merge(bases, on=GROUP_KEYS, how="left")["base"].to_numpy(dtype=object)


def _row_keys(frame: pd.DataFrame, columns: list[str], factorised: dict[str, tuple[np.ndarray, int]] | None = None) -> np.ndarray:
    """``(len(frame),)`` int64: one code per distinct combination of ``columns`` (missing values alike, as ``drop_duplicates`` has them).

    ``factorised`` keeps each column's ``(codes, number of values)`` for the next call on the same frame: a
    string column of 400,000 rows takes 20 ms to factorise, and the adjustment summary keys rows twice.
    """
    codes = {} if factorised is None else factorised
    for column in columns:
        if column not in codes:
            values, uniques = pd.factorize(frame[column], use_na_sentinel=False)
            codes[column] = (np.asarray(values, dtype=np.int64), len(uniques))
    return combined_codes([codes[column] for column in columns])


def adjustment_summary(results: pd.DataFrame, adjustment_order: Sequence[str], alpha: float) -> pd.DataFrame:
    """One row per layer x feature x exposure x model, one column group per adjustment set that ran.

    Columns: ``beta_<set>``, ``q_<set>``, ``significant_<set>`` (q < alpha) for
    every set; ``change_pct_<set>`` for every set that follows a base:
    ``100 * (beta_set - beta_base) / |beta_base|``; ``survives_all``:
    significant under the base set and under every other set the row ran under.
    The base of a row is the first set, in plan order, its layer x exposure x
    model ran under. Where a row never ran under a set, that set's columns are
    missing (``significant_<set>`` is then a nullable boolean); its base set's
    ``change_pct_<set>`` is missing too. A ``base`` column after ``model`` names
    each row's base set.
    """
    keys = ["layer", "feature", "exposure", "model"]
    factorised: dict[str, tuple[np.ndarray, int]] = {}  # layer, exposure and model are keys of both row keyings
    runs = sets_run(results, adjustment_order, factorised)
    ran_anywhere = {a for names in runs.values() for a in names}
    present = [a for a in adjustment_order if a in ran_anywhere]
    # Each row's output row: integer codes of its keys, not a MultiIndex of strings (400,000 rows at 100,000 features).
    row_of, first = first_appearance(_row_keys(results, keys, factorised))  # output rows in order of first appearance
    out = results[keys].iloc[first].reset_index(drop=True)
    n = len(out)
    base = base_sets(out, runs)
    # Always written, so a pipeline reading the file sees the same columns whatever the plan.
    out["base"] = base
    beta: dict[str, np.ndarray] = {}
    q_values: dict[str, np.ndarray] = {}
    ran: dict[str, np.ndarray] = {}
    all_beta = results["beta"].to_numpy(dtype=np.float64, na_value=np.nan)
    all_q = results["q"].to_numpy(dtype=np.float64, na_value=np.nan)
    for adjustment in present:
        selected = (results["adjustment"] == adjustment).to_numpy()
        position = row_of[selected]
        beta[adjustment] = np.full(n, np.nan)
        q = np.full(n, np.nan)
        ran[adjustment] = np.zeros(n, dtype=bool)
        beta[adjustment][position] = all_beta[selected]
        q[position] = all_q[selected]
        q_values[adjustment] = q
        ran[adjustment][position] = True
        significant = q < alpha
        out[f"beta_{adjustment}"] = beta[adjustment]
        out[f"q_{adjustment}"] = q
        if ran[adjustment].all():
            out[f"significant_{adjustment}"] = significant
        else:
            # Missing, not False, where the row never ran under the set: it was not tested there.
            flags = pd.array(significant, dtype="boolean")
            flags[~ran[adjustment]] = pd.NA
            out[f"significant_{adjustment}"] = flags
    base_beta = np.full(n, np.nan)
    for adjustment in present:
        is_base = base == adjustment
        base_beta[is_base] = beta[adjustment][is_base]
    for adjustment in present:
        later = ran[adjustment] & (base != adjustment)
        if later.any():
            with np.errstate(invalid="ignore", divide="ignore"):
                change = 100.0 * (beta[adjustment] - base_beta) / np.abs(base_beta)
            out[f"change_pct_{adjustment}"] = np.where(later, change, np.nan)
    if present:
        # Over the sets each row ran under (a set it never ran under does not count against it).
        out["survives_all"] = np.logical_and.reduce([(q_values[a] < alpha) | ~ran[a] for a in present])
    return out


def survival_readout(summary: pd.DataFrame, adjustment_order: Sequence[str]) -> pd.DataFrame:
    """Per layer x exposure x model x later set it ran under: associations significant under its base set and how many stay significant.

    The base is the group's first set, in plan order, with a result (the
    ``base`` column of :func:`adjustment_summary`); sets the group never ran
    under get no row. A ``base`` column after ``model`` names the base set.
    Groups are counted with integer codes (:func:`first_appearance`), in order of
    first appearance, as ``groupby(sort=False)`` has them.
    """
    present = [a for a in adjustment_order if f"significant_{a}" in summary.columns]
    columns = [*GROUP_KEYS, "base", *SURVIVAL_COLUMNS[3:]]
    if not present or not len(summary):
        return pd.DataFrame([], columns=columns)
    group, first = first_appearance(_row_keys(summary, GROUP_KEYS))
    n_groups = first.size
    significant: dict[str, np.ndarray] = {}
    ran_in_group: dict[str, np.ndarray] = {}
    for adjustment in present:
        flags = summary[f"significant_{adjustment}"]
        significant[adjustment] = flags.fillna(False).to_numpy(dtype=bool)
        ran_in_group[adjustment] = np.bincount(group[flags.notna().to_numpy()], minlength=n_groups) > 0
    counted: dict[tuple[str, str], np.ndarray] = {}

    def per_group(base: str, adjustment: str) -> np.ndarray:
        """``(groups,)`` rows significant under both sets (``base`` twice: under the base)."""
        if (base, adjustment) not in counted:
            both = significant[base] & significant[adjustment]
            counted[base, adjustment] = np.bincount(group, weights=both, minlength=n_groups).astype(np.int64)
        return counted[base, adjustment]

    rows = []
    for index, (layer, exposure, model) in enumerate(summary[GROUP_KEYS].iloc[first].itertuples(index=False)):
        ran = [a for a in present if ran_in_group[a][index]]
        if len(ran) < 2:
            continue
        base = ran[0]
        total = int(per_group(base, base)[index])
        for adjustment in ran[1:]:
            kept = int(per_group(base, adjustment)[index])
            rows.append((layer, exposure, model, base, adjustment, total, kept, 100.0 * kept / total if total else np.nan))
    return pd.DataFrame(rows, columns=columns)


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
