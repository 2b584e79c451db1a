"""Cluster labels (families, households, projects): codes per participant and the warnings a plan's cluster column deserves."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from scalable_assoc.plan.schema import Plan

if TYPE_CHECKING:  # prepare.py imports the codes from here
    from scalable_assoc.engine.prepare import LayerWork, PreparedAnalysis

#: Fewer clusters than this in a model that uses them (lmm, cluster-robust OLS): a warning.
#: Cluster-robust standard errors and between-cluster variances are unreliable with few clusters.
FEW_CLUSTERS = 30


def _strip_label(value: object) -> object:
    if isinstance(value, str):
        return value.strip() or None
    return value


def cluster_labels(values: pd.Series) -> pd.Series:
    """Cluster labels as compared: text labels without surrounding whitespace.

    ``'kurokawa07 '`` is the cluster ``'kurokawa07'``: a stray space in a
    spreadsheet must not split a cluster in two. A label of whitespace only
    counts as no value. Labels that are not text (numbers) are kept as they are.
    """
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if not (values.dtype == object or pd.api.types.is_string_dtype(values.dtype)):
        return values
    return values.map(_strip_label, na_action="ignore").astype(object)


def merged_cluster_labels(values: pd.Series) -> dict[str, list[str]]:
    """The labels :func:`cluster_labels` made one cluster: each merged label -> the spellings found (two or more)."""
    spellings: dict[str, list[str]] = {}
    for label in pd.unique(values.dropna()):
        if isinstance(label, str) and label.strip():
            spellings.setdefault(label.strip(), []).append(label)
    return {label: sorted(found) for label, found in spellings.items() if len(found) > 1}


def cluster_codes(aligned: pd.DataFrame, column: str) -> np.ndarray:
    """Integer cluster codes per participant, labels compared as :func:`cluster_labels` does.

    A participant without a value is a cluster of its own.
    """
    codes, _ = pd.factorize(cluster_labels(aligned[column]))
    missing = codes < 0
    codes[missing] = codes.max(initial=-1) + 1 + np.arange(int(missing.sum()))
    return codes


def label_warnings(plan: Plan, values: pd.Series) -> list[str]:
    """Warnings about the cluster column's labels: spellings merged, labels of whitespace only."""
    warnings = []
    merged = merged_cluster_labels(values)
    if merged:
        shown = "; ".join(" = ".join(repr(s) for s in spellings) for spellings in list(merged.values())[:10])
        more = f" and {len(merged) - 10} more" if len(merged) > 10 else ""
        warnings.append(
            f"cluster column '{plan.cluster}': labels that differ only by surrounding whitespace are one cluster: {shown}{more}"
        )
    blank = int((cluster_labels(values).isna() & values.notna()).sum())
    if blank:
        warnings.append(
            f"cluster column '{plan.cluster}': {blank} participant(s) have a label of whitespace only, "
            "taken as no value (each a cluster of their own)"
        )
    return warnings


def few_cluster_warnings(plan: Plan, layers: list[LayerWork]) -> list[str]:
    """One warning per layer and model whose analyses use fewer than :data:`FEW_CLUSTERS` clusters."""
    warnings = []
    for layer in layers:
        by_model: dict[str, list[PreparedAnalysis]] = {}
        for analysis in layer.analyses:
            if analysis.n_clusters is not None and analysis.n_clusters < FEW_CLUSTERS:
                by_model.setdefault(analysis.key.model, []).append(analysis)
        for model, analyses in by_model.items():
            listed = ", ".join(f"{a.n_clusters} for {a.key.exposure}/{a.key.adjustment}" for a in analyses[:6])
            more = f", and {len(analyses) - 6} more" if len(analyses) > 6 else ""
            if model == "lmm":
                use, consequence = (
                    "random intercept",
                    "the between-cluster variance is poorly estimated from so few clusters, and so are lmm's standard errors",
                )
            else:
                use, consequence = (
                    "cluster-robust standard errors",
                    (
                        "cluster-robust standard errors are unreliable with so few clusters, even with p-values from t(G - 1); "
                        "compare with lmm, or report classical standard errors alongside"
                    ),
                )
            count = f"{len(analyses)} analysis has" if len(analyses) == 1 else f"{len(analyses)} analyses have"
            warnings.append(
                f"layer '{layer.spec.name}', model '{model}' ({use}): {count} fewer than {FEW_CLUSTERS} clusters "
                f"of '{plan.cluster}' ({listed}{more}); {consequence}"
            )
    return warnings
