"""Whether cohorts' exports can be combined: the analysis each ran, and the checks between them.

Every export records :func:`analysis_spec` of its plan (and its hash) in its
sidecar; :func:`check_compatible` refuses cohorts whose specs differ, or whose
set-dependent transforms ran over different feature sets, unless allowed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from scalable_assoc.errors import DataError
from scalable_assoc.plan.schema import OLS_MODELS, OlsOptions, Plan
from scalable_assoc.results.cohort_files import CohortFile

#: Transforms whose values depend on which features they run over (a sample's CLR mean, TSS/AST total).
SET_DEPENDENT_TRANSFORMS = ("clr", "tss", "ast")
#: Transforms that add the pseudocount.
PSEUDOCOUNT_TRANSFORMS = ("clr", "log")


def analysis_spec(plan: Plan) -> dict[str, Any]:
    """What must agree between cohorts for their estimates to be combined: the analysis, not the file paths.

    The OLS models' options (standard errors, p reference) appear only where
    they differ from the defaults, so cohorts that use none compare as before.

    Parameters
    ----------
    plan
        A cohort's plan.

    Returns
    -------
    dict
        JSON-ready: per layer its transform, filters and models; the exposures,
        adjustment sets, categorical covariates, cluster column and FDR families.
    """
    spec: dict[str, Any] = {
        "layers": {
            layer.name: {
                "transform": layer.preprocess.transform,
                "pseudocount": layer.preprocess.pseudocount,
                "min_prevalence": layer.preprocess.min_prevalence,
                "presence_threshold": layer.presence_threshold,
                "models": list(layer.models),
            }
            for layer in plan.layers
        },
        "exposures": {e.name: {"cases": e.cases, "controls": e.controls, "column": e.column} for e in plan.exposures},
        "adjustments": {name: list(columns) for name, columns in plan.adjustments.items()},
        "categorical": sorted(plan.categorical),
        "cluster": plan.cluster,
        "fdr_by": list(plan.fdr.by),
    }
    chosen = {model: asdict(getattr(plan, model)) for model in OLS_MODELS if getattr(plan, model) != OlsOptions()}
    if chosen:
        spec["ols_options"] = chosen
    return spec


def spec_hash(spec: dict[str, Any]) -> str:
    """Stable hash of an :func:`analysis_spec` (16 hex digits of its SHA-256)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_compatible(cohorts: Sequence[CohortFile], allow_mismatch: bool) -> list[str]:
    """Refuse cohorts whose analyses differ (transform, models, exposures, adjustments ...) or whose
    set-dependent transforms (CLR, TSS, AST) ran over different feature sets, unless allowed.

    Parameters
    ----------
    cohorts
        The opened files (at least one), each under its own cohort name.
    allow_mismatch
        Warn about differing analyses or feature sets instead of refusing them.

    Returns
    -------
    list of str
        Warnings: the differences when ``allow_mismatch``, and differing
        realised pseudocounts (never refused).

    Raises
    ------
    DataError
        Two files carry one cohort name, or (without ``allow_mismatch``) the cohorts differ.
    """
    names = [c.cohort for c in cohorts]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise DataError(
            f"cohort name(s) {', '.join(duplicated)} appear in more than one file; export each cohort under its own --cohort name"
        )
    first = cohorts[0]
    problems = []
    for other in cohorts[1:]:
        if other.sidecar["analysis_hash"] == first.sidecar["analysis_hash"]:
            continue
        a, b = first.sidecar["analysis"], other.sidecar["analysis"]
        differing = sorted(_differences(a, b))
        problems.append(
            f"{other.path} (cohort {other.cohort}) differs from {first.path} (cohort {first.cohort}) in " + ", ".join(differing[:8])
        )
    set_problems = _feature_set_problems(cohorts)
    if (problems or set_problems) and not allow_mismatch:
        parts = []
        if problems:
            parts.append("; ".join(problems) + ". Cohorts must run the same analysis (same transforms, models, exposures and adjustments)")
        if set_problems:
            parts.append(
                "; ".join(set_problems) + ". Run every cohort with the same feature list ('scalable-assoc run PLAN --features FILE', "
                "for example one cohort's results/features.parquet, or the plan key 'features') and export again"
            )
        raise DataError(". ".join(parts) + "; or pass --allow-mismatch to combine them anyway")
    return problems + set_problems + _pseudocount_warnings(cohorts)


def _layers(cohorts: Sequence[CohortFile]) -> list[str]:
    return list(dict.fromkeys(name for c in cohorts for name in c.sidecar.get("layers", {})))


def _transform(cohort: CohortFile, layer: str) -> str | None:
    return cohort.sidecar.get("analysis", {}).get("layers", {}).get(layer, {}).get("transform")


def _feature_set_problems(cohorts: Sequence[CohortFile]) -> list[str]:
    """One message per layer whose set-dependent transform ran over different feature sets in different cohorts."""
    problems = []
    for layer in _layers(cohorts):
        having = [c for c in cohorts if layer in c.sidecar.get("layers", {})]
        if len(having) < 2 or not any(_transform(c, layer) in SET_DEPENDENT_TRANSFORMS for c in having):
            continue
        groups: dict[str | None, list[CohortFile]] = {}
        for cohort in having:
            feature_set = cohort.sidecar["layers"][layer].get("transform_features") or {}
            groups.setdefault(feature_set.get("sha256"), []).append(cohort)
        if len(groups) < 2:
            continue
        described = []
        for digest, members in groups.items():
            who = ", ".join(c.cohort for c in members)
            if digest is None:
                described.append(f"{who}: not recorded (exported by an older version; export again)")
                continue
            feature_set = members[0].sidecar["layers"][layer]["transform_features"]
            described.append(f"{who}: {feature_set.get('features')} {feature_set.get('from', 'features')}, sha256 {digest[:12]}")
        transforms = "/".join(sorted({str(_transform(c, layer)) for c in having}))
        problems.append(
            f"layer '{layer}': cohorts {', '.join(c.cohort for c in having)} transformed ({transforms}) over different feature sets "
            f"({'; '.join(described)}), so their values and betas are on different scales"
        )
    return problems


def _pseudocount_warnings(cohorts: Sequence[CohortFile]) -> list[str]:
    """One warning per layer whose transform adds a pseudocount that differs between cohorts."""
    warnings = []
    for layer in _layers(cohorts):
        used = {
            c.cohort: c.sidecar["layers"][layer].get("pseudocount_used")
            for c in cohorts
            if layer in c.sidecar.get("layers", {}) and _transform(c, layer) in PSEUDOCOUNT_TRANSFORMS
        }
        values = [float(v) for v in used.values() if v is not None]
        if len(values) < 2 or np.allclose(values, values[0], rtol=1e-12, atol=0.0):
            continue
        listed = ", ".join(f"{name} {value:.3g}" for name, value in used.items() if value is not None)
        warnings.append(
            f"layer '{layer}': the realised pseudocounts differ between cohorts ({listed}); values of zero-heavy features "
            "depend on it, so their betas are not on one scale (a fixed number as preprocess.pseudocount in the plan makes them equal)"
        )
    return warnings


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if a == b else [prefix or "(root)"]
