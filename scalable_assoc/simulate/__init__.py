"""Simulate a Lifelines-like microbiome x internalizing-disorder study with planted truth.

The simulator writes a complete, self-describing study folder that the rest of the
package (CLI, tests, benchmarks) can run end to end, plus the ground truth needed to
score what the association engine finds:

* ``metadata.tsv``  - one row per participant: covariates, medication, disorders and,
  as the last column, ``family_id`` (``F00001``...; absent with ``families=False``).
* ``species.tsv``   - a MetaPhlAn 4 style merged table (clades as rows, percent).
* ``pathways.tsv``  - HUMAnN-like pathway relative abundances (samples as rows).
* ``gbm.tsv``       - 56 gut-brain modules ``MGB001``..``MGB056`` (samples as rows).
* ``truth.tsv``     - ``layer, feature, exposure, effect, presence_effect,
  abundance_effect, family_icc`` for every feature x plan exposure.
* ``plan.yaml``     - the study plan (paths relative to the plan's folder); always
  :data:`PLAN_YAML` (``lm`` only, no ``cluster``).  :data:`PLAN_YAML_WITH_MODELS` /
  :func:`plan_yaml` give the same plan with ``models:`` and ``cluster:`` appended.

Generative model (per layer, features j, participants i in family f(i))::

    eta[i, j]   = factors[i] @ loadings[j] + sum_t term[i, t] * B[t, j] + u[f(i), j]
    logab[i, j] = mu[j] + eta[i, j] + sigma_w[j] * noise[i, j]          # natural log
    logit[i, j] = logit(prev[j]) + 0.8 * log-depth[i] + c[j] * eta[i, j]
                  + sum_t term[i, t] * P[t, j] + v[f(i), j]
    present     ~ Bernoulli(sigmoid(logit[i, j]))
    value       = present * exp(logab), then closure (species: 100 %, pathways: 1)

``term`` holds the latent drivers: disorder indicators (``AnyDep``, ``MDD``,
``AnyAnx``), drugs (``ssri``, ``any_ptd``, ``ppi``, ``laxatives``, ``metformin``) and
covariates (standardised ``bmi``, ``bristol_stool``, ``age``, centred female sex).

Presence and abundance.  For ordinary features ``c[j] = 0.5`` and ``P[:, j] = 0``:
presence moves with ``eta``, so a planted effect ``B`` lowers (raises) both abundance
and prevalence, as seen in real cohorts.  On synthetic species (target prevalence
0.45-0.8) the simulator also plants one-part disorder effects (:data:`SPLIT_EFFECTS`:
3 on ``AnyDep``, 2 on ``MDD``, 3 on ``AnyAnx`` of each kind), all with ``c[j] = 0``:

* presence-only: ``P[t, j] = +-U(1.0, 1.5)`` log odds, ``B[:, j] = 0``: the exposure
  changes how often the species is present, not how abundant it is when present;
* abundance-only: ``B[t, j] = +-U(0.8, 1.2)`` log fold change, ``P[:, j] = 0``: the
  exposure changes abundance when present, not prevalence.

Because ``c[j] = 0`` for these, presence and log abundance are independent given the
exposure, so the "other" part is exactly null on the latent scale (not merely
approximately; closure adds only the shared per-sample shift noted below).

Families (``families=True``, the default).  Participants are grouped into families of
1..5 (:data:`FAMILY_SIZE_PROBABILITIES`: 40 % singletons, 32 % couples, 13 / 10 / 5 %
of 3 / 4 / 5 per family; ~3,700 families at 7,656 participants), assigned at random,
so family is independent of disorders, drugs and covariates.  Every feature gets a
family intraclass correlation ``icc[j] ~ 0.3 * Beta(0.7, 1.4)`` (mean 0.1; 36 % of
features below 0.05, 15 % above 0.2; capped so ``sigma_w > 0``):
``u[f, j] ~ N(0, icc[j] * (sigma[j]^2 + |loadings[j]|^2))`` and
``sigma_w[j]^2 = sigma[j]^2 - var(u)``, so the residual variance of ``logab`` is as
without families and ``icc[j]`` is the correlation of two relatives' residual log
abundances.  Species presence also gets an independent family effect ``v[f, j]`` with
latent (logistic) ICC ``h = icc[j] / 2``, i.e. variance ``h / (1 - h) * pi^2 / 3``
(pathway / GBM presence is clustered only through ``c[j] * u``).  Family draws and the
one-part effects come from a child generator (``rng.spawn``), so the cohort
(``metadata.tsv`` apart from ``family_id``) is the same as without them, and as the
simulator's earlier versions wrote for the same seed.

What ``truth.tsv`` means.  Every effect is the *direct* effect that a model adjusted
for the confounders/mediators (BMI, stool consistency, drugs) estimates, as a
contrast ``delta`` = mean(cases) - mean(controls) of the relevant terms, times their
coefficients:

* disorder exposures (``dysthymia``, ``MDD``, ``AnyDep``, ``GAD``, ``AnyAnx``): the
  disorder terms.  Controls (``no_disorder == 1``) have no disorder terms, so this is
  the planted effect averaged over how the case group is composed: ``AnyDep`` mixes
  the dysthymia-only, MDD-only and both groups; comorbid anxiety among depression
  cases (and vice versa) contributes in proportion to its frequency, because the plan
  does not adjust for the comorbid disorder and the contrast genuinely contains it.
  Drug-driven features (e.g. ``s__Eggerthella_lenta`` with SSRIs) have truth 0 for
  every disorder: their crude disorder association is confounding by indication and
  shrinks once ``ssri``/``any_ptd`` enter the model.  Likewise BMI/stool-driven
  features are 0 for every exposure.
* drug exposures (``ssri``, ``any_ptd``): the same contrast over the drug terms
  (``ssri`` and ``any_ptd``), e.g. SSRI users vs non-users = ``B_ssri + ~B_any_ptd``.

The columns (all 0 for a null, written to 6 significant digits):

* ``abundance_effect = delta @ B``: natural-log fold change of the latent abundance
  (per unit exposure) of a participant in whom the feature is present.
* ``presence_effect = delta @ (c * B + P)``: change in the log odds of presence,
  conditional on the latent factors, read depth and family effects.  For ordinary
  features it is ``0.5 * abundance_effect``; for presence-only features the planted
  ``P``; 0 for abundance-only features.
* ``effect``: unchanged meaning for every ordinary feature, the latent log fold change
  (``= abundance_effect``).  It is ``abundance_effect`` whenever that is non-zero and
  ``presence_effect`` otherwise, so ``effect != 0`` exactly when the exposure changes
  the feature's distribution in any way, with the sign of that change.  For
  presence-only rows it is therefore on the log-odds scale.
* ``family_icc``: the feature's ``icc[j]`` (0 without families), repeated per exposure.

Kinds: ordinary (both non-zero), presence-only (``abundance_effect == 0 !=
presence_effect``), abundance-only (``presence_effect == 0 != abundance_effect``).

How to score each model against it (planted = the named column is non-zero):

* ``lm`` (all participants, zeros as pseudocounts): ``effect``; a presence-only effect
  moves the mean of a zero-inflated transform too, in the sign of ``effect``.
* ``lm_nonzero`` (participants with the feature present): ``abundance_effect``.  For
  abundance-only and presence-only features this is exact (presence is independent of
  the abundance given the exposure); for ordinary features the present subset is
  selected on ``eta``, so estimates are slightly attenuated.
* ``prevalence`` (logistic regression of presence): ``presence_effect``.  It is a
  conditional log odds ratio; a model that cannot adjust for the latent factors and
  family effects estimates a slightly attenuated (non-collapsible) value, with the
  same sign and the same nulls.
* ``lmm`` / cluster-robust errors (``cluster: family_id``; ``lm: {se: cluster}``): same
  estimand as the model they wrap; ``family_icc`` says which features are clustered (the disorders are not
  clustered within families, so naive and cluster-robust SEs of a disorder slope agree
  in expectation, while a random intercept gains efficiency on high-ICC features).

Compositional closure (species, pathways) shifts every feature's observed log
abundance by the same per-sample amount, which is not part of the truth.

Species truth rows exist for species-level clades only (``s__...``, named as the last
clade component); genus and higher rows in ``species.tsv`` are their sums.

Several cohorts (:func:`simulate_cohorts`).  Test data for meta-analysis across
biobanks and for a pooled analysis: ``cohorts`` (default 3) study folders that share
one truth and differ in size, batch, effect sizes (a few), spelling and catalogue::

    out_dir/cohort_1/ .. cohort_<K>/   complete study folders, as simulate_study writes,
                                       plus features.tsv (the shared feature list)
    out_dir/truth.tsv                  shared + per-cohort truth (long, below)
    out_dir/feature_mapping.tsv        from, to: cohort spelling -> canonical species

* Sizes: cohort ``k`` (1-based) has ``participants / k`` participants, rounded half
  up (7,656 / 3,828 / 2,552 by default); each needs >= 300.  Sample ids are
  ``C<k>S000001``..., family ids ``C<k>F00001``..., so ids never collide when the
  cohorts are pooled.  ``metadata.tsv`` has the single-study columns (no ``cohort``).
* Randomness: ``np.random.SeedSequence(seed).spawn(K + 1)``: child 0 draws the shared
  parameters (community and planted effects exactly as a single study draws them,
  families on) and then, from a child of its own, the between-cohort parts below;
  child ``k`` draws cohort ``k`` (participants, families, noise, missingness).
* Shared truth: every cohort uses the same species / pathways / modules with the same
  ``mu, sigma, prev, loadings``, family ICCs and planted effects ``B``, ``P``.
* Heterogeneity: 20 % of the planted disorder/drug entries of ``B`` / ``P`` of each
  layer (rounded half up, at least one) get, in every cohort independently, a
  deviation ``N(0, tau^2)`` with ``tau = 0.5 * |planted value|``.  Covariate and
  other-medication effects are the same everywhere.
* Batch: each cohort shifts each feature's log abundance (``mu``) by ``N(0, 0.5^2)``;
  a cohort intercept absorbs it.  Detection (presence) is not shifted.
* Spelling of ``species.tsv`` (:data:`COHORT_SPELLINGS`, cycling for K > 3): cohort 1
  full MetaPhlAn 4 lineages; cohort 2 MetaPhlAn 3 style (``#mpa_v30_...`` header, an
  ``NCBI_tax_id`` column, every clade named by its last component: ``g__Dorea``,
  ``s__Dorea_longicatena``; ``rank: species`` keeps the ``s__`` rows, so the same plan
  reads it); cohort 3 full lineages with five genera renamed (``s__Bacteroides_vulgatus``
  for ``s__Phocaeicola_vulgatus``, ``s__Clostridium_bolteae`` for
  ``s__Enterocloster_bolteae``, ...; the renamed species sit under the new genus and
  its family).  Each cohort's own ``truth.tsv`` uses that cohort's spelling.
* Catalogue: cohorts 2.. each lack 4 different synthetic species (prevalence >= 0.25,
  one of them with a planted disorder/drug effect when available): not simulated, not
  in the table, not in the cohort's truth.  Each is absent from exactly one cohort
  (fewer than 4 when a small catalogue runs out of such species).
* Plan: each ``plan.yaml`` is :data:`PLAN_YAML` named
  ``lifelines-internalizing-cohort_<k>`` plus ``features: features.tsv``; a cohort with
  fewer than 10 participants in some exposure's case or control group (small cohorts:
  dysthymia, ssri) also gets ``min_cases: m`` with ``m`` that smallest group, so it runs
  as written.
* Shared feature list (the recommended practice for CLR across cohorts): every cohort
  folder holds the same ``features.tsv`` (``layer, feature``): the shared catalogue's
  features with simulated prevalence >= 0.05, species in canonical spelling plus the
  renamed spelling of each renamed species.  Each cohort keeps, fits and transforms over
  exactly the listed features it has; a listed species its table lacks (a dropped or a
  renamed one) counts as zero in every sample, so every cohort's CLR denominator is the
  same set and ``meta`` / ``pool`` accept the cohorts.

Top-level ``truth.tsv`` columns: ``cohort, layer, feature, exposure, effect,
presence_effect, abundance_effect, family_icc, heterogeneous, tau, n_cohorts,
cohort_feature``.  Rows with ``cohort == "shared"`` come first: every feature of the
shared catalogue, effects computed with the shared ``B`` / ``P`` on the pooled
participants (the mean of a random-effects meta-analysis; for homogeneous rows also
what a pooled analysis with a cohort intercept estimates).  Then each cohort's rows
(its ``truth.tsv``: its own deviations and case mix; only features in its table).
``feature`` is always the canonical name (cohort 1's spelling), ``cohort_feature``
the name in that cohort's table.
``heterogeneous`` is 1 when a planted entry behind the row deviates between cohorts;
``tau`` is the SD of a cohort's deviation of ``effect`` (same scale, pooled case
mix; 0 when homogeneous); ``n_cohorts`` counts the cohorts whose table holds the
feature.  The columns shared with the single-study truth mean the same (see above).

Only numpy, pandas, pyyaml and the standard library are used; all randomness of
:func:`simulate_study` comes from a single ``np.random.default_rng(seed)`` (and the
child it spawns), so a seed reproduces files byte for byte (likewise
:func:`simulate_cohorts` from its ``SeedSequence(seed)``).
"""

