"""The simulated cohort: participants, disorders, covariates, medication and families.

The design (case and control counts, comorbidity) is exact at the reference size of
7,656 participants and scales proportionally, with at least 5 cases per disorder.
:func:`term_matrix` turns a cohort into the latent drivers of the microbiome (the
``term`` of the generative model in the :mod:`scalable_assoc.simulate` docstring).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from scalable_assoc.errors import UserInputError

# --------------------------------------------------------------------------------------
# Cohort shape.  Counts are for the reference cohort of 7,656 participants and are
# scaled proportionally for other sizes.
# --------------------------------------------------------------------------------------
_REF_PARTICIPANTS = 7656
_REF_CONTROLS = 5522
# Depression cells: AnyDep = 40 + 210 + 40 = 290, dysthymia = 80, MDD = 250.
_REF_DEP_CELLS = {"dys_only": 40, "mdd_only": 210, "dys_mdd": 40}
# Anxiety cells: AnyAnx = 330, GAD = 150, social_phobia = 110, panic = 80.
_REF_ANX_CELLS = {"gad": 140, "sp": 105, "panic": 75, "gad_sp": 5, "gad_panic": 5}
# AnyDep & AnyAnx; union = 290 + 330 - 129 = 491 participants with any disorder.
_REF_COMORBID = 129
_MIN_CASES = 5

DISORDERS: tuple[str, ...] = (
    "dysthymia",
    "MDD",
    "AnyDep",
    "GAD",
    "social_phobia",
    "panic",
    "AnyAnx",
)
"""The seven 0/1 disorder columns of ``metadata.tsv``."""

# exposure -> (case column, case value, control column, control value)
PLAN_EXPOSURES: dict[str, tuple[str, int, str, int]] = {
    "dysthymia": ("dysthymia", 1, "no_disorder", 1),
    "MDD": ("MDD", 1, "no_disorder", 1),
    "AnyDep": ("AnyDep", 1, "no_disorder", 1),
    "GAD": ("GAD", 1, "no_disorder", 1),
    "AnyAnx": ("AnyAnx", 1, "no_disorder", 1),
    "ssri": ("ssri", 1, "ssri", 0),
    "any_ptd": ("any_ptd", 1, "any_ptd", 0),
}
"""Exposures of ``plan.yaml`` as simple equality selections (used to compute truth)."""

DISORDER_EXPOSURES = ("dysthymia", "MDD", "AnyDep", "GAD", "AnyAnx")
"""The plan exposures that contrast disorder terms (the others contrast drug terms)."""

# Latent drivers of the microbiome (columns of the term matrix, rows of B).
TERMS: tuple[str, ...] = (
    "AnyDep",
    "MDD",
    "AnyAnx",  # disorder terms
    "ssri",
    "any_ptd",  # psychotropic drug terms
    "ppi",
    "laxatives",
    "metformin",  # other medication
    "bmi",
    "bristol_stool",
    "age",
    "sex",  # covariates (standardised)
)
TERM_INDEX = {name: k for k, name in enumerate(TERMS)}
DISORDER_TERMS = ("AnyDep", "MDD", "AnyAnx")
DRUG_TERMS = ("ssri", "any_ptd")

FAMILY_SIZE_PROBABILITIES: dict[int, float] = {1: 0.40, 2: 0.32, 3: 0.13, 4: 0.10, 5: 0.05}
"""Family size -> probability per family (mean 2.08: ~3,700 families at 7,656).

The last family drawn is cut to fit the cohort, so it may be smaller."""


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (``round`` would round halves to even).

    Parameters
    ----------
    x
        The value.

    Returns
    -------
    int
        ``floor(x + 0.5)``.
    """
    return int(math.floor(x + 0.5))


