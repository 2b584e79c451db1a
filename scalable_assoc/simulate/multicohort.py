"""Several simulated biobanks that share one truth: :func:`simulate_cohorts`.

See "Several cohorts" in the :mod:`scalable_assoc.simulate` docstring for the model
(sizes, randomness, shared truth, heterogeneity, batch, spellings, catalogue, plan,
shared feature list) and the layout of the top-level ``truth.tsv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate.abundance import LayerParams, gbm_params, pathway_params, species_params
from scalable_assoc.simulate.catalogue import FAMILY_LINEAGES, NAMED_SPECIES, pathway_names, species_catalogue
from scalable_assoc.simulate.participants import DISORDER_TERMS, DRUG_TERMS, TERM_INDEX, round_half_up
from scalable_assoc.simulate.plan_template import FEATURE_LIST_NAME, cohort_plan_text
from scalable_assoc.simulate.study import (
    SimulatedStudy,
    StudySpelling,
    WrittenStudy,
    check_catalogue_sizes,
    check_sample_id_space,
    write_study,
)
from scalable_assoc.simulate.truth import exposure_deltas, round6, truth_feature_names, truth_frame, truth_layers
from scalable_assoc.simulate.writers import write_frame

# --------------------------------------------------------------------------------------
# Several cohorts (simulate_cohorts).
# --------------------------------------------------------------------------------------
COHORT_SPELLINGS: tuple[str, ...] = ("lineage", "clade", "renamed")
"""How cohort ``k`` (1-based) writes ``species.tsv``: ``COHORT_SPELLINGS[(k - 1) % 3]``.

