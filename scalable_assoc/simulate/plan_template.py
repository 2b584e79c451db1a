"""The ``plan.yaml`` a simulated study folder holds, and its variants.

:data:`PLAN_YAML` is what :func:`~scalable_assoc.simulate.simulate_study` writes;
:func:`plan_yaml` appends opt-in models and a cluster column; a cohort of
:func:`~scalable_assoc.simulate.simulate_cohorts` gets :func:`cohort_plan_text`,
with :func:`with_min_cases` when an exposure group is small.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from scalable_assoc.simulate.participants import PLAN_EXPOSURES

PLAN_YAML = """\
# Study plan written by scalable_assoc.simulate (paths relative to this file).
name: lifelines-internalizing
data:
  metadata: metadata.tsv
  layers:
    species: species.tsv
    pathways: pathways.tsv
    gbm: gbm.tsv
preprocess:
  min_prevalence: 0.05
  transform: clr
  pseudocount: half_min
exposures:
  dysthymia: {cases: "dysthymia == 1", controls: "no_disorder == 1"}
  MDD:       {cases: "MDD == 1", controls: "no_disorder == 1"}
  AnyDep:    {cases: "AnyDep == 1", controls: "no_disorder == 1"}
  GAD:       {cases: "GAD == 1", controls: "no_disorder == 1"}
  AnyAnx:    {cases: "AnyAnx == 1", controls: "no_disorder == 1"}
  ssri:      {cases: "ssri == 1", controls: "ssri == 0"}
  any_ptd:   {cases: "any_ptd == 1", controls: "any_ptd == 0"}
covariates:
  categorical: [sex]
adjustments:
  base: [age, sex, bmi, bristol_stool, read_depth]
  ssri: [base, ssri]
  ptd:  [base, any_ptd]
  meds: [ptd, ppi, laxatives, metformin]
  gi:   [meds, ibs, fgid]
fdr: {method: bh, by: [layer, exposure, adjustment], alpha: 0.05}
"""
"""Exact text of ``plan.yaml``."""


def plan_yaml(models: Sequence[str] | None = None, cluster: str | None = None) -> str:
    """:data:`PLAN_YAML` with ``models: [...]`` and/or ``cluster: <column>`` lines appended.

    ``simulate_study`` always writes plain :data:`PLAN_YAML`; tests of the opt-in
    models write this text over it (e.g. ``plan_yaml(["lm", "lmm"], "family_id")``).
    With a cluster, the OLS models among ``models`` ask for cluster-robust standard
    errors (``lm: {se: cluster}``): families share their microbiome, and a cluster
    column no model uses would only be warned about.

    Parameters
    ----------
    models
        Models to list under ``models:`` (none: the line is left out, so ``lm`` runs).
    cluster
        Metadata column to name under ``cluster:`` (none: no such line).

    Returns
    -------
    str
        The plan text.
    """
    text = PLAN_YAML
    if models:
        text += f"models: [{', '.join(models)}]\n"
    if cluster:
        text += f"cluster: {cluster}\n"
        for model in ("lm", "lm_nonzero"):
            if model in (models or ("lm",)):
                text += f"{model}: {{se: cluster}}\n"
    return text


PLAN_YAML_WITH_MODELS = plan_yaml(["lm", "lm_nonzero", "prevalence"], "family_id")
"""The plan with ``models: [lm, lm_nonzero, prevalence]``, ``cluster: family_id`` and cluster-robust OLS standard errors."""

PLAN_MIN_CASES = 10  # the plan's default min_cases (scalable_assoc.plan.schema)

FEATURE_LIST_NAME = "features.tsv"
"""The shared feature list :func:`simulate_cohorts` writes into every cohort folder (``layer``, ``feature``)."""
COHORT_PLAN_FEATURES = (
    "# The features every cohort keeps, fits and transforms over (the CLR denominator): the same list\n"
    "# in every cohort, so their betas are on one scale (scalable-assoc run --features overrides it).\n"
    f"features: {FEATURE_LIST_NAME}\n"
)


def cohort_plan_text(name: str) -> str:
    """The plan of cohort ``name``: :data:`PLAN_YAML` renamed, reading the shared feature list.

    Parameters
    ----------
    name
        Cohort folder name (``cohort_1``...); the plan is named ``lifelines-internalizing-<name>``.

    Returns
    -------
    str
        The plan text, ending with ``features: features.tsv``.
    """
    return PLAN_YAML.replace("name: lifelines-internalizing\n", f"name: lifelines-internalizing-{name}\n") + COHORT_PLAN_FEATURES


def with_min_cases(plan_text: str, cohort: dict[str, np.ndarray]) -> str:
    """``plan_text`` plus ``min_cases: m`` when an exposure group of ``cohort`` has ``m < 10`` members.

    Parameters
    ----------
    plan_text
        The plan as it would be written.
    cohort
        Participant-level arrays (column -> values), as
        :func:`~scalable_assoc.simulate.participants.simulate_participants` returns.

    Returns
    -------
    str
        ``plan_text`` unchanged when every case and control group of :data:`PLAN_EXPOSURES`
        has at least :data:`PLAN_MIN_CASES` participants, else with ``min_cases`` the
        smallest group (at least 1), so the study runs as written.
    """
    fewest = min(
        int((cohort[column] == value).sum())
        for case_col, case_val, ctrl_col, ctrl_val in PLAN_EXPOSURES.values()
        for column, value in ((case_col, case_val), (ctrl_col, ctrl_val))
    )
    if fewest < PLAN_MIN_CASES:
        return plan_text + f"min_cases: {max(1, fewest)}\n"
    return plan_text