def _cohort_counts(participants: int) -> dict[str, int]:
    """Cell counts of the cohort design for ``participants`` (exact at 7,656)."""
    f = participants / _REF_PARTICIPANTS
    dep = {k: round_half_up(v * f) for k, v in _REF_DEP_CELLS.items()}
    anx = {k: round_half_up(v * f) for k, v in _REF_ANX_CELLS.items()}
    # Keep every disorder at >= _MIN_CASES by topping up its single-disorder cell.
    dep["dys_only"] += max(0, _MIN_CASES - (dep["dys_only"] + dep["dys_mdd"]))
    dep["mdd_only"] += max(0, _MIN_CASES - (dep["mdd_only"] + dep["dys_mdd"]))
    anx["gad"] += max(0, _MIN_CASES - (anx["gad"] + anx["gad_sp"] + anx["gad_panic"]))
    anx["sp"] += max(0, _MIN_CASES - (anx["sp"] + anx["gad_sp"]))
    anx["panic"] += max(0, _MIN_CASES - (anx["panic"] + anx["gad_panic"]))
    n_dep = sum(dep.values())
    n_anx = sum(anx.values())
    comorbid = min(round_half_up(_REF_COMORBID * f), n_dep, n_anx)
    n_cases = n_dep + n_anx - comorbid
    n_controls = round_half_up(_REF_CONTROLS * f)
    n_other = participants - n_controls - n_cases
    if n_other < 0:
        n_controls += n_other
        n_other = 0
    if n_controls < 2:
        raise UserInputError(
            f"participants={participants} is too small to hold the minimum of "
            f"{_MIN_CASES} cases per disorder plus controls; use at least 100."
        )
    return {
        **dep,
        **anx,
        "n_dep": n_dep,
        "n_anx": n_anx,
        "comorbid": comorbid,
        "n_cases": n_cases,
        "n_controls": n_controls,
        "n_other": n_other,
    }


