"""Metrics of the methods benchmark: power, empirical FDR, ROC AUC, sign errors and null calibration per method.

The benchmark simulates data with planted effects (``ScenarioData.truth``), fits every
method and hands one *fits frame* per replicate to :func:`replicate_metrics`; the rows of
all replicates are summarised by :func:`summarise_methods`, and the p-values of the null
features by :func:`null_calibration`. Everything is vectorised over methods (pandas
groupby, numpy): no Python loop over features, nor over methods.

Fits frame (input; one row per method and feature):

=============  =======  ==================================================================================
column         dtype    meaning
=============  =======  ==================================================================================
method         str      ``model/transform/adjustment``, e.g. ``lm/clr/adjusted``, ``limma_voom/-/unadjusted``
model          str      lm | lm_nonzero | prevalence | joint | lmm | limma_voom | limma_trend
transform      str      clr | log | ast | tss | ``-`` where none applies
adjustment     str      adjusted | unadjusted
feature        str      feature name, as in ``truth.feature``
beta           float64  estimated effect of the disorder (its sign is compared with the truth); NaN for joint
p              float64  p-value; NaN = no estimate (not a discovery, left out of the AUC and calibration)
q              float64  Benjamini-Hochberg q within the method over the features with a p (:func:`method_q`)
=============  =======  ==================================================================================

A feature is *discovered* by a method when its ``q <= alpha``. Features of the truth that a
method did not test (no row, or NaN p) count as not discovered: power is over every true
feature of the simulation, not only the ones that survived a filter.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from scalable_assoc.stats.multitest import benjamini_hochberg_grouped

#: The columns that identify a method (in this order) in every output frame.
METHOD_KEYS = ["method", "model", "transform", "adjustment"]
#: The nominal level of the null-calibration share (share of null p-values below it).
NOMINAL_P = 0.05
#: A method is called miscalibrated when its null share below 0.05 differs from 0.05 by more than
#: the two-sided normal quantile of this level times its standard error (see :func:`calibration_se`).
CALIBRATION_LEVEL = 0.001
#: Models whose true features are those with a planted abundance OR presence effect.
ANY_EFFECT_MODELS = ("lm", "lmm", "joint", "limma_voom", "limma_trend")
#: Models testing the abundance among the present only / the presence only.
ABUNDANCE_MODELS = ("lm_nonzero",)
PRESENCE_MODELS = ("prevalence",)
#: The models :func:`truth_for_model` knows.
KNOWN_MODELS = ANY_EFFECT_MODELS + ABUNDANCE_MODELS + PRESENCE_MODELS

#: Column of :func:`replicate_metrics` -> (dtype, meaning); the registry the docstrings and tests use.
REPLICATE_COLUMNS: dict[str, tuple[str, str]] = {
    "method": ("str", "model/transform/adjustment"),
    "model": ("str", "the model fitted"),
    "transform": ("str", "transform of the abundance ('-' where none applies)"),
    "adjustment": ("str", "adjusted | unadjusted (for the confounder)"),
    "n_features": ("int64", "features of the simulation (rows of truth)"),
    "n_true": ("int64", "features with a true disorder effect for this model (truth_for_model)"),
    "n_tested": ("int64", "features with a p-value (not NaN) from this method"),
    "discoveries": ("int64", "features with q <= alpha"),
    "true_discoveries": ("int64", "discoveries among the true features (whatever the sign of beta)"),
    "false_discoveries": ("int64", "discoveries among the null features"),
    "power": ("float64", "true_discoveries / n_true; NaN when n_true == 0 (global null)"),
    "fdr": ("float64", "false discovery proportion: false_discoveries / max(discoveries, 1); 0 with no discovery"),
    "auc": (
        "float64",
        "ROC AUC of -log10 p separating true from null features among the tested (ties count half); NaN when either class is empty",
    ),
    "sign_errors": ("int64", "true discoveries whose beta has the opposite sign of the planted effect (NaN beta: not counted)"),
    "null_tested": ("int64", "null features with a p-value"),
    "null_below_005": ("int64", "null features with p < 0.05"),
}

#: Column of :func:`summarise_methods` -> (dtype, meaning).
SUMMARY_COLUMNS: dict[str, tuple[str, str]] = {
    "scenario": ("str", "scenario name"),
    **{key: REPLICATE_COLUMNS[key] for key in METHOD_KEYS},
    "replicates": ("int64", "replicates summarised"),
    "power": ("float64", "mean power over the replicates with true features (NaN under the global null)"),
    "power_se": ("float64", "Monte-Carlo standard error of power: sd (ddof=1) / sqrt(replicates); NaN below 2 replicates"),
    "fdr": ("float64", "empirical FDR: mean false discovery proportion over replicates"),
    "fdr_se": ("float64", "Monte-Carlo standard error of fdr: sd (ddof=1) / sqrt(replicates); NaN below 2 replicates"),
    "fdr_controlled": ("bool", "fdr <= alpha + 2 * fdr_se (fdr_se taken as 0 when NaN): the FDR is at most alpha within Monte-Carlo error"),
    "auc": ("float64", "mean ROC AUC over the replicates where it is defined"),
    "sign_errors": ("float64", "mean number of sign errors per replicate"),
    "sign_error_share": ("float64", "sign errors / true discoveries, pooled over replicates; NaN with no true discovery"),
    "null_share_p05": ("float64", "pooled share of null p-values below 0.05: sum null_below_005 / sum null_tested; NaN when none"),
    "null_share_se": (
        "float64",
        "standard error of null_share_p05: the larger of the binomial one, sqrt(0.05 * 0.95 / sum null_tested), and the "
        "between-replicate one, sd (ddof=1) of the replicates' shares / sqrt(replicates) (features of one replicate are correlated)",
    ),
    "calibrated": (
        "boolean",
        "|null_share_p05 - 0.05| <= 3.29 * null_share_se (two-sided, level 0.001); <NA> with no null p-value",
    ),
}

#: Column of :func:`null_calibration` -> (dtype, meaning).
CALIBRATION_COLUMNS: dict[str, tuple[str, str]] = {
    "scenario": ("str", "scenario name"),
    **{key: REPLICATE_COLUMNS[key] for key in METHOD_KEYS},
    "n": ("int64", "null p-values pooled over features and replicates (NaN p left out)"),
    "share_below_005": ("float64", "share of them below 0.05 (expected 0.05)"),
    "binomial_p": ("float64", "exact two-sided binomial test of that share against 0.05 (scipy.stats.binomtest's definition)"),
    "ks_statistic": ("float64", "Kolmogorov-Smirnov distance of the p-values from Uniform(0, 1)"),
    "ks_p": ("float64", "exact two-sided KS p-value (scipy.stats.kstest against uniform; assumes independent p-values)"),
    "share_se": ("float64", "standard error of share_below_005, robust to correlation within a replicate (calibration_se)"),
    "calibrated": ("boolean", "|share_below_005 - 0.05| <= 3.29 * share_se (two-sided, level 0.001)"),
}


def truth_for_model(truth: pd.DataFrame, model: str) -> tuple[np.ndarray, np.ndarray]:
    """Which features carry a true disorder effect for ``model``, and its sign.

    ``truth`` has one row per feature with ``abundance_effect`` and ``presence_effect``
    (log fold change / log odds per disorder; 0 = none). For lm, lmm, joint and limma a
    feature is true when either effect is non-zero, with the sign of the abundance effect
    (of the presence effect when there is no abundance effect); for lm_nonzero when the
    abundance effect is non-zero; for prevalence when the presence effect is non-zero.
    Effects of the drug alone and compositional side-effects are not disorder effects.

    Returns ``(is_true, sign)``: ``(F,)`` bool and ``(F,)`` int8 in {-1, 0, 1} (0 for null features).
    """
    abundance = truth["abundance_effect"].to_numpy(dtype=np.float64)
    presence = truth["presence_effect"].to_numpy(dtype=np.float64)
    if model in ANY_EFFECT_MODELS:
        effect = np.where(abundance != 0, abundance, presence)
    elif model in ABUNDANCE_MODELS:
        effect = abundance
    elif model in PRESENCE_MODELS:
        effect = presence
    else:
        raise ValueError(f"unknown model {model!r}: expected one of {', '.join(KNOWN_MODELS)}")
    is_true = effect != 0
    return is_true, np.sign(effect).astype(np.int8)


def method_q(fits: pd.DataFrame) -> np.ndarray:
    """Benjamini-Hochberg q-values within each method over the features with a p: ``(rows,)`` float64, NaN where p is NaN."""
    codes = pd.factorize(fits["method"])[0]
    return benjamini_hochberg_grouped(fits["p"].to_numpy(dtype=np.float64), codes)


def _row_truth(fits: pd.DataFrame, truth: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(is_true, sign)`` of every row of ``fits`` (its feature's truth for its model), vectorised over models."""
    position = pd.Index(truth["feature"]).get_indexer(fits["feature"])
    if np.any(position < 0):
        unknown = fits["feature"].to_numpy()[position < 0][:3]
        raise ValueError(f"fits name features that are not in the truth, e.g. {', '.join(map(str, unknown))}")
    models = fits["model"].to_numpy()
    is_true = np.zeros(len(fits), dtype=bool)
    sign = np.zeros(len(fits), dtype=np.int8)
    # One pass per distinct model (a handful), never per feature.
    for model in pd.unique(models):
        rows = models == model
        model_true, model_sign = truth_for_model(truth, str(model))
        is_true[rows] = model_true[position[rows]]
        sign[rows] = model_sign[position[rows]]
    return is_true, sign