``lineage``: MetaPhlAn 4 full lineages (as :func:`simulate_study`); ``clade``: MetaPhlAn 3
style, every clade named by its last component only (``s__Name``) plus an
``NCBI_tax_id`` column; ``renamed``: full lineages with a few genera renamed (the
species of ``feature_mapping.tsv``)."""

# canonical species -> (its spelling in a "renamed" cohort, family of the new genus).
# Real reclassifications (older or newer names of the same species).
_SPECIES_RENAMES: dict[str, tuple[str, str]] = {
    "Phocaeicola_vulgatus": ("Bacteroides_vulgatus", "Bacteroidaceae"),
    "Enterocloster_bolteae": ("Clostridium_bolteae", "Clostridiaceae"),
    "Clostridioides_difficile": ("Clostridium_difficile", "Clostridiaceae"),
    "Lacticaseibacillus_rhamnosus": ("Lactobacillus_rhamnosus", "Lactobacillaceae"),
    "Ruminococcus_torques": ("Mediterraneibacter_torques", "Lachnospiraceae"),
}
_MIN_COHORT_PARTICIPANTS = 300
_HETEROGENEOUS_FRACTION = 0.2  # of the planted disorder/drug effects of each layer
_HETEROGENEITY_TAU = 0.5  # SD of a cohort's deviation, as a multiple of |effect|
_BATCH_SD = 0.5  # SD of a cohort's per-feature shift of log abundance
_DROPPED_PER_COHORT = 4  # species missing from each of cohorts 2..
_COHORT_MISSING_FRACTION = 0.0005
_LIST_MIN_PREVALENCE = 0.05  # the shared feature list: features whose simulated prevalence is at least this


@dataclass(frozen=True)
class SimulatedCohorts:
    """What :func:`simulate_cohorts` wrote.

    Attributes
    ----------
    out_dir
        Folder holding the cohort folders, ``truth.tsv`` and ``feature_mapping.tsv``.
    studies
        Cohort name (``cohort_1``...) -> its :class:`SimulatedStudy`, in order;
        ``studies[name].plan_path`` runs that cohort alone.
    truth_path
        ``out_dir / "truth.tsv"`` (shared and per-cohort truth, long).
    mapping_path
        ``out_dir / "feature_mapping.tsv"`` (``from``, ``to``).
    spellings
        Cohort name -> its species spelling (see :data:`COHORT_SPELLINGS`).
    renamed
        Rows of ``feature_mapping.tsv``: spelling in a ``renamed`` cohort
        (``s__Bacteroides_vulgatus``) -> canonical species (``s__Phocaeicola_vulgatus``);
        empty when no cohort has that spelling (``cohorts=2``).
    dropped
        Cohort name -> canonical species absent from its ``species.tsv`` (and from its
        ``truth.tsv``); empty for ``cohort_1``.
    n_heterogeneous
        Planted (term, feature) effects that deviate between cohorts.
    feature_lists
        Cohort name -> its ``features.tsv`` (the same shared list in every cohort,
        named by its ``plan.yaml``).
    """

    out_dir: Path
    studies: dict[str, SimulatedStudy]
    truth_path: Path
    mapping_path: Path
    spellings: dict[str, str]
    renamed: dict[str, str]
    dropped: dict[str, tuple[str, ...]]
    n_heterogeneous: int
    feature_lists: dict[str, Path] = field(default_factory=dict)

    @property
    def sizes(self) -> dict[str, int]:
        """Cohort name -> participants."""
        return {name: s.n_participants for name, s in self.studies.items()}


@dataclass(frozen=True)
class _Cohort:
    """One cohort to simulate: folder name, 1-based number, size, species spelling, seed."""

    name: str
    number: int
    size: int
    spelling: str
    seed: np.random.SeedSequence


@dataclass(frozen=True)
class _Shared:
    """What every cohort shares: parameters, which effects vary, which species each lacks."""

    params: dict[str, LayerParams]  # layer -> shared parameters (species, pathways, gbm)
    hetero: dict[str, np.ndarray]  # layer -> (terms, F) mask of effects that vary
    dropped: list[np.ndarray]  # per cohort, in order: species positions it lacks
    catalogue: dict[str, list[str]]  # the shared species catalogue (canonical spelling)
    pathways: list[str]


def simulate_cohorts(
    out_dir: str | Path,
    cohorts: int = 3,
    participants: int = 7656,
    seed: int = 0,
    n_species: int = 400,
    n_pathways: int = 650,
) -> SimulatedCohorts:
    """Simulate several biobanks that share one truth and write each as a study folder.

    Writes ``out_dir/cohort_1`` .. ``out_dir/cohort_<cohorts>`` (each a complete study
    folder, as :func:`~scalable_assoc.simulate.simulate_study` writes, with its own
    ``plan.yaml`` and ``truth.tsv``) plus ``out_dir/truth.tsv`` and
    ``out_dir/feature_mapping.tsv``; see "Several cohorts" in the
    :mod:`scalable_assoc.simulate` docstring for the model and the file layouts.

    Parameters
    ----------
    out_dir
        Folder to create (parents too) and fill; existing files are overwritten.
    cohorts
        Number of cohorts (>= 2).
    participants
        Size of cohort 1; cohort ``k`` has ``participants / k`` participants (rounded
        half up), and every cohort needs at least 300.
    seed
        Root seed; the shared parameters and each cohort draw from their own child of
        ``np.random.SeedSequence(seed)``.  Same seed, same bytes.
    n_species
        Species in the shared catalogue (>= number of named species).
    n_pathways
        Pathways in every cohort (>= 1).

    Returns
    -------
    SimulatedCohorts
        A summary of what was written.

    Raises
    ------
    UserInputError
        If an argument is out of range.

    Examples
    --------
    >>> from scalable_assoc import simulate_cohorts
    >>> biobanks = simulate_cohorts(tmp / "biobanks", cohorts=3, participants=1500, n_species=60, n_pathways=40, seed=2)
    >>> sorted(biobanks.studies)
    ['cohort_1', 'cohort_2', 'cohort_3']
    """
    sizes = _cohort_sizes(cohorts, participants, n_species, n_pathways)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    streams = np.random.SeedSequence(seed).spawn(cohorts + 1)
    shared, between = _draw_shared(streams[0], cohorts, n_species, n_pathways)
    plan = [
        _Cohort(f"cohort_{k}", k, sizes[k - 1], COHORT_SPELLINGS[(k - 1) % len(COHORT_SPELLINGS)], streams[k])
        for k in range(1, cohorts + 1)
    ]
    written = [_write_cohort(out, cohort, shared, between) for cohort in plan]

    renamed = {
        f"s__{new}": f"s__{old}" for old, (new, _) in _SPECIES_RENAMES.items() if any(cohort.spelling == "renamed" for cohort in plan)
    }
    dropped = {cohort.name: tuple("s__" + shared.catalogue["species"][j] for j in shared.dropped[cohort.number - 1]) for cohort in plan}
    truth_path = out / "truth.tsv"
    write_frame(truth_path, _cohorts_truth(plan, written, shared, renamed, dropped))
    mapping_path = out / "feature_mapping.tsv"
    with open(mapping_path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("from\tto\n")
        fh.writelines(f"{a}\t{b}\n" for a, b in renamed.items())
    feature_lists = _write_feature_lists(out, plan, _shared_feature_list(shared, renamed))

    return SimulatedCohorts(
        out_dir=out,
        studies={cohort.name: w.study for cohort, w in zip(plan, written, strict=True)},
        truth_path=truth_path,
        mapping_path=mapping_path,
        spellings={cohort.name: cohort.spelling for cohort in plan},
        renamed=renamed,
        dropped=dropped,
        n_heterogeneous=int(sum(int(m.sum()) for m in shared.hetero.values())),
        feature_lists=feature_lists,
    )


def _cohort_sizes(cohorts: int, participants: int, n_species: int, n_pathways: int) -> list[int]:
    """Participants of each cohort (``participants / k``, rounded half up), after checking the arguments."""
    if cohorts < 2:
        raise UserInputError(f"cohorts={cohorts} must be at least 2 (use simulate_study for one).")
    check_catalogue_sizes(n_species, n_pathways)
    check_sample_id_space(participants)
    sizes = [round_half_up(participants / k) for k in range(1, cohorts + 1)]
    if sizes[-1] < _MIN_COHORT_PARTICIPANTS:
        raise UserInputError(
            f"participants={participants} is too small for {cohorts} cohorts: cohort k gets "
            f"participants / k participants and each needs at least {_MIN_COHORT_PARTICIPANTS} "
            f"(cohort {cohorts} would get {sizes[-1]}); use participants >= "
            f"{_MIN_COHORT_PARTICIPANTS * cohorts} or fewer cohorts."
        )
    return sizes


def _draw_shared(stream: np.random.SeedSequence, cohorts: int, n_species: int, n_pathways: int) -> tuple[_Shared, np.random.Generator]:
    """The shared parameters and between-cohort choices, plus the generator of the per-cohort deviations.

    The same parameter draws as a single study (families on), then the between-cohort
    draws (heterogeneity, dropped species; later each cohort's batch shifts and
    deviations) from a child.
    """
    rng = np.random.default_rng(stream)
    extra, between = rng.spawn(2)
    params = {
        "species": species_params(rng, extra, n_species, True),
        "pathways": pathway_params(rng, extra, n_pathways, True),
        "gbm": gbm_params(rng, extra, True),
    }
    hetero = {layer: _pick_heterogeneous(between, p) for layer, p in params.items()}
    dropped = _pick_dropped(between, params["species"], cohorts)
    return _Shared(params, hetero, dropped, species_catalogue(n_species), pathway_names(n_pathways)), between


def _write_cohort(out: Path, cohort: _Cohort, shared: _Shared, between: np.random.Generator) -> WrittenStudy:
    """Draw one cohort's deviations from ``between`` and write its study folder."""
    params = {layer: _cohort_params(between, p, shared.hetero[layer]) for layer, p in shared.params.items()}
    keep = np.setdiff1d(np.arange(len(shared.catalogue["species"])), shared.dropped[cohort.number - 1])
    params["species"] = params["species"].subset(keep)
    rng = np.random.default_rng(cohort.seed)
    extra = rng.spawn(1)[0]
    spelling = StudySpelling(
        sample_prefix=f"C{cohort.number}S",
        family_prefix=f"C{cohort.number}F",
        species_style="clade" if cohort.spelling == "clade" else "lineage",
        plan_text=cohort_plan_text(cohort.name),
        adapt_min_cases=True,
    )
    return write_study(
        out / cohort.name,
        rng,
        extra,
        cohort.size,
        params.__getitem__,
        families=True,
        missing_abundance_fraction=_COHORT_MISSING_FRACTION,
        species=_cohort_catalogue(shared.catalogue, keep, renamed=cohort.spelling == "renamed"),
        pathways=shared.pathways,
        spelling=spelling,
    )


