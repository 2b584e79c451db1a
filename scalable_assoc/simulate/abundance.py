"""Community parameters, planted effects and zero-inflated log-normal abundances of one layer.

A layer (species, pathways, gut-brain modules) is described by a :class:`LayerParams`
drawn by :func:`species_params`, :func:`pathway_params` or :func:`gbm_params`;
:func:`layer_abundance` draws its abundances for a cohort (the generative model of the
:mod:`scalable_assoc.simulate` docstring), :func:`closure` makes them compositional.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from scalable_assoc.simulate.catalogue import GBM_LABELS, NAMED_GBM_EFFECTS, NAMED_SPECIES, NAMED_SPECIES_EFFECTS, species_catalogue
from scalable_assoc.simulate.participants import DISORDER_TERMS, DRUG_TERMS, TERM_INDEX, TERMS

# Fractions of (eligible) features given random planted effects, per term.  Disorder
# and drug terms only hit features with prevalence >= 0.25 so they survive the 5 %
# prevalence filter and are detectable; the sets of the different term groups are
# disjoint so that "drug-driven" and "disorder-driven" stay distinguishable.
_RANDOM_EFFECT_FRACTIONS: dict[str, float] = {
    "AnyDep": 0.035,
    "MDD": 0.012,
    "AnyAnx": 0.03,
    "ssri": 0.02,
    "any_ptd": 0.02,
    "ppi": 0.02,
    "laxatives": 0.01,
    "metformin": 0.01,
    "bmi": 0.05,
    "bristol_stool": 0.05,
    "age": 0.08,
    "sex": 0.08,
}
N_FACTORS = 3  # latent community axes (enterotype-like), shared by all layers

# Presence: logit(p) = logit(prev) + DEPTH_COUPLING * log-depth + coupling * eta + ...
# Ordinary features have coupling PRESENCE_COUPLING (an abundance effect also moves
# presence); features with a one-part ("split") effect have coupling 0.
DEPTH_COUPLING = 0.8
"""Log odds of presence per unit of centred natural-log read depth (deeper sequencing observes more taxa)."""
PRESENCE_COUPLING = 0.5
"""Default ``coupling``: log odds of presence per unit of the systematic log abundance ``eta``."""

# Split species effects: disorder term -> number of synthetic species given a
# presence-only effect, and as many given an abundance-only effect.  Drawn from species
# with target prevalence in _SPLIT_PREVALENCE, where both parts are well measured.
SPLIT_EFFECTS: dict[str, int] = {"AnyDep": 3, "MDD": 2, "AnyAnx": 3}
"""Disorder term -> species with a presence-only effect (and as many abundance-only).