def _check_fits(fits: pd.DataFrame) -> None:
    missing = [c for c in [*METHOD_KEYS, "feature", "beta", "p"] if c not in fits.columns]
    if missing:
        raise ValueError(f"fits frame lacks columns {missing}")
    if fits.duplicated(["method", "feature"]).any():
        raise ValueError("fits frame has more than one row for a (method, feature)")
    if fits.groupby("method", sort=False)[["model", "transform", "adjustment"]].nunique().gt(1).any(axis=None):
        raise ValueError("a method's rows disagree on its model, transform or adjustment")


def replicate_metrics(fits: pd.DataFrame, truth: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """Power, FDR, AUC, sign errors and null counts of every method in one replicate.

    ``fits``: the fits frame (module docstring); its ``q`` is used when present, else
    computed by :func:`method_q`. ``truth``: one row per simulated feature (``feature``,
    ``abundance_effect``, ``presence_effect``). ``alpha``: the BH level of a discovery (q <= alpha).

    Returns one row per method, sorted by method, with the columns of :data:`REPLICATE_COLUMNS`.
    The AUC is the Mann-Whitney U of -log p between true and null tested features over
    ``n_true_tested * n_null_tested`` (ties count half), computed from ranks of ``-p``
    (the same order as -log p, without the infinity of p = 0).
    """
    _check_fits(fits)
    frame = fits[[*METHOD_KEYS, "feature", "beta", "p"]].copy()
    frame["q"] = fits["q"].to_numpy(dtype=np.float64) if "q" in fits.columns else method_q(fits)
    is_true, sign = _row_truth(frame, truth)
    p = frame["p"].to_numpy(dtype=np.float64)
    tested = ~np.isnan(p)
    discovered = tested & (frame["q"].to_numpy(dtype=np.float64) <= alpha)
    beta_sign = np.sign(frame["beta"].to_numpy(dtype=np.float64))
    wrong_sign = discovered & is_true & ~np.isnan(beta_sign) & (beta_sign != sign)

    # Mann-Whitney U per method from average ranks of -p among the tested rows (ties count half).
    ranks = pd.Series(np.where(tested, -p, np.nan)).groupby(frame["method"].to_numpy(), sort=False).rank(method="average")
    counts = pd.DataFrame(
        {
            "method": frame["method"].to_numpy(),
            "n_tested": tested,
            "discoveries": discovered,
            "true_discoveries": discovered & is_true,
            "false_discoveries": discovered & ~is_true,
            "sign_errors": wrong_sign,
            "null_tested": tested & ~is_true,
            "null_below_005": tested & ~is_true & (p < NOMINAL_P),
            "true_tested": tested & is_true,
            "true_rank_sum": np.where(tested & is_true, ranks.to_numpy(), 0.0),
        }
    )
    sums = counts.groupby("method", sort=True).sum()
    keys = frame.drop_duplicates("method").set_index("method")[["model", "transform", "adjustment"]].loc[sums.index]

    n_true = (
        np.array([truth_for_model(truth, str(m))[0].sum() for m in keys["model"]], dtype=np.int64) if len(keys) else np.zeros(0, np.int64)
    )
    n1 = sums["true_tested"].to_numpy(dtype=np.float64)
    n0 = sums["null_tested"].to_numpy(dtype=np.float64)
    u = sums["true_rank_sum"].to_numpy() - n1 * (n1 + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.where((n1 > 0) & (n0 > 0), u / (n1 * n0), np.nan)
        power = np.where(n_true > 0, sums["true_discoveries"].to_numpy() / n_true, np.nan)
    discoveries = sums["discoveries"].to_numpy()
    out = pd.DataFrame(
        {
            "method": sums.index.to_numpy(dtype=object),
            "model": keys["model"].to_numpy(dtype=object),
            "transform": keys["transform"].to_numpy(dtype=object),
            "adjustment": keys["adjustment"].to_numpy(dtype=object),
            "n_features": np.full(len(sums), len(truth), dtype=np.int64),
            "n_true": n_true,
            "n_tested": sums["n_tested"].to_numpy(dtype=np.int64),
            "discoveries": discoveries.astype(np.int64),
            "true_discoveries": sums["true_discoveries"].to_numpy(dtype=np.int64),
            "false_discoveries": sums["false_discoveries"].to_numpy(dtype=np.int64),
            "power": power.astype(np.float64),
            "fdr": sums["false_discoveries"].to_numpy() / np.maximum(discoveries, 1),
            "auc": auc.astype(np.float64),
            "sign_errors": sums["sign_errors"].to_numpy(dtype=np.int64),
            "null_tested": sums["null_tested"].to_numpy(dtype=np.int64),
            "null_below_005": sums["null_below_005"].to_numpy(dtype=np.int64),
        }
    )
    return out.reset_index(drop=True)


def null_pvalues(fits: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """The rows of ``fits`` whose feature is null for the method's model (:func:`truth_for_model`), with a p-value.

    Columns: method, model, transform, adjustment, feature, p; the caller adds scenario
    and replicate and pools replicates for :func:`null_calibration` and the QQ figure.
    """
    is_true, _ = _row_truth(fits, truth)
    keep = ~is_true & fits["p"].notna().to_numpy()
    return fits.loc[keep, [*METHOD_KEYS, "feature", "p"]].reset_index(drop=True)


def binomial_two_sided_p(k: np.ndarray, n: np.ndarray, p0: float) -> np.ndarray:
    """Exact two-sided binomial p-values of ``k`` successes in ``n`` trials against ``p0``, vectorised (``(m,)`` -> ``(m,)``).

    The same definition as :func:`scipy.stats.binomtest` (two-sided): the probability of
    every outcome no more likely than ``k`` (with its relative tolerance 1e-7), found by
    a bisection over the other side of the mode run on all entries at once.
    """
    k = np.asarray(k, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    if np.any((k < 0) | (k > n) | (n < 1)):
        raise ValueError("binomial test needs 0 <= k <= n and n >= 1")
    d = stats.binom.pmf(k, n, p0)
    bound = d * (1 + 1e-7)
    mean = p0 * n
    below = k < mean
    # Below the mean: the first j in [ceil(mean), n] with pmf(j) <= bound (pmf decreases there);
    # above it: the last j in [0, floor(mean)] with pmf(j) <= bound (pmf increases there).
    lo = np.where(below, np.ceil(mean), 0).astype(np.int64)
    hi = np.where(below, n, np.floor(mean)).astype(np.int64)
    # Invariants (as scipy's _binary_search_for_binom_tst): below the mean, pmf(lo) > bound or lo is the answer,
    # above it, pmf(hi) > bound or hi is the answer; the search ends with the index where the condition flips.
    ix = _bisect_binom(lo, hi, n, p0, bound, below)
    y_below = n - ix + (bound == stats.binom.pmf(ix, n, p0)).astype(np.int64)
    p_below = stats.binom.cdf(k, n, p0) + stats.binom.sf(n - y_below, n, p0)
    y_above = ix + 1
    p_above = stats.binom.cdf(y_above - 1, n, p0) + stats.binom.sf(k - 1, n, p0)
    pvalue = np.where(below, p_below, p_above)
    return np.minimum(1.0, np.where(k == mean, 1.0, pvalue))


def _bisect_binom(lo: np.ndarray, hi: np.ndarray, n: np.ndarray, p0: float, bound: np.ndarray, below: np.ndarray) -> np.ndarray:
    """Vectorised copy of scipy's ``_binary_search_for_binom_tst`` for both sides of the mode.

    Below the mean it searches ``a(x) = -pmf(x)`` (increasing on [lo, hi]) for ``-bound``;
    above it ``a(x) = pmf(x)`` (increasing on [lo, hi]) for ``bound``; it returns the ``x`` with
    ``a(x) <= target < a(x + 1)``, or the end of the interval as scipy does.
    """
    sign = np.where(below, -1.0, 1.0)
    target = sign * bound
    lo = lo.copy()
    hi = hi.copy()
    result = np.full(lo.shape, -1, dtype=np.int64)
    active = lo < hi
    while np.any(active):
        mid = lo + (hi - lo) // 2
        value = sign * stats.binom.pmf(mid, n, p0)
        hit = active & (value == target)
        result[hit] = mid[hit]
        lower = active & ~hit & (value < target)
        higher = active & ~hit & (value > target)
        lo[lower] = mid[lower] + 1
        hi[higher] = mid[higher] - 1
        active = active & ~hit & (lo < hi)
    # scipy: if lo == hi at the end, lo is the answer when a(lo) <= target, else lo - 1.
    done = result >= 0
    at_lo = sign * stats.binom.pmf(lo, n, p0)
    final = np.where(at_lo <= target, lo, lo - 1)
    return np.where(done, result, final)


def _mean_se(values: pd.Series, groups: list[pd.Series]) -> tuple[pd.Series, pd.Series]:
    grouped = values.groupby(groups, sort=True)
    count = grouped.count()
    se = grouped.std(ddof=1) / np.sqrt(count)
    return grouped.mean(), se.where(count >= 2)


def calibration_se(pooled_below: np.ndarray, pooled_n: np.ndarray, replicate_shares: pd.Series, groups: list[pd.Series]) -> np.ndarray:
    """Standard errors ``(m,)`` of ``m`` pooled null shares below 0.05, robust to correlation within a replicate.

    The binomial error ``sqrt(0.05 * 0.95 / n)`` treats every null p-value as
    independent, but the features of one replicate share latent community axes and
    the closure, so their p-values move together and a pooled binomial test rejects
    uniform p-values too often. The replicate is the independent unit: the spread of
    the replicates' own shares (``replicate_shares``, grouped by ``groups`` in the
    same sorted order as the pooled counts) estimates the error with that correlation
    included. The larger of the two is used; with fewer than 2 replicates, the binomial one.
    """
    binomial = np.sqrt(NOMINAL_P * (1.0 - NOMINAL_P) / np.maximum(pooled_n, 1))
    grouped = replicate_shares.groupby(groups, sort=True)
    count = grouped.count().to_numpy()
    between = (grouped.std(ddof=1).to_numpy() / np.sqrt(np.maximum(count, 1))) if len(count) else np.zeros(0)
    between = np.where(count >= 2, between, 0.0)
    return np.where(pooled_n > 0, np.maximum(binomial, np.nan_to_num(between)), np.nan)


def is_calibrated(share: np.ndarray, se: np.ndarray) -> pd.arrays.BooleanArray:
    """Whether each null share below 0.05 is within the two-sided :data:`CALIBRATION_LEVEL` bound of 0.05 (``<NA>`` where ``se`` is NaN)."""
    bound = stats.norm.isf(CALIBRATION_LEVEL / 2) * se
    with np.errstate(invalid="ignore"):
        calibrated = pd.array(np.abs(share - NOMINAL_P) <= bound, dtype="boolean")
    calibrated[np.isnan(se)] = pd.NA
    return calibrated


def summarise_methods(per_replicate: pd.DataFrame, alpha: float) -> pd.DataFrame:
    """One row per (scenario, method): mean power and FDR with Monte-Carlo errors, FDR control, AUC, sign errors, calibration.

    ``per_replicate``: :func:`replicate_metrics` rows with ``scenario`` and ``replicate``
    columns added. FDR control is judged by ``fdr <= alpha + 2 * fdr_se`` (the mean
    false discovery proportion within two Monte-Carlo standard errors of alpha; SE taken
    as 0 with a single replicate). Calibration: the pooled null share below 0.05 is
    within 3.29 standard errors of 0.05 (:func:`calibration_se`, :func:`is_calibrated`).
    Columns: :data:`SUMMARY_COLUMNS`, sorted by scenario and method.
    """
    keys = ["scenario", *METHOD_KEYS]
    frame = per_replicate.reset_index(drop=True)
    groups = [frame[k] for k in keys]
    grouped = frame.groupby(keys, sort=True)
    sums = grouped[["sign_errors", "true_discoveries", "null_tested", "null_below_005"]].sum()
    power, power_se = _mean_se(frame["power"].astype(np.float64), groups)
    fdr, fdr_se = _mean_se(frame["fdr"].astype(np.float64), groups)
    out = pd.DataFrame(
        {
            "replicates": grouped.size().astype(np.int64),
            "power": power,
            "power_se": power_se,
            "fdr": fdr,
            "fdr_se": fdr_se,
        }
    )
    out["fdr_controlled"] = (out["fdr"] <= alpha + 2 * out["fdr_se"].fillna(0.0)).astype(bool)
    out["auc"] = grouped["auc"].mean()
    out["sign_errors"] = grouped["sign_errors"].mean().astype(np.float64)
    true_discoveries = sums["true_discoveries"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["sign_error_share"] = np.where(true_discoveries > 0, sums["sign_errors"].to_numpy() / true_discoveries, np.nan)
    null_n = sums["null_tested"].to_numpy(dtype=np.int64)
    null_k = sums["null_below_005"].to_numpy(dtype=np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["null_share_p05"] = np.where(null_n > 0, null_k / np.maximum(null_n, 1), np.nan)
    tested = frame["null_tested"].to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shares = pd.Series(np.where(tested > 0, frame["null_below_005"].to_numpy() / tested, np.nan), index=frame.index)
    se = calibration_se(null_k, null_n, shares, groups)
    out["null_share_se"] = se
    out["calibrated"] = is_calibrated(out["null_share_p05"].to_numpy(dtype=np.float64), se)
    return out.reset_index()


def null_calibration(pvalues: pd.DataFrame) -> pd.DataFrame:
    """Uniformity of the null p-values per (scenario, method): share below 0.05 with its binomial test and its
    replicate-robust bound (``calibrated``), and the KS test.

    ``pvalues``: columns scenario, replicate, method, model, transform, adjustment, feature,
    p (the null features of every replicate, e.g. :func:`null_pvalues`); NaN p-values are
    dropped. The KS test is computed as :func:`scipy.stats.kstest` against Uniform(0, 1)
    does (exact distribution of D, ``kstwo``), vectorised: the p-values are sorted within
    each group once. Columns: :data:`CALIBRATION_COLUMNS`, sorted by scenario and method.
    """
    keys = ["scenario", *METHOD_KEYS]
    present = pvalues.loc[pvalues["p"].notna(), [*keys, "replicate", "p"]]
    replicate_shares = (present["p"] < NOMINAL_P).groupby([present[k] for k in [*keys, "replicate"]], sort=True).mean()
    frame = present[[*keys, "p"]].sort_values([*keys, "p"], kind="stable").reset_index(drop=True)
    grouped = frame.groupby(keys, sort=True)
    p = frame["p"].to_numpy(dtype=np.float64)
    n_row = grouped["p"].transform("size").to_numpy(dtype=np.float64)
    i = grouped.cumcount().to_numpy(dtype=np.float64) + 1
    frame["d_plus"] = i / n_row - p
    frame["d_minus"] = p - (i - 1) / n_row
    frame["below"] = p < NOMINAL_P
    out = grouped.agg(n=("p", "size"), below=("below", "sum"), d_plus=("d_plus", "max"), d_minus=("d_minus", "max"))
    n = out["n"].to_numpy(dtype=np.int64)
    below = out["below"].to_numpy(dtype=np.int64)
    statistic = np.maximum(out["d_plus"].to_numpy(), out["d_minus"].to_numpy())
    result = pd.DataFrame(
        {
            "n": n,
            "share_below_005": below / np.maximum(n, 1),
            "binomial_p": binomial_two_sided_p(below, n, NOMINAL_P) if len(n) else np.zeros(0),
            "ks_statistic": statistic,
            "ks_p": np.clip(stats.kstwo.sf(statistic, n), 0.0, 1.0) if len(n) else np.zeros(0),
        },
        index=out.index,
    )
    shares = replicate_shares.reset_index(drop=True)
    levels = replicate_shares.index.to_frame(index=False)
    result["share_se"] = calibration_se(below, n, shares, [levels[k] for k in keys])
    result["calibrated"] = is_calibrated(result["share_below_005"].to_numpy(dtype=np.float64), result["share_se"].to_numpy())
    return result.reset_index()