def _write_feature_lists(out: Path, plan: list[_Cohort], shared_list: pd.DataFrame) -> dict[str, Path]:
    """Write the shared feature list into every cohort folder; cohort name -> its path."""
    feature_lists = {}
    for cohort in plan:
        feature_lists[cohort.name] = out / cohort.name / FEATURE_LIST_NAME
        shared_list.to_csv(feature_lists[cohort.name], sep="\t", index=False, lineterminator="\n")
    return feature_lists


def _shared_feature_list(shared: _Shared, renamed: dict[str, str]) -> pd.DataFrame:
    """The feature list every cohort gets: ``layer, feature`` rows, the same in every cohort.

    Features of the shared catalogue whose simulated prevalence is at least the plan's
    ``min_prevalence`` (0.05), in canonical spelling (``s__Name``; a lineage or clade name
    in a cohort's table matches it). A species whose genus a cohort renames is listed in
    both spellings: each cohort has one and counts the other as zero, so every cohort's
    CLR still runs over the same set.
    """
    names = truth_feature_names(shared.catalogue, shared.pathways)
    old_spelling = {canonical: old for old, canonical in renamed.items()}
    rows = []
    for layer, p in shared.params.items():
        for feature, prevalence in zip(names[layer], p.prev, strict=True):
            if prevalence >= _LIST_MIN_PREVALENCE:
                rows.append((layer, feature))
                if layer == "species" and feature in old_spelling:
                    rows.append((layer, old_spelling[feature]))
    return pd.DataFrame(rows, columns=["layer", "feature"])


