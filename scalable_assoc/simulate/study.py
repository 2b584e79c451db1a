"""One simulated study folder: :func:`simulate_study`, and the writer it shares with several cohorts.

:func:`write_study` simulates one cohort and writes its folder (``metadata.tsv``,
``species.tsv``, ``pathways.tsv``, ``gbm.tsv``, ``truth.tsv``, ``plan.yaml``);
:func:`~scalable_assoc.simulate.simulate_cohorts` calls it once per cohort with that
cohort's parameters and spelling.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate.abundance import (
    N_FACTORS,
    LayerParams,
    closure,
    gbm_params,
    layer_abundance,
    pathway_params,
    punch_missing,
    species_params,
)
from scalable_assoc.simulate.catalogue import NAMED_SPECIES, pathway_names, species_catalogue
from scalable_assoc.simulate.participants import DISORDERS, metadata_frame, simulate_families, simulate_participants, term_matrix
from scalable_assoc.simulate.plan_template import PLAN_YAML, with_min_cases
from scalable_assoc.simulate.truth import truth_feature_names, truth_frame, truth_layers
from scalable_assoc.simulate.writers import write_frame, write_species, write_wide


@dataclass(frozen=True)
class SimulatedStudy:
    """What :func:`simulate_study` wrote.

    Attributes
    ----------
    out_dir
        Folder holding all files.
    plan_path
        ``out_dir / "plan.yaml"``.
    n_participants
        Rows of ``metadata.tsv``.
    n_controls
        Participants with ``no_disorder == 1``.
    case_counts
        Disorder column -> number of cases (value 1).
    n_features
        Layer -> number of features (species: species-level clades only; the merged
        table additionally holds their genus..kingdom sums).
    n_planted
        Number of rows of ``truth.tsv`` with a non-zero effect.
    n_families
        Distinct ``family_id`` values in ``metadata.tsv`` (0 when the study was
        simulated with ``families=False`` and has no such column).
    """

    out_dir: Path
    plan_path: Path
    n_participants: int
    n_controls: int
    case_counts: dict[str, int]
    n_features: dict[str, int]
    n_planted: int
    n_families: int = 0


def simulate_study(
    out_dir: str | Path,
    participants: int = 7656,
    seed: int = 0,
    n_species: int = 400,
    n_pathways: int = 650,
    missing_abundance_fraction: float = 0.0005,
    families: bool = True,
) -> SimulatedStudy:
    """Simulate a microbiome x internalizing-disorder cohort and write it to ``out_dir``.

    Parameters
    ----------
    out_dir
        Folder to create (parents too) and fill; existing files are overwritten.
    participants
        Number of participants (rows of ``metadata.tsv``).  At 7,656 the cohort has
        exactly 5,522 controls and 491 cases; other sizes scale proportionally with at
        least 5 cases per disorder.
    seed
        Seed of the single ``np.random.default_rng`` used; same seed, same bytes.
    n_species
        Species-level clades in ``species.tsv`` (>= number of named species).
    n_pathways
        Pathway columns in ``pathways.tsv`` (>= 1).
    missing_abundance_fraction
        Fraction of pathway/GBM cells left empty (missing).
    families
        Group participants into families of 1..5 (``family_id`` column of
        ``metadata.tsv``) that share a random effect on every feature's log abundance
        and presence.  ``False`` writes no ``family_id`` column and plants no family
        effects (``family_icc`` is 0 in ``truth.tsv``).

    Returns
    -------
    SimulatedStudy
        A summary of what was written.

    Raises
    ------
    UserInputError
        If an argument is out of range.

    Examples
    --------
    >>> from scalable_assoc import simulate_study
    >>> study = simulate_study(tmp / "study", participants=600, n_species=60, n_pathways=40, seed=1)
    >>> study.n_participants, sorted(study.n_features)
    (600, ['gbm', 'pathways', 'species'])
    """
    check_catalogue_sizes(n_species, n_pathways)
    if not 0.0 <= missing_abundance_fraction < 0.5:
        raise UserInputError(f"missing_abundance_fraction={missing_abundance_fraction} must be in [0, 0.5).")
    check_sample_id_space(participants)

    rng = np.random.default_rng(seed)
    # Families and one-part effects draw from a child of rng, so that the main stream
    # (cohort, community, effect sizes, noise) is the same as without them.
    extra = rng.spawn(1)[0]

    def draw(layer: str) -> LayerParams:
        # Each layer's parameters are drawn just before its abundances, as always.
        if layer == "species":
            return species_params(rng, extra, n_species, families)
        if layer == "pathways":
            return pathway_params(rng, extra, n_pathways, families)
        return gbm_params(rng, extra, families)

    written = write_study(
        Path(out_dir),
        rng,
        extra,
        participants,
        draw,
        families=families,
        missing_abundance_fraction=missing_abundance_fraction,
        species=species_catalogue(n_species),
        pathways=pathway_names(n_pathways),
    )
    return written.study


def check_catalogue_sizes(n_species: int, n_pathways: int) -> None:
    """Reject catalogues the simulator cannot fill.

    Parameters
    ----------
    n_species
        Requested species (at least the named ones).
    n_pathways
        Requested pathways (at least 1).

    Returns
    -------
    None

    Raises
    ------
    UserInputError
        Naming the argument that is too small.
    """
    n_named = len(NAMED_SPECIES)
    if n_species < n_named:
        raise UserInputError(
            f"n_species={n_species} is too small: the simulator needs at least {n_named} "
            "species for its named taxa; pass a larger n_species."
        )
    if n_pathways < 1:
        raise UserInputError(f"n_pathways={n_pathways} must be at least 1.")


def check_sample_id_space(participants: int) -> None:
    """Reject cohorts larger than the 6-digit sample ids can number.

    Parameters
    ----------
    participants
        Requested participants.

    Returns
    -------
    None

    Raises
    ------
    UserInputError
        If ``participants`` exceeds 999,999.
    """
    if participants > 999_999:
        raise UserInputError(f"participants={participants} exceeds the 6-digit sample id space (999,999).")


@dataclass(frozen=True)
class StudySpelling:
    """How one study folder spells its ids, species table and plan (defaults: a single study)."""

    sample_prefix: str = "LL"  # sample ids LL000001...
    family_prefix: str = "F"  # family ids F00001...
    species_style: str = "lineage"  # "lineage": MetaPhlAn 4 full lineages; "clade": MetaPhlAn 3 clade names
    plan_text: str = PLAN_YAML
    adapt_min_cases: bool = False  # append "min_cases: m" when an exposure group has m < 10


@dataclass(frozen=True)
class WrittenStudy:
    """A written study folder plus what pooled truth needs of it."""

    study: SimulatedStudy
    cohort: dict[str, np.ndarray]
    terms: np.ndarray
    truth: pd.DataFrame


@dataclass(frozen=True)
class _Participants:
    """One cohort's participants and the latent structure every layer shares."""

    cohort: dict[str, np.ndarray]  # participant-level arrays (simulate_participants)
    terms: np.ndarray  # (n, len(TERMS)) latent drivers
    factors: np.ndarray  # (n, N_FACTORS) latent community axes
    log_depth: np.ndarray  # (n,) centred log read depth
    family: np.ndarray | None  # (n,) family codes, None without families


