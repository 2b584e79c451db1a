"""Disclosure control: which rows of a run may leave the cohort, and why the others are withheld.

The rules (DataSHIELD-style, configurable by :class:`DisclosureRules`) are
described in :mod:`scalable_assoc.results.sumstats`. Every function here
returns, besides the rows that may leave, the counts of those withheld by
reason, which the sidecar records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scalable_assoc.errors import UserInputError
from scalable_assoc.models.fits import too_few_carriers
from scalable_assoc.results.run_outputs import RunOutputs
from scalable_assoc.results.sumstats_format import SUMMARY_COLUMNS


@dataclass(frozen=True)
class DisclosureRules:
    """Which rows may leave the cohort; defaults are DataSHIELD's.

    ``min_cases`` (``sumstats --min-cases``, default 0: off) also withholds rows
    with fewer cases or controls than that: a cohort that ran with a lower
    ``run --min-cases`` keeps its small groups out of the consortium's files.
    """

    min_cell_count: int = 3
    max_parameter_fraction: float = 0.33
    min_cases: int = 0

    def __post_init__(self) -> None:
        if self.min_cell_count < 0:
            raise UserInputError(f"--min-cell-count must be >= 0, got {self.min_cell_count}")
        if self.min_cases < 0:
            raise UserInputError(f"--min-cases must be >= 0, got {self.min_cases}")
        if not 0 < self.max_parameter_fraction <= 1:
            raise UserInputError(f"--max-parameter-fraction must be in (0, 1], got {self.max_parameter_fraction}")


def carrier_reason(results: pd.DataFrame, rules: DisclosureRules) -> np.ndarray:
    """Per results row: '' or why its carrier counts keep it from leaving the cohort.

    Read from the run's columns ``n, n_cases, n_controls, n_present,
    n_present_cases`` and ``model``: fewer than ``min_cell_count`` participants
    with the feature; 1 .. ``min_cell_count - 1`` without it (not ``lm_nonzero``,
    whose participants all have it); for a binary exposure, a non-zero cell of
    present/absent x case/control below ``min_cell_count``. Rows whose counts
    were not recorded (results of an older version) are withheld too.

    Parameters
    ----------
    results
        Rows of a run's ``results.parquet`` (``r`` rows).
    rules
        The disclosure rules (``min_cell_count`` is used).

    Returns
    -------
    numpy.ndarray
        ``(r,)`` object array of reasons, ``''`` where the row may leave.
    """
    k = rules.min_cell_count
    n = results["n"].to_numpy(dtype=np.float64, na_value=np.nan)
    cases = results["n_cases"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    controls = results["n_controls"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    present_column = results["n_present"] if "n_present" in results else pd.Series(np.nan, index=results.index)
    present_cases_column = results["n_present_cases"] if "n_present_cases" in results else pd.Series(np.nan, index=results.index)
    present = present_column.to_numpy(dtype=np.float64, na_value=np.nan)
    present_cases = present_cases_column.to_numpy(dtype=np.float64, na_value=np.nan)
    unknown = np.isnan(present) | np.isnan(n) | ((cases >= 0) & np.isnan(present_cases))
    present_counts = np.nan_to_num(present, nan=0).astype(np.int64)
    participants = np.nan_to_num(n, nan=0).astype(np.int64)
    present_case_counts = np.nan_to_num(present_cases, nan=-1).astype(np.int64)
    # lm_nonzero's participants all carry the feature: only the present cells count there.
    with_absent = (results["model"] != "lm_nonzero").to_numpy()
    few = too_few_carriers(participants, present_counts, k, with_absent, present_case_counts, cases, controls)
    reason = np.full(len(results), "", dtype=object)
    reason[few] = f"fewer than {k} participants with or without the feature (overall or among cases or controls)"
    reason[unknown] = "carrier counts not recorded (results of an older version; run again)"
    return reason


def _withheld_reason(
    n: np.ndarray,
    cases: np.ndarray,
    controls: np.ndarray,
    parameters: np.ndarray,
    rules: DisclosureRules,
    carriers: np.ndarray | None = None,
) -> np.ndarray:
    """Per row: '' (may leave) or the rule it breaks.

    Disclosure rules first (cases, then controls, then ``carriers``: the
    reasons of :func:`carrier_reason`), then ``--min-cases`` (cases, then
    controls), then parameters. ``cases``/``controls`` are -1 for continuous
    exposures (only the parameter and carrier rules apply).
    """
    reason = np.full(n.shape, "", dtype=object)
    too_many = parameters > rules.max_parameter_fraction * n
    reason[too_many] = f"model parameters above {rules.max_parameter_fraction:g} x n"
    reason[(controls >= 0) & (controls < rules.min_cases)] = f"fewer than {rules.min_cases} controls (--min-cases)"
    reason[(cases >= 0) & (cases < rules.min_cases)] = f"fewer than {rules.min_cases} cases (--min-cases)"
    if carriers is not None:
        reason[carriers != ""] = carriers[carriers != ""]
    reason[(controls >= 0) & (controls < rules.min_cell_count)] = f"fewer than {rules.min_cell_count} controls"
    reason[(cases >= 0) & (cases < rules.min_cell_count)] = f"fewer than {rules.min_cell_count} cases"
    return reason


def _counts(reasons: np.ndarray) -> dict[str, int]:
    values, counts = np.unique(reasons[reasons != ""].astype(str), return_counts=True)
    return {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def summary_table(run: RunOutputs, rules: DisclosureRules) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The rows that may leave, and what was withheld and why.

    Parameters
    ----------
    run
        What :func:`~scalable_assoc.results.run_outputs.read_run` read.
    rules
        The disclosure rules.

    Returns
    -------
    summary : pandas.DataFrame
        The estimated rows that pass every rule, columns :data:`SUMMARY_COLUMNS`
        (``prevalence`` blanked where it rests on too few participants).
    report : dict
        Row counts: in the run, without estimate, withheld (and by reason),
        exported, and features whose prevalence was blanked.
    """
    results = run.results
    parameters_by_analysis = {a["analysis_id"]: a["parameters"] for a in run.manifest["analyses"]}
    estimated = results["p"].notna().to_numpy()
    frame = results[estimated].reset_index(drop=True)
    n = frame["n"].to_numpy(dtype=np.int64)
    cases = frame["n_cases"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    controls = frame["n_controls"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)
    parameters = frame["analysis_id"].map(parameters_by_analysis).to_numpy(dtype=np.int64)
    reasons = _withheld_reason(n, cases, controls, parameters, rules, carrier_reason(frame, rules))
    frame = frame[reasons == ""].reset_index(drop=True)
    features = run.features
    blank = (features["n_present"] < rules.min_cell_count) | (features["n_observed"] - features["n_present"] < rules.min_cell_count)
    prevalence = features["prevalence"].where(~blank)
    lookup = pd.Series(prevalence.to_numpy(), index=pd.MultiIndex.from_frame(features[["layer", "feature"]]))
    frame["prevalence"] = lookup.reindex(pd.MultiIndex.from_frame(frame[["layer", "feature"]])).to_numpy()
    report = {
        "rows_in_run": int(len(results)),
        "rows_without_estimate": int((~estimated).sum()),
        "rows_withheld": int((reasons != "").sum()),
        "withheld_by_reason": _counts(reasons),
        "rows_exported": int(len(frame)),
        "prevalence_blanked_features": int(blank.sum()),
    }
    return frame[list(SUMMARY_COLUMNS)], report


def sufficient_carrier_reason(table: pa.Table, results: pd.DataFrame, rules: DisclosureRules) -> np.ndarray:
    """:func:`carrier_reason` of each cross-product row, from the run's ``lm`` row of the same (layer, analysis, feature).

    A cross-product row without such a results row is withheld (its carriers are unknown).

    Parameters
    ----------
    table
        Cross-product rows (:data:`~scalable_assoc.results.sumstats_format.SUFFICIENT_SCHEMA`), ``r`` of them.
    results
        The run's ``results.parquet``.
    rules
        The disclosure rules.

    Returns
    -------
    numpy.ndarray
        ``(r,)`` object array of reasons, ``''`` where the row may leave.
    """
    keys = ["layer", "analysis_id", "feature"]
    linear = results[results["model"] == "lm"]
    reasons = pd.Series(carrier_reason(linear, rules), index=pd.MultiIndex.from_frame(linear[keys].astype(str)))
    # one reason per key (a key repeated would be a categorical exposure's rows, which have no cross-products)
    reasons = reasons[~reasons.index.duplicated(keep="first")]
    wanted = pd.MultiIndex.from_arrays([table.column(key).to_pylist() for key in keys])
    found = reasons.reindex(wanted)
    return found.fillna("carrier counts not recorded (results of an older version; run again)").to_numpy(dtype=object)


def disclose_sufficient(
    table: pa.Table, manifest: dict[str, Any], rules: DisclosureRules, results: pd.DataFrame | None = None
) -> tuple[pa.Table, dict[str, Any]]:
    """The cross-product rows that may leave (same rules as the summary rows), sorted by key.

    ``results`` (the run's ``results.parquet``) gives the carrier counts of the
    carrier rule (:func:`carrier_reason`); without it every row is withheld,
    since a cross-product row alone cannot show it rests on enough carriers.

    Parameters
    ----------
    table
        Cross-product rows (:data:`~scalable_assoc.results.sumstats_format.SUFFICIENT_SCHEMA`).
    manifest
        The run's manifest (each analysis' number of parameters).
    rules
        The disclosure rules.
    results
        The run's ``results.parquet``, or None.

    Returns
    -------
    kept : pyarrow.Table
        The rows that may leave, sorted by layer, exposure, adjustment and feature.
    report : dict
        Row counts: all, without estimate, withheld (and by reason), exported.
    """
    parameters_by_analysis = {a["analysis_id"]: a["parameters"] for a in manifest["analyses"]}
    n = table.column("n").to_numpy(zero_copy_only=False)
    cases = table.column("n_cases").fill_null(-1).to_numpy(zero_copy_only=False)
    controls = table.column("n_controls").fill_null(-1).to_numpy(zero_copy_only=False)
    parameters = np.array([parameters_by_analysis[a] for a in table.column("analysis_id").to_pylist()], dtype=np.int64)
    if results is None:
        carriers = np.full(table.num_rows, "carrier counts not given (pass the run's results)", dtype=object)
    else:
        carriers = sufficient_carrier_reason(table, results, rules)
    reasons = _withheld_reason(n, cases, controls, parameters, rules, carriers)
    usable = ~np.isnan(pc.fill_null(table.column("yy"), np.nan).to_numpy(zero_copy_only=False))
    keep = (reasons == "") & usable
    kept = table.filter(pa.array(keep)).sort_by(
        [("layer", "ascending"), ("exposure", "ascending"), ("adjustment", "ascending"), ("feature", "ascending")]
    )
    report = {
        "rows": int(table.num_rows),
        "rows_without_estimate": int((~usable).sum()),
        "rows_withheld": int((reasons != "").sum()),
        "withheld_by_reason": _counts(reasons),
        "rows_exported": int(kept.num_rows),
    }
    return kept, report