def _exposure_rows() -> list[int]:
    """Rows of the term matrix that plan exposures contrast (disorder and drug terms)."""
    return [TERM_INDEX[t] for t in DISORDER_TERMS + DRUG_TERMS]


def _pick_heterogeneous(rng: np.random.Generator, p: LayerParams) -> np.ndarray:
    """Mask (terms, F) of the planted effects that vary between cohorts.

    ``_HETEROGENEOUS_FRACTION`` of the non-zero disorder/drug entries of ``B`` and ``P``
    (rounded half up, at least one when there are any), chosen at random.
    """
    rows = _exposure_rows()
    planted = np.zeros(p.B.shape, dtype=bool)
    planted[rows] = p.B[rows] != 0
    if p.P is not None:
        planted[rows] |= p.P[rows] != 0
    cells = np.flatnonzero(planted)
    k = max(1, round_half_up(_HETEROGENEOUS_FRACTION * cells.size)) if cells.size else 0
    mask = np.zeros(p.B.shape, dtype=bool)
    mask.flat[rng.permutation(cells)[:k]] = True
    return mask


def _pick_dropped(rng: np.random.Generator, p: LayerParams, cohorts: int) -> list[np.ndarray]:
    """Species positions missing from each cohort's table (none for cohort 1).

    Cohorts 2.. each lose ``_DROPPED_PER_COHORT`` different synthetic species with
    prevalence >= 0.25: one with a planted disorder/drug effect (when one is left) and
    the rest without, so every dropped species is absent from exactly one cohort.
    """
    rows = _exposure_rows()
    planted = np.any(p.B[rows] != 0, axis=0)
    if p.P is not None:
        planted |= np.any(p.P[rows] != 0, axis=0)
    candidates = np.arange(len(NAMED_SPECIES), p.B.shape[1])
    candidates = candidates[p.prev[candidates] >= 0.25]
    pool_planted = rng.permutation(candidates[planted[candidates]])
    pool_null = rng.permutation(candidates[~planted[candidates]])
    n_null = _DROPPED_PER_COHORT - 1
    out = [np.empty(0, dtype=np.int64)]
    for k in range(1, cohorts):
        picks = np.concatenate([pool_planted[k - 1 : k], pool_null[(k - 1) * n_null : k * n_null]])
        out.append(np.sort(picks).astype(np.int64))
    return out


def _cohort_params(rng: np.random.Generator, p: LayerParams, mask: np.ndarray) -> LayerParams:
    """One cohort's parameters: a batch shift on ``mu`` and deviations on masked effects.

    Batch: ``mu + N(0, _BATCH_SD^2)`` per feature.  Heterogeneity: each masked entry
    ``b`` of ``B`` / ``P`` becomes ``b + N(0, (_HETEROGENEITY_TAU * |b|)^2)``.
    """
    batch = rng.normal(0.0, _BATCH_SD, p.mu.size)
    B = np.where(mask, p.B + _HETEROGENEITY_TAU * np.abs(p.B) * rng.standard_normal(p.B.shape), p.B)
    P = p.P
    if P is not None:
        P = np.where(mask, P + _HETEROGENEITY_TAU * np.abs(P) * rng.standard_normal(P.shape), P)
    return replace(p, mu=p.mu + batch, B=B, P=P)