@dataclass(frozen=True)
class _Layer:
    """One layer's parameters and its simulated values (n, F), as written."""

    params: LayerParams
    values: np.ndarray


def write_study(
    out: Path,
    rng: np.random.Generator,
    extra: np.random.Generator,
    participants: int,
    params: Callable[[str], LayerParams],
    *,
    families: bool,
    missing_abundance_fraction: float,
    species: dict[str, list[str]],
    pathways: list[str],
    spelling: StudySpelling = StudySpelling(),
) -> WrittenStudy:
    """Simulate one cohort and write its study folder to ``out``.

    ``params(layer)`` gives the parameters of ``"species"``, ``"pathways"`` and ``"gbm"``;
    it is called once per layer, in that order, just before the layer's abundances are
    drawn (a single study draws them there from ``rng``/``extra``).  ``species`` is the
    catalogue as written (names and lineages, matching the species parameters).

    Parameters
    ----------
    out
        Folder to create and fill.
    rng
        Source of the participants, community axes, abundances and missingness.
    extra
        Source of the families and family effects.
    participants
        Number of participants.
    params
        Layer name -> its parameters (see above).
    families
        Group participants into families.
    missing_abundance_fraction
        Fraction of pathway/GBM cells left empty.
    species
        The species catalogue as written.
    pathways
        The pathway names.
    spelling
        Ids, species table style and plan text of this folder.

    Returns
    -------
    WrittenStudy
        The summary plus the cohort, term matrix and truth (for pooled truth).
    """
    out.mkdir(parents=True, exist_ok=True)
    drawn = _draw_participants(rng, extra, participants, families)
    layers = _draw_layers(rng, extra, params, drawn, missing_abundance_fraction)
    sample_ids = [f"{spelling.sample_prefix}{i + 1:06d}" for i in range(participants)]
    # Covariate missingness only now: the model used the true values.
    write_frame(out / "metadata.tsv", metadata_frame(rng, drawn.cohort, sample_ids, drawn.family, spelling.family_prefix))
    names = truth_feature_names(species, pathways)
    write_species(out / "species.tsv", species, layers["species"].values, sample_ids, spelling.species_style)
    write_wide(out / "pathways.tsv", names["pathways"], layers["pathways"].values, sample_ids)
    write_wide(out / "gbm.tsv", names["gbm"], layers["gbm"].values, sample_ids)
    truth = truth_frame(drawn.cohort, drawn.terms, truth_layers(names, {layer: v.params for layer, v in layers.items()}))
    write_frame(out / "truth.tsv", truth)
    plan_text = with_min_cases(spelling.plan_text, drawn.cohort) if spelling.adapt_min_cases else spelling.plan_text
    plan_path = out / "plan.yaml"
    plan_path.write_text(plan_text, encoding="utf-8")

    cohort, family = drawn.cohort, drawn.family
    study = SimulatedStudy(
        out_dir=out,
        plan_path=plan_path,
        n_participants=participants,
        n_controls=int(cohort["no_disorder"].sum()),
        case_counts={d: int(cohort[d].sum()) for d in DISORDERS},
        n_features={layer: len(features) for layer, features in names.items()},
        n_planted=int((truth["effect"] != 0).sum()),
        n_families=int(family.max()) + 1 if family is not None else 0,
    )
    return WrittenStudy(study, cohort, drawn.terms, truth)