def simulate_participants(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Participant-level arrays (length ``n``, complete: no missing values yet).

    Disorder roles are laid out on case slots (depression on slots
    ``[0, n_dep)``, anxiety on ``[n_dep - comorbid, n_cases)``), then scattered over
    participants with one random permutation.

    Parameters
    ----------
    rng
        Source of every draw (disorder layout, covariates, medication, in that order).
    n
        Number of participants.

    Returns
    -------
    dict of str to numpy.ndarray
        The 0/1 disorder columns of :data:`DISORDERS` and ``no_disorder``, ``sex_female``,
        ``age``, ``bmi``, ``bristol_stool``, ``read_depth``, the medication and GI
        columns and ``neuroticism``.

    Raises
    ------
    UserInputError
        If ``n`` is too small for the minimum cases per disorder plus controls.
    """
    d, role = _disorders(rng, n)
    case = role == 0
    other = role == 2
    _add_covariates(rng, d, case, other)
    _add_medication(rng, d, case, other)
    return d


def _disorders(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """The disorder columns and each participant's role (0 case, 1 control, 2 other)."""
    c = _cohort_counts(n)
    n_dep, n_cases = c["n_dep"], c["n_cases"]

    # Depression labels per depression slot: 1 dys only, 2 MDD only, 3 both.
    dep_lab = rng.permutation(np.repeat([1, 2, 3], [c["dys_only"], c["mdd_only"], c["dys_mdd"]]))
    # Anxiety labels: 1 GAD, 2 social phobia, 3 panic, 4 GAD+SP, 5 GAD+panic.
    anx_lab = rng.permutation(np.repeat([1, 2, 3, 4, 5], [c["gad"], c["sp"], c["panic"], c["gad_sp"], c["gad_panic"]]))
    slot_dep = np.zeros(n, dtype=np.int64)
    slot_anx = np.zeros(n, dtype=np.int64)
    slot_dep[:n_dep] = dep_lab
    slot_anx[n_dep - c["comorbid"] : n_cases] = anx_lab
    slot_role = np.full(n, 2, dtype=np.int64)  # 0 case, 1 control, 2 other
    slot_role[:n_cases] = 0
    slot_role[n_cases : n_cases + c["n_controls"]] = 1

    order = rng.permutation(n)  # slot order[i] -> participant i
    dep = slot_dep[order]
    anx = slot_anx[order]
    role = slot_role[order]

    d: dict[str, np.ndarray] = {}
    d["dysthymia"] = np.isin(dep, (1, 3)).astype(np.int64)
    d["MDD"] = np.isin(dep, (2, 3)).astype(np.int64)
    d["AnyDep"] = (dep > 0).astype(np.int64)
    d["GAD"] = np.isin(anx, (1, 4, 5)).astype(np.int64)
    d["social_phobia"] = np.isin(anx, (2, 4)).astype(np.int64)
    d["panic"] = np.isin(anx, (3, 5)).astype(np.int64)
    d["AnyAnx"] = (anx > 0).astype(np.int64)
    d["no_disorder"] = (role == 1).astype(np.int64)
    return d, role


def _add_covariates(rng: np.random.Generator, d: dict[str, np.ndarray], case: np.ndarray, other: np.ndarray) -> None:
    """Demographics and covariates, into ``d``.

    Cases differ (younger, more female, higher BMI, looser stool) so that
    bmi/bristol_stool confound crude disorder associations.
    """
    n = case.size
    female = rng.random(n) < np.where(case, 0.68, 0.575)
    d["sex_female"] = female.astype(np.int64)
    d["age"] = np.round(np.clip(rng.normal(49.0, 13.0, n) - 4.0 * case, 18.0, 80.0), 1)
    d["bmi"] = np.round(np.clip(26.0 + 4.0 * rng.standard_normal(n) + 1.2 * case + 0.3 * other - 0.6 * female, 15.0, 55.0), 1)
    stool_latent = rng.standard_normal(n) + 0.45 * case
    d["bristol_stool"] = np.clip(np.rint(4.0 + 1.3 * stool_latent), 1, 7).astype(np.int64)
    d["read_depth"] = np.round(np.clip(np.exp(rng.normal(math.log(11.0), 0.3, n)), 4.0, 25.0), 3)


def _add_medication(rng: np.random.Generator, d: dict[str, np.ndarray], case: np.ndarray, other: np.ndarray) -> None:
    """Medication, GI diagnoses (all enriched among cases) and neuroticism, into ``d``."""
    n = case.size
    d["ppi"] = (rng.random(n) < np.where(case, 0.16, 0.08)).astype(np.int64)
    d["laxatives"] = (rng.random(n) < np.where(case, 0.07, 0.03)).astype(np.int64)
    met_logit = -3.6 + 0.12 * (d["bmi"] - 26.0) + 0.05 * (d["age"] - 50.0)
    d["metformin"] = (rng.random(n) < 1.0 / (1.0 + np.exp(-met_logit))).astype(np.int64)
    ibs = rng.random(n) < np.where(case, 0.22, np.where(other, 0.14, 0.08))
    d["ibs"] = ibs.astype(np.int64)
    d["fgid"] = (ibs | (rng.random(n) < 0.06)).astype(np.int64)  # IBS is an FGID
    # Psychotropics: ~25 % of cases vs ~4 % of others; about half are SSRIs.
    ptd = rng.random(n) < np.where(case, 0.25, np.where(other, 0.05, 0.035))
    d["any_ptd"] = ptd.astype(np.int64)
    d["ssri"] = (ptd & (rng.random(n) < 0.5)).astype(np.int64)  # SSRI is a psychotropic
    d["neuroticism"] = np.round(np.clip(3.5 + 2.3 * rng.standard_normal(n) + 3.0 * case + 0.5 * other, 0.0, 12.0), 1)


def simulate_families(rng: np.random.Generator, n: int) -> np.ndarray:
    """Family of each participant, shape ``(n,)``: codes ``0..n_families - 1``.

    Family sizes are drawn from :data:`FAMILY_SIZE_PROBABILITIES` until they cover
    ``n`` participants (the last family is cut to fit), laid out on slots and then
    scattered over participants with one random permutation, so membership is
    independent of disorders, drugs and covariates.  Codes are numbered in order of
    first appearance (participant 1 is in family 0).

    Parameters
    ----------
    rng
        Source of the family sizes and of the permutation.
    n
        Number of participants.

    Returns
    -------
    numpy.ndarray
        int64 family codes, shape ``(n,)``.
    """
    sizes_p = np.array(list(FAMILY_SIZE_PROBABILITIES.values()))
    sizes_v = np.array(list(FAMILY_SIZE_PROBABILITIES), dtype=np.int64)
    mean = float(sizes_p @ sizes_v)
    sizes = np.empty(0, dtype=np.int64)
    while sizes.sum() < n:  # one draw unless n is tiny
        more = int(n / mean * 1.2) + 20
        sizes = np.concatenate([sizes, sizes_v[rng.choice(sizes_v.size, more, p=sizes_p)]])
    ends = np.cumsum(sizes)
    m = int(np.searchsorted(ends, n)) + 1  # families needed to reach n
    sizes = sizes[:m].copy()
    sizes[-1] -= int(ends[m - 1]) - n  # cut the last family to fit
    slot_family = np.repeat(np.arange(m), sizes)
    codes, _ = pd.factorize(slot_family[rng.permutation(n)])
    return codes.astype(np.int64)


def term_matrix(c: dict[str, np.ndarray]) -> np.ndarray:
    """Latent drivers, shape ``(n, len(TERMS))``: 0/1 indicators, standardised covariates.

    Parameters
    ----------
    c
        Participant-level arrays, as :func:`simulate_participants` returns.

    Returns
    -------
    numpy.ndarray
        float64 ``(n, len(TERMS))``, columns in the order of :data:`TERMS`.
    """
    cols = {
        "AnyDep": c["AnyDep"],
        "MDD": c["MDD"],
        "AnyAnx": c["AnyAnx"],
        "ssri": c["ssri"],
        "any_ptd": c["any_ptd"],
        "ppi": c["ppi"],
        "laxatives": c["laxatives"],
        "metformin": c["metformin"],
        "bmi": (c["bmi"] - 26.0) / 4.0,
        "bristol_stool": (c["bristol_stool"] - 4.0) / 1.3,
        "age": (c["age"] - 49.0) / 13.0,
        "sex": c["sex_female"] - 0.58,
    }
    return np.column_stack([np.asarray(cols[t], dtype=np.float64) for t in TERMS])


def metadata_frame(
    rng: np.random.Generator, c: dict[str, np.ndarray], sample_ids: list[str], family: np.ndarray | None = None, family_prefix: str = "F"
) -> pd.DataFrame:
    """``metadata.tsv`` content with ~2 % of bmi and ~3 % of bristol_stool missing.

    With ``family`` (codes per participant) a last column ``family_id`` (``F00001``...,
    led by ``family_prefix``) is added; it is never missing.

    Parameters
    ----------
    rng
        Source of the covariate missingness.
    c
        Participant-level arrays, as :func:`simulate_participants` returns.
    sample_ids
        One id per participant (first column).
    family
        Family codes per participant, or None for no ``family_id`` column.
    family_prefix
        Prefix of the family ids.

    Returns
    -------
    pandas.DataFrame
        One row per participant, columns as ``metadata.tsv`` has them.
    """
    n = len(sample_ids)
    bmi = c["bmi"].astype(np.float64).copy()
    bmi[rng.random(n) < 0.02] = np.nan
    bristol = pd.array(c["bristol_stool"], dtype="Int64")
    bristol[rng.random(n) < 0.03] = pd.NA
    cols = {
        "sample_id": sample_ids,
        "age": c["age"],
        "sex": np.where(c["sex_female"] == 1, "female", "male"),
        "bmi": bmi,
        "bristol_stool": bristol,
        "read_depth": c["read_depth"],
    }
    for k in ("ppi", "laxatives", "metformin", "ibs", "fgid", "ssri", "any_ptd", *DISORDERS, "no_disorder"):
        cols[k] = c[k]
    cols["neuroticism"] = c["neuroticism"]
    if family is not None:
        cols["family_id"] = [f"{family_prefix}{k + 1:05d}" for k in family.tolist()]
    return pd.DataFrame(cols)