def _cohort_catalogue(catalogue: dict[str, list[str]], keep: np.ndarray, renamed: bool) -> dict[str, list[str]]:
    """The species catalogue as one cohort writes it: ``keep`` only, genera renamed if asked."""
    species: list[str] = []
    lineage: list[str] = []
    for j in keep.tolist():
        name, lin = catalogue["species"][j], catalogue["lineage"][j]
        if renamed and name in _SPECIES_RENAMES:
            name, family = _SPECIES_RENAMES[name]
            lin = f"{FAMILY_LINEAGES[family]}|g__{name.split('_', 1)[0]}"
        species.append(name)
        lineage.append(lin)
    return {"species": species, "lineage": lineage}


def _cohorts_truth(
    plan: list[_Cohort], written: list[WrittenStudy], shared: _Shared, renamed: dict[str, str], dropped: dict[str, tuple[str, ...]]
) -> pd.DataFrame:
    """The top-level ``truth.tsv`` (long: ``cohort == "shared"`` rows, then each cohort's)."""
    base = _shared_truth(written, shared, dropped)
    keys = ["layer", "feature", "exposure"]
    extra_columns = base[[*keys, "heterogeneous", "tau", "n_cohorts"]]
    frames = [base]
    for cohort, w in zip(plan, written, strict=True):
        t = w.truth.copy()
        t.insert(0, "cohort", cohort.name)
        t["cohort_feature"] = t["feature"]
        is_species = t["layer"] == "species"
        t.loc[is_species, "feature"] = t.loc[is_species, "feature"].map(lambda f: renamed.get(f, f))
        t = t.merge(extra_columns, on=keys, how="left", validate="one_to_one")
        frames.append(t[base.columns])
    return pd.concat(frames, ignore_index=True)


def _shared_truth(written: list[WrittenStudy], shared: _Shared, dropped: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """The ``cohort == "shared"`` rows: shared effects on the pooled participants, with heterogeneity columns."""
    pooled = {key: np.concatenate([w.cohort[key] for w in written]) for key in written[0].cohort}
    terms = np.vstack([w.terms for w in written])
    names = truth_feature_names(shared.catalogue, shared.pathways)
    base = truth_frame(pooled, terms, truth_layers(names, shared.params))
    flags, sd_ab, sd_pr = _heterogeneity(pooled, terms, shared)
    base["heterogeneous"] = flags.astype(np.int64)
    base["tau"] = round6(np.where(base["abundance_effect"].to_numpy() != 0, sd_ab, sd_pr))
    absent = pd.Series([f for names_ in dropped.values() for f in names_], dtype=object).value_counts()
    n_absent = base["feature"].map(absent).fillna(0).astype(np.int64)
    base["n_cohorts"] = np.where(base["layer"] == "species", len(written) - n_absent, len(written))
    base["cohort_feature"] = base["feature"]
    base.insert(0, "cohort", "shared")
    return base


def _heterogeneity(pooled: dict[str, np.ndarray], terms: np.ndarray, shared: _Shared) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per truth row: the heterogeneity flag and the SD of a cohort's deviation of both effects.

    Rows in the order of :func:`truth_frame` (exposure, then layer, then feature);
    returns ``(flags, SD of abundance_effect, SD of presence_effect)``.
    """
    flags, sd_ab, sd_pr = [], [], []
    for _, idx, delta in exposure_deltas(pooled, terms):
        for layer, p in shared.params.items():
            m = shared.hetero[layer][idx]
            tau_b = _HETEROGENEITY_TAU * np.abs(p.B[idx]) * m
            tau_p = _HETEROGENEITY_TAU * np.abs(p.P[idx]) * m if p.P is not None else 0.0 * tau_b
            coupling = np.broadcast_to(np.asarray(p.coupling, dtype=np.float64), (p.B.shape[1],))
            d = delta[:, None]
            flags.append(np.any(m & (d != 0), axis=0))
            sd_ab.append(np.sqrt(((d * tau_b) ** 2).sum(axis=0)))
            sd_pr.append(np.sqrt((d**2 * ((coupling * tau_b) ** 2 + tau_p**2)).sum(axis=0)))
    return np.concatenate(flags), np.concatenate(sd_ab), np.concatenate(sd_pr)