Fewer when a small catalogue has too few synthetic species with prevalence 0.45-0.8."""
_SPLIT_PREVALENCE = (0.45, 0.8)
_PRESENCE_ONLY_MAGNITUDE = (1.0, 1.5)  # log odds of presence per unit term
_ABUNDANCE_ONLY_MAGNITUDE = (0.8, 1.2)  # log fold change of abundance when present

_MAX_FAMILY_ICC = 0.3
# Species presence (carriage, shared within households) gets a family effect with this
# share of the abundance ICC on the latent logistic scale; pathway / GBM presence is
# mostly detection and gets none beyond what follows from coupling.
_PRESENCE_ICC_SHARE = 0.5


@dataclass(frozen=True)
class LayerParams:
    """Community parameters and planted effects of one layer (see the module docstring).

    ``mu, sigma, prev, icc`` are per feature (F,), ``loadings`` (F, K), ``B`` and ``P``
    (terms, F) the planted abundance and presence-only effects (``P`` None: none),
    ``coupling`` (scalar or F,) how strongly presence follows ``eta``.
    """

    mu: np.ndarray
    sigma: np.ndarray
    prev: np.ndarray
    loadings: np.ndarray
    B: np.ndarray
    P: np.ndarray | None
    coupling: np.ndarray | float
    icc: np.ndarray
    presence_icc_share: float = 0.0

    def presence_truth(self) -> np.ndarray:
        """Effective presence coefficients: coupling * abundance effect + presence-only ones."""
        effective = self.coupling * self.B
        return effective if self.P is None else effective + self.P

    def subset(self, keep: np.ndarray) -> LayerParams:
        """The parameters of features ``keep`` (integer positions) only."""
        coupling = self.coupling[keep] if isinstance(self.coupling, np.ndarray) else self.coupling
        return replace(
            self,
            mu=self.mu[keep],
            sigma=self.sigma[keep],
            prev=self.prev[keep],
            loadings=self.loadings[keep],
            B=self.B[:, keep],
            P=None if self.P is None else self.P[:, keep],
            coupling=coupling,
            icc=self.icc[keep],
        )


def species_params(rng: np.random.Generator, extra: np.random.Generator, n_species: int, families: bool) -> LayerParams:
    """Species parameters: named taxa first, then synthetic ones; one-part effects from ``extra``.

    Parameters
    ----------
    rng
        Source of the community parameters and the random planted effects.
    extra
        Source of the one-part (presence-only, abundance-only) effects and family ICCs.
    n_species
        Species in the catalogue (at least ``len(NAMED_SPECIES)``).
    families
        Draw family ICCs (else they are all 0).

    Returns
    -------
    LayerParams
        With presence-only effects ``P`` and per-feature ``coupling``.
    """
    n_named = len(NAMED_SPECIES)
    names = species_catalogue(n_species)["species"]
    n_syn = n_species - n_named
    prev = np.empty(n_species)
    mu = np.empty(n_species)
    prev[:n_named] = [s[3] for s in NAMED_SPECIES]
    mu[:n_named] = [s[4] for s in NAMED_SPECIES]
    # Prevalence of synthetic species spans ~1.5 % .. ~99 %, about 10 % below 5 %.
    prev[n_named:] = 0.015 + 0.975 * rng.beta(0.7, 0.9, n_syn)
    # Prevalent species tend to be the abundant ones.
    mu[n_named:] = -1.5 + 2.5 * prev[n_named:] + rng.normal(0.0, 0.8, n_syn)
    sigma = rng.uniform(0.8, 1.2, n_species)
    loadings = rng.normal(0.0, 0.35, (n_species, N_FACTORS))
    n_terms = len(TERMS)
    B = np.zeros((n_terms, n_species))
    P = np.zeros((n_terms, n_species))  # presence-only effects (log odds)
    coupling = np.full(n_species, PRESENCE_COUPLING)
    name_to_idx = {s: j for j, s in enumerate(names)}
    for species, term, coef in NAMED_SPECIES_EFFECTS:
        B[TERM_INDEX[term], name_to_idx[species]] = coef
    # Disorder effects on one part only (presence or abundance), on synthetic species.
    _plant_split(extra, B, P, coupling, eligible=np.arange(n_named, n_species), prevalence=prev)
    # Named species keep only their documented effects; random ones go elsewhere.
    _plant_random(rng, B, eligible=np.arange(n_named, n_species), prevalence=prev, magnitude=(0.4, 1.2), presence_effects=P)
    icc = _family_icc(extra, sigma, loadings, families)
    return LayerParams(mu, sigma, prev, loadings, B, P, coupling, icc, _PRESENCE_ICC_SHARE)


def pathway_params(rng: np.random.Generator, extra: np.random.Generator, n_pathways: int, families: bool) -> LayerParams:
    """Pathway parameters: mostly prevalent, random planted effects.

    Parameters
    ----------
    rng
        Source of the community parameters and the planted effects.
    extra
        Source of the family ICCs.
    n_pathways
        Number of pathways.
    families
        Draw family ICCs (else they are all 0).

    Returns
    -------
    LayerParams
        Without presence-only effects.
    """
    u = rng.random(n_pathways)
    # "Mostly prevalent, few zeros": 80 % near-universal, 15 % common, 5 % rare.
    prev = np.where(
        u < 0.80,
        rng.uniform(0.97, 0.999, n_pathways),
        np.where(u < 0.95, rng.uniform(0.30, 0.97, n_pathways), rng.uniform(0.02, 0.30, n_pathways)),
    )
    mu = rng.normal(0.0, 1.2, n_pathways)
    sigma = rng.uniform(0.5, 0.9, n_pathways)
    loadings = rng.normal(0.0, 0.25, (n_pathways, N_FACTORS))
    B = np.zeros((len(TERMS), n_pathways))
    _plant_random(rng, B, eligible=np.arange(n_pathways), prevalence=prev, magnitude=(0.3, 0.8))
    icc = _family_icc(extra, sigma, loadings, families)
    return LayerParams(mu, sigma, prev, loadings, B, None, PRESENCE_COUPLING, icc)


def gbm_params(rng: np.random.Generator, extra: np.random.Generator, families: bool) -> LayerParams:
    """Gut-brain module parameters (not compositional: CPM-like module abundances).

    Parameters
    ----------
    rng
        Source of the community parameters.
    extra
        Source of the family ICCs.
    families
        Draw family ICCs (else they are all 0).

    Returns
    -------
    LayerParams
        One feature per :data:`~scalable_assoc.simulate.catalogue.GBM_LABELS` entry,
        with the named module effects planted.
    """
    gbm_names = list(GBM_LABELS)
    n_gbm = len(gbm_names)
    prev = np.where(rng.random(n_gbm) < 0.85, rng.uniform(0.95, 0.999, n_gbm), rng.uniform(0.40, 0.95, n_gbm))
    mu = rng.normal(5.0, 1.0, n_gbm)  # log CPM ~ 150 on average
    sigma = rng.uniform(0.35, 0.6, n_gbm)
    loadings = rng.normal(0.0, 0.2, (n_gbm, N_FACTORS))
    B = np.zeros((len(TERMS), n_gbm))
    for mgb, term, coef in NAMED_GBM_EFFECTS:
        B[TERM_INDEX[term], gbm_names.index(mgb)] = coef
    icc = _family_icc(extra, sigma, loadings, families)
    return LayerParams(mu, sigma, prev, loadings, B, None, PRESENCE_COUPLING, icc)


def layer_abundance(
    rng: np.random.Generator,
    extra: np.random.Generator,
    p: LayerParams,
    terms: np.ndarray,
    factors: np.ndarray,
    log_depth: np.ndarray,
    family: np.ndarray | None,
) -> np.ndarray:
    """Unnormalised abundances ``(n, F)`` of one layer (see :func:`zero_inflated_abundance`).

    Parameters
    ----------
    rng
        Source of the noise and of presence.
    extra
        Source of the family effects.
    p
        The layer's parameters.
    terms
        Term matrix ``(n, len(TERMS))`` of the cohort.
    factors
        Latent community axes ``(n, N_FACTORS)``.
    log_depth
        Centred log read depth ``(n,)``.
    family
        Family codes ``(n,)``, or None for no family effects.

    Returns
    -------
    numpy.ndarray
        Abundances ``>= 0`` (0 where absent), shape ``(n, F)``.
    """
    return zero_inflated_abundance(
        rng,
        p.mu,
        p.sigma,
        p.prev,
        p.loadings,
        p.B,
        terms,
        factors,
        log_depth,
        family=family,
        icc=p.icc,
        family_rng=extra,
        presence_icc_share=p.presence_icc_share,
        presence_effects=p.P,
        coupling=p.coupling,
    )


def _plant_random(
    rng: np.random.Generator,
    B: np.ndarray,
    eligible: np.ndarray,
    prevalence: np.ndarray,
    magnitude: tuple[float, float],
    presence_effects: np.ndarray | None = None,
) -> None:
    """Give random features effects for every term in ``_RANDOM_EFFECT_FRACTIONS``.

    ``B`` (terms x features) is modified in place.  Each feature gets at most one
    random term, and none that already has an effect in ``B`` or ``presence_effects``;
    disorder/drug terms draw from features with prevalence >= 0.25.
    Disorder/drug magnitudes are ``U(magnitude)`` with random sign; covariate effects
    (per SD) are 0.4x that.
    """
    eligible = np.asarray(eligible)
    common = eligible[prevalence[eligible] >= 0.25]
    taken = np.zeros(B.shape[1], dtype=bool)
    taken[np.flatnonzero(np.any(B != 0, axis=0))] = True
    if presence_effects is not None:
        taken |= np.any(presence_effects != 0, axis=0)
    pool_common = rng.permutation(common)
    pool_all = rng.permutation(eligible)
    lo, hi = magnitude
    for term, frac in _RANDOM_EFFECT_FRACTIONS.items():
        k = int(round(frac * eligible.size))
        if k == 0:
            continue
        pool = pool_common if term in DISORDER_TERMS + DRUG_TERMS else pool_all
        pick = pool[~taken[pool]][:k]
        taken[pick] = True
        size = rng.uniform(lo, hi, pick.size)
        if term not in DISORDER_TERMS + DRUG_TERMS:
            size *= 0.4
        sign = np.where(rng.random(pick.size) < 0.5, -1.0, 1.0)
        B[TERM_INDEX[term], pick] = sign * size


def _plant_split(
    rng: np.random.Generator, B: np.ndarray, P: np.ndarray, coupling: np.ndarray, eligible: np.ndarray, prevalence: np.ndarray
) -> None:
    """Plant one-part disorder effects (``SPLIT_EFFECTS``) in place.

    Presence-only features get ``P[term, j] = +-U(_PRESENCE_ONLY_MAGNITUDE)`` (log odds);
    abundance-only ones ``B[term, j] = +-U(_ABUNDANCE_ONLY_MAGNITUDE)`` (log fold change).
    Both get ``coupling[j] = 0`` so that the other part does not move with the term.
    Features come from ``eligible`` with prevalence in ``_SPLIT_PREVALENCE``, handed
    out round-robin over (term, kind) so that small catalogues still get some of each.
    """
    lo, hi = _SPLIT_PREVALENCE
    eligible = np.asarray(eligible)
    pool = rng.permutation(eligible[(prevalence[eligible] >= lo) & (prevalence[eligible] <= hi)])
    rows: list[int] = []
    presence: list[bool] = []
    for r in range(max(SPLIT_EFFECTS.values())):
        for term, count in SPLIT_EFFECTS.items():
            for is_presence in (True, False):
                if r < count and len(rows) < pool.size:
                    rows.append(TERM_INDEX[term])
                    presence.append(is_presence)
    k = len(rows)
    pick = pool[:k]
    is_p = np.array(presence, dtype=bool)
    size = np.where(is_p, rng.uniform(*_PRESENCE_ONLY_MAGNITUDE, k), rng.uniform(*_ABUNDANCE_ONLY_MAGNITUDE, k))
    signed = np.where(rng.random(k) < 0.5, -1.0, 1.0) * size
    term_rows = np.array(rows, dtype=np.int64)
    P[term_rows[is_p], pick[is_p]] = signed[is_p]
    B[term_rows[~is_p], pick[~is_p]] = signed[~is_p]
    coupling[pick] = 0.0


def _family_icc(rng: np.random.Generator, sigma: np.ndarray, loadings: np.ndarray, families: bool) -> np.ndarray:
    """Per-feature intraclass correlation of the residual log abundance within families.

    ``_MAX_FAMILY_ICC * Beta(0.7, 1.4)`` (mean 0.1, median 0.08; 36 % below 0.05, 15 %
    above 0.2: most features are little clustered, some clearly), capped at 0.8 x ``sigma^2 / (sigma^2 + |loadings|^2)`` so
    that the within-family noise keeps a positive variance; zeros without families.
    """
    if not families:
        return np.zeros(sigma.size)
    icc = _MAX_FAMILY_ICC * rng.beta(0.7, 1.4, sigma.size)
    s2 = sigma**2
    return np.minimum(icc, 0.8 * s2 / (s2 + (loadings**2).sum(axis=1)))


def zero_inflated_abundance(
    rng: np.random.Generator,
    mu: np.ndarray,
    sigma: np.ndarray,
    prev: np.ndarray,
    loadings: np.ndarray,
    B: np.ndarray,
    terms: np.ndarray,
    factors: np.ndarray,
    log_depth: np.ndarray,
    family: np.ndarray | None = None,
    icc: np.ndarray | None = None,
    family_rng: np.random.Generator | None = None,
    presence_icc_share: float = 0.0,
    presence_effects: np.ndarray | None = None,
    coupling: np.ndarray | float = PRESENCE_COUPLING,
) -> np.ndarray:
    """Zero-inflated log-normal abundances, shape ``(n, F)``, unnormalised (>= 0).

    ``mu, sigma, prev`` are per feature (F,), ``loadings`` (F, K), ``B`` (terms, F),
    ``terms`` (n, terms), ``factors`` (n, K), ``log_depth`` (n,) centred log reads.
    ``family`` (n,) holds family codes and ``icc`` (F,) the share of the residual
    variance ``sigma^2 + |loadings|^2`` that is shared within a family: the family
    effect ``u`` has variance ``icc * (sigma^2 + |loadings|^2)`` and the individual
    noise what is left of ``sigma^2``, so the total variance does not depend on ``icc``.
    Presence gets an independent family effect ``v`` with latent-scale (logistic) ICC
    ``presence_icc_share * icc`` (none when 0).  ``u`` and ``v`` come from ``family_rng``
    (default ``rng``).
    ``presence_effects`` (terms, F) are extra log-odds effects on presence only;
    ``coupling`` (scalar or F,) is how strongly presence follows ``eta``.
    """
    eta = factors @ loadings.T + terms @ B  # systematic part (n, F)
    noise_sd = sigma
    v = None
    if family is not None and icc is not None:
        frng = rng if family_rng is None else family_rng
        n_families = int(family.max()) + 1
        tau2 = icc * (sigma**2 + (loadings**2).sum(axis=1))
        noise_sd = np.sqrt(sigma**2 - tau2)
        u = frng.standard_normal((n_families, sigma.size)) * np.sqrt(tau2)
        eta = eta + u[family]
        if presence_icc_share > 0:
            h = presence_icc_share * icc
            v = frng.standard_normal((n_families, sigma.size)) * np.sqrt(h / (1.0 - h) * math.pi**2 / 3.0)
    logab = mu + eta + noise_sd * rng.standard_normal(eta.shape)
    # Detection: deeper sequencing and higher systematic abundance make a taxon more
    # likely to be observed, so planted depletions also lower prevalence (coupling).
    logit = np.log(prev / (1.0 - prev)) + DEPTH_COUPLING * log_depth[:, None] + coupling * eta
    if presence_effects is not None:
        logit += terms @ presence_effects
    if v is not None:
        logit += v[family]
    present = rng.random(eta.shape) * (1.0 + np.exp(-logit)) < 1.0
    # Every sample must observe something: fall back to its most abundant feature.
    empty = ~present.any(axis=1)
    if empty.any():
        rows = np.flatnonzero(empty)
        present[rows, np.argmax(logab[rows], axis=1)] = True
    return np.where(present, np.exp(logab), 0.0)


def closure(x: np.ndarray, total: float) -> np.ndarray:
    """Scale each row of ``x`` (n, F) to sum to ``total`` (compositional closure).

    Parameters
    ----------
    x
        Non-negative abundances, every row with a positive sum.
    total
        What each row sums to afterwards (100 for percent, 1 for proportions).

    Returns
    -------
    numpy.ndarray
        The scaled copy.
    """
    return x * (total / x.sum(axis=1, keepdims=True))


def punch_missing(rng: np.random.Generator, x: np.ndarray, fraction: float) -> None:
    """Set a random ``fraction`` of cells of ``x`` to NaN in place (written as empty).

    Parameters
    ----------
    rng
        Source of the cells (no draw when ``fraction`` is 0).
    x
        Float array, changed in place.
    fraction
        Probability of each cell being set missing.

    Returns
    -------
    None
    """
    if fraction > 0:
        x[rng.random(x.shape) < fraction] = np.nan
