"""Every column of ``results.parquet`` (name, Arrow type, meaning), in output order.

One registry serves three purposes: the schema of each partial file, the check
that a gathered table is complete, and the column reference in the README.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """An output column: its name, Arrow type and meaning (shown in the README)."""

    name: str
    type: pa.DataType
    meaning: str


RESULT_COLUMNS: tuple[Column, ...] = (
    Column("layer", pa.string(), "abundance layer (plan data.layers key)"),
    Column("feature", pa.string(), "feature ID (species as 's__Genus_species', pathway or module name)"),
    Column("exposure", pa.string(), "exposure name (plan exposures key)"),
    Column("adjustment", pa.string(), "adjustment set name (plan adjustments key)"),
    Column(
        "model",
        pa.string(),
        "lm, lm_nonzero (participants with the feature only), prevalence (logistic, presence) or lmm (random intercept)",
    ),
    Column("n", pa.int64(), "participants in this feature's model (covariates complete, feature value present)"),
    Column("n_cases", pa.int64(), "participants with exposure 1 among them (null for a continuous exposure)"),
    Column("n_controls", pa.int64(), "participants with exposure 0 among them (null for a continuous exposure)"),
    Column(
        "n_present",
        pa.int64(),
        "participants in this feature's model with the feature present (raw value > presence_threshold; MaAsLin2's N.not.0); n for "
        "lm_nonzero",
    ),
    Column(
        "n_present_cases",
        pa.int64(),
        "binary exposure: participants among n_present with exposure 1 (carriers among the cases); null for a continuous or categorical "
        "exposure",
    ),
    Column(
        "beta",
        pa.float64(),
        "exposure coefficient: transformed-abundance units per exposure unit (lm, lm_nonzero, lmm); log odds ratio of presence "
        "(prevalence)",
    ),
    Column(
        "se",
        pa.float64(),
        "standard error of beta; lm / lm_nonzero: classical OLS, or cluster-robust (CR1) only where the plan asks for it "
        "(lm: {se: cluster}), never because of cluster: alone",
    ),
    Column("t", pa.float64(), "beta / se (a Wald z for prevalence, and for cluster-robust fits with reference: normal)"),
    Column(
        "p",
        pa.float64(),
        "two-sided p-value: Student t with n - rank degrees of freedom for OLS and lmm; for cluster-robust lm / lm_nonzero, "
        "t with G - 1 degrees of freedom (G clusters with a value of the feature), or the normal with reference: normal; "
        "the normal for a Wald z; on a categorical exposure's omnibus row, the F test's p (all levels jointly, see f_statistic)",
    ),
    Column("q", pa.float64(), "Benjamini-Hochberg adjusted p within the plan's fdr.by family; null where p is null"),
    Column("status", pa.string(), "'ok', or why there is no estimate (constant feature, too few values, rank-deficient design ...)"),
    Column("covariates", pa.string(), "metadata columns adjusted for, joined by '+'"),
    Column(
        "dropped_covariates",
        pa.string(),
        "columns of the adjustment set left out of this model, joined by '+': identical to the exposure, or constant (one level) among "
        "its participants; empty when none",
    ),
    Column("analysis_id", pa.string(), "stable id of the (layer, exposure, adjustment) analysis"),
    Column(
        "cluster_variance",
        pa.float64(),
        "lmm: REML between-cluster (random-intercept) variance sigma_u^2, in squared transformed-abundance units; null for other models "
        "and rows without an estimate",
    ),
    Column(
        "residual_variance",
        pa.float64(),
        "lmm: REML residual (within-cluster) variance sigma_e^2; null for other models and rows without an estimate",
    ),
    Column(
        "icc",
        pa.float64(),
        "lmm: intraclass correlation cluster_variance / (cluster_variance + residual_variance), in [0, 1] (0 at the boundary fit, which "
        "is classical OLS); null for other models and rows without an estimate",
    ),
    Column(
        "f_statistic",
        pa.float64(),
        "categorical exposure, omnibus row (exposure = the plan name; beta, se, t null): F = ((RSS_covariates - RSS_full) / (L - 1)) / "
        "(RSS_full / (n - rank)), the L - 1 level dummies tested jointly, p from F(L - 1, n - rank); null on every other row",
    ),
)

RESULT_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in RESULT_COLUMNS])
#: The partial files written by tasks carry every column but ``q`` (computed over whole families).
PARTIAL_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in RESULT_COLUMNS if c.name != "q"])


#: Columns of ``covariate_results.parquet`` (``run --covariate-rows``): every covariate's coefficient in each lm model.
COVARIATE_COLUMNS: tuple[Column, ...] = (
    Column("layer", pa.string(), "abundance layer"),
    Column("feature", pa.string(), "feature ID"),
    Column("exposure", pa.string(), "exposure name (plan exposures key) of the model"),
    Column("adjustment", pa.string(), "adjustment set name of the model"),
    Column("model", pa.string(), "lm"),
    Column("term", pa.string(), "design column: a covariate ('age') or a categorical covariate's level dummy ('sex[male]')"),
    Column("beta", pa.float64(), "the term's coefficient in the model feature ~ exposure + covariates (feature units per covariate unit)"),
    Column("se", pa.float64(), "standard error of beta"),
    Column("t", pa.float64(), "beta / se"),
    Column("p", pa.float64(), "two-sided p-value, Student t with n - rank degrees of freedom"),
    Column("n", pa.int64(), "participants in this feature's model"),
    Column("status", pa.string(), "'ok', or why there is no estimate"),
)
COVARIATE_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COVARIATE_COLUMNS])


#: Columns of ``permanova.parquet`` / ``permanova.tsv`` (plan ``diversity.beta``): the exposure's marginal PERMANOVA term
#: (vegan ``adonis2(distance ~ covariates + exposure, by = "margin")``) per layer x distance x exposure x adjustment set.
PERMANOVA_COLUMNS: tuple[Column, ...] = (
    Column("layer", pa.string(), "abundance layer"),
    Column("distance", pa.string(), "aitchison (Euclidean on CLR values of the kept features) or bray_curtis (raw kept abundances)"),
    Column("exposure", pa.string(), "exposure name (plan exposures key)"),
    Column("adjustment", pa.string(), "adjustment set name (plan adjustments key)"),
    Column(
        "n",
        pa.int64(),
        "participants: covariates and exposure complete, no missing abundance among the kept features (bray_curtis: and not all zero)",
    ),
    Column("df", pa.int64(), "degrees of freedom of the exposure term (rank it adds to the covariates); null without an estimate"),
    Column("sum_of_squares", pa.float64(), "the exposure's marginal sum of squares"),
    Column("r2", pa.float64(), "sum_of_squares / total sum of squares"),
    Column("f", pa.float64(), "pseudo-F of the marginal term"),
    Column("p", pa.float64(), "permutation p-value (1 + #{F* >= F}) / (1 + permutations), seeded (plan diversity.beta.seed)"),
    Column("permutations", pa.int64(), "permutations drawn"),
    Column(
        "permuted_within",
        pa.string(),
        "the plan's cluster column when participants were permuted only within their clusters (vegan's strata); null: permuted freely",
    ),
    Column("status", pa.string(), "'ok', or why there is no estimate"),
)
PERMANOVA_SCHEMA = pa.schema([pa.field(c.name, c.type) for c in PERMANOVA_COLUMNS])


def column_reference_markdown() -> str:
    """The results columns as a Markdown table (used to keep the README in step)."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.type} | {c.meaning} |" for c in RESULT_COLUMNS]
    return "\n".join(lines)