from __future__ import annotations

from scalable_assoc.simulate.abundance import SPLIT_EFFECTS
from scalable_assoc.simulate.catalogue import (
    COVARIATE_CONFOUNDED_FEATURES,
    DRUG_CONFOUNDED_FEATURES,
    GBM_HEADLINE_MODULES,
    GBM_LABELS,
    HEADLINE_FEATURES,
    HEADLINE_SIGNS,
)
from scalable_assoc.simulate.multicohort import COHORT_SPELLINGS, SimulatedCohorts, simulate_cohorts
from scalable_assoc.simulate.participants import DISORDERS, FAMILY_SIZE_PROBABILITIES, PLAN_EXPOSURES
from scalable_assoc.simulate.plan_template import FEATURE_LIST_NAME, PLAN_YAML, PLAN_YAML_WITH_MODELS, plan_yaml
from scalable_assoc.simulate.study import SimulatedStudy, simulate_study

__all__ = [
    "SimulatedStudy",
    "simulate_study",
    "SimulatedCohorts",
    "simulate_cohorts",
    "COHORT_SPELLINGS",
    "DISORDERS",
    "PLAN_EXPOSURES",
    "GBM_LABELS",
    "GBM_HEADLINE_MODULES",
    "HEADLINE_FEATURES",
    "HEADLINE_SIGNS",
    "DRUG_CONFOUNDED_FEATURES",
    "COVARIATE_CONFOUNDED_FEATURES",
    "PLAN_YAML",
    "PLAN_YAML_WITH_MODELS",
    "plan_yaml",
    "FAMILY_SIZE_PROBABILITIES",
    "SPLIT_EFFECTS",
    "FEATURE_LIST_NAME",
]