def _draw_participants(rng: np.random.Generator, extra: np.random.Generator, n: int, families: bool) -> _Participants:
    """The cohort, its term matrix, community axes, read depths and (from ``extra``) families."""
    cohort = simulate_participants(rng, n)
    terms = term_matrix(cohort)
    factors = rng.standard_normal((n, N_FACTORS))
    log_depth = np.log(cohort["read_depth"]) - math.log(11.0)
    family = simulate_families(extra, n) if families else None
    return _Participants(cohort, terms, factors, log_depth, family)


def _draw_layers(
    rng: np.random.Generator,
    extra: np.random.Generator,
    params: Callable[[str], LayerParams],
    drawn: _Participants,
    missing_abundance_fraction: float,
) -> dict[str, _Layer]:
    """Species (percent), pathways (proportions) and GBM values, in that order of draws.

    Pathway and GBM cells are then set missing with ``missing_abundance_fraction``.
    """

    def abundance(p: LayerParams) -> np.ndarray:
        return layer_abundance(rng, extra, p, drawn.terms, drawn.factors, drawn.log_depth, drawn.family)

    p_sp = params("species")
    species_pct = closure(abundance(p_sp), 100.0)
    p_pw = params("pathways")
    pathway_values = closure(abundance(p_pw), 1.0)
    punch_missing(rng, pathway_values, missing_abundance_fraction)
    p_g = params("gbm")
    gbm = abundance(p_g)
    punch_missing(rng, gbm, missing_abundance_fraction)
    return {"species": _Layer(p_sp, species_pct), "pathways": _Layer(p_pw, pathway_values), "gbm": _Layer(p_g, gbm)}
