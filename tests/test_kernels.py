"""The numeric kernels against a per-feature statsmodels loop, and their edge cases.

Tolerance: relative 1e-8 on beta, se, t and p (statsmodels OLS, pinv solver).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import statsmodels.api as sm

from scalable_assoc.models import FitStatus, factorise_covariates, fit_exposure_slopes
from scalable_assoc.models.design import project_out
from scalable_assoc.stats.transforms import apply_transform, feature_summary, prevalence, sample_summaries
from scalable_assoc.testing import random_covariates

RTOL = 1e-8
NAMES = ("(intercept)", "age", "sex[male]", "read_depth")


def _statsmodels_loop(covariates: np.ndarray, exposure: np.ndarray, block: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.full(block.shape[1], np.nan) for k in ("beta", "se", "t", "p", "n")}
    design = np.column_stack([covariates, exposure])
    for j in range(block.shape[1]):
        fit = sm.OLS(block[:, j], design, missing="drop").fit()
        out["beta"][j], out["se"][j], out["t"][j], out["p"][j] = fit.params[-1], fit.bse[-1], fit.tvalues[-1], fit.pvalues[-1]
        out["n"][j] = fit.nobs
    return out


@pytest.mark.parametrize("missing_fraction", [0.0, 0.003, 0.02, 0.4])
def test_batched_equals_statsmodels_loop(missing_fraction: float) -> None:
    rng = np.random.default_rng(3)
    n, m = 500, 40
    covariates = random_covariates(rng, n, NAMES)
    exposure = (rng.random(n) < 0.15).astype(float)
    block = rng.normal(size=(n, m)) + 0.4 * exposure[:, None] + 1e-7 * covariates[:, 3:4]
    block[rng.random((n, m)) < missing_fraction] = np.nan
    design = factorise_covariates(covariates, NAMES)
    fits = fit_exposure_slopes(design, exposure[None], np.array([True]), block)
    reference = _statsmodels_loop(covariates, exposure, block)
    assert (fits.status == FitStatus.OK).all()
    for name in ("beta", "se", "t", "p"):
        np.testing.assert_allclose(getattr(fits, name)[0], reference[name], rtol=RTOL, err_msg=name)
    np.testing.assert_array_equal(fits.n[0], reference["n"])
    present = ~np.isnan(block)
    np.testing.assert_array_equal(fits.n_cases[0], (present & (exposure[:, None] == 1)).sum(axis=0))


def test_several_exposures_equal_one_at_a_time_and_chunks() -> None:
    rng = np.random.default_rng(4)
    n, m = 300, 30
    covariates = random_covariates(rng, n, NAMES)
    exposures = np.stack([(rng.random(n) < 0.3).astype(float), rng.normal(size=n)])
    block = rng.normal(size=(n, m))
    block[rng.random((n, m)) < 0.05] = np.nan
    design = factorise_covariates(covariates, NAMES)
    together = fit_exposure_slopes(design, exposures, np.array([True, False]), block)
    for e in range(2):
        alone = fit_exposure_slopes(design, exposures[e : e + 1], np.array([e == 0]), block)
        np.testing.assert_allclose(together.beta[e], alone.beta[0], rtol=1e-12)
        np.testing.assert_allclose(together.p[e], alone.p[0], rtol=1e-12)
    pieces = [fit_exposure_slopes(design, exposures, np.array([True, False]), block[:, s : s + 7]) for s in range(0, m, 7)]
    np.testing.assert_allclose(np.hstack([p.se for p in pieces]), together.se, rtol=1e-12)
    assert (together.n_cases[1] == -1).all(), "a continuous exposure has no case count"


def test_near_perfect_fit_keeps_precision() -> None:
    # R^2 ~ 1: the |y|^2 - beta^2 |x|^2 identity would lose most digits of the RSS.
    rng = np.random.default_rng(5)
    n = 400
    covariates = random_covariates(rng, n, NAMES)
    exposure = rng.normal(size=n)
    block = (1e4 * exposure + covariates[:, 1] * 50)[:, None] + rng.normal(scale=1e-3, size=(n, 3))
    design = factorise_covariates(covariates, NAMES)
    fits = fit_exposure_slopes(design, exposure[None], np.array([False]), block)
    reference = _statsmodels_loop(covariates, exposure, block)
    np.testing.assert_allclose(fits.se[0], reference["se"], rtol=1e-6)
    np.testing.assert_allclose(fits.beta[0], reference["beta"], rtol=1e-10)


def test_statuses_instead_of_estimates() -> None:
    rng = np.random.default_rng(6)
    n = 60
    covariates = random_covariates(rng, n, NAMES)
    exposure = (rng.random(n) < 0.5).astype(float)
    block = rng.normal(size=(n, 4))
    block[:, 0] = 3.0  # constant feature
    block[5:, 1] = np.nan  # five values left for five design columns
    block[:, 2] = np.where(exposure == 1, np.nan, block[:, 2])  # no case has a value: exposure constant for this feature
    design = factorise_covariates(covariates, NAMES)
    fits = fit_exposure_slopes(design, exposure[None], np.array([True]), block)
    assert fits.status[0, 0] == FitStatus.CONSTANT_FEATURE
    assert fits.status[0, 1] == FitStatus.TOO_FEW_VALUES
    assert fits.status[0, 2] == FitStatus.FEATURE_RANK_DEFICIENT
    assert fits.status[0, 3] == FitStatus.OK
    assert np.isnan(fits.p[0, :3]).all() and np.isnan(fits.beta[0, :3]).all()


def test_rank_deficient_design_names_the_collinear_covariates() -> None:
    rng = np.random.default_rng(7)
    n = 100
    base = random_covariates(rng, n, NAMES)
    duplicated = np.column_stack([base, 2 * base[:, 1] + 3 * base[:, 2]])
    design = factorise_covariates(duplicated, NAMES + ("age_sex_mix",))
    assert design.problem is not None
    assert "'age_sex_mix'" in design.problem and "'age'" in design.problem and "'sex[male]'" in design.problem
    fits = fit_exposure_slopes(design, rng.normal(size=(1, n)), np.array([False]), rng.normal(size=(n, 3)))
    assert (fits.status == FitStatus.DESIGN_RANK_DEFICIENT).all() and np.isnan(fits.p).all()
    constant = factorise_covariates(np.column_stack([base, np.full(n, 2.0)]), NAMES + ("always_two",))
    assert "constant" in constant.problem


def test_exposure_collinear_with_covariates() -> None:
    rng = np.random.default_rng(8)
    n = 80
    covariates = random_covariates(rng, n, NAMES)
    fits = fit_exposure_slopes(factorise_covariates(covariates, NAMES), covariates[:, 2][None], np.array([True]), rng.normal(size=(n, 2)))
    assert (fits.status == FitStatus.EXPOSURE_COLLINEAR).all()


def test_projection_is_orthogonal() -> None:
    rng = np.random.default_rng(9)
    covariates = random_covariates(rng, 200, NAMES)
    design = factorise_covariates(covariates, NAMES)
    residual = project_out(design.q, rng.normal(size=(200, 5)) + covariates[:, 3:4])
    assert np.abs(design.covariates.T @ residual).max() < 1e-8


def test_clr_transform_equals_definition_over_blocks() -> None:
    rng = np.random.default_rng(10)
    values = rng.exponential(size=(50, 12)) * (rng.random((50, 12)) < 0.7)
    values[3, 4] = np.nan
    pseudocount = 0.01
    totals = [sample_summaries(values[:, s : s + 5], "clr", pseudocount) for s in range(0, 12, 5)]
    total, count = sum(t[0] for t in totals), sum(t[1] for t in totals)
    transformed = apply_transform(values, "clr", pseudocount, total, count)
    logged = np.log(values + pseudocount)
    expected = logged - np.nanmean(logged, axis=1, keepdims=True)
    np.testing.assert_allclose(transformed, expected, rtol=1e-13, atol=1e-13)
    assert np.isnan(transformed[3, 4])
    summary = feature_summary(values)
    np.testing.assert_allclose(prevalence(summary), (values > 0).sum(axis=0) / (~np.isnan(values)).sum(axis=0))


def test_design_on_a_subset_of_block_rows() -> None:
    # The kernel takes the whole block and the design's row positions: no copy per design.
    rng = np.random.default_rng(11)
    n_total, m = 400, 25
    block = rng.normal(size=(n_total, m)) * 3 + 7
    block[rng.random((n_total, m)) < 0.05] = np.nan
    rows = np.sort(rng.choice(n_total, size=260, replace=False))
    covariates = random_covariates(rng, rows.size, NAMES)
    exposure = (rng.random(rows.size) < 0.2).astype(float)
    design = factorise_covariates(covariates, NAMES)
    fits = fit_exposure_slopes(design, exposure[None], np.array([True]), block, rows)
    reference = _statsmodels_loop(covariates, exposure, block[rows])
    for name in ("beta", "se", "t", "p"):
        np.testing.assert_allclose(getattr(fits, name)[0], reference[name], rtol=RTOL, err_msg=name)
    np.testing.assert_array_equal(fits.n[0], reference["n"])


@pytest.mark.parametrize("reference", ["t", "normal"])
@pytest.mark.parametrize("missing_fraction", [0.0, 0.05])
def test_cluster_robust_equals_statsmodels(missing_fraction: float, reference: str) -> None:
    # CR1 se as statsmodels cov_type="cluster"; p from the normal as statsmodels reports it, or
    # (the default) from t with G - 1 degrees of freedom, G the families among the rows used.
    rng = np.random.default_rng(12)
    n_total, m = 420, 12
    rows = np.sort(rng.choice(n_total, size=380, replace=False))
    covariates = random_covariates(rng, rows.size, NAMES)
    exposure = (rng.random(rows.size) < 0.3).astype(float)
    families = rng.integers(0, 150, size=rows.size)
    family_effect = rng.normal(size=(150, m))
    block = rng.normal(size=(n_total, m)) + 5.0
    block[rows] += family_effect[families] + 0.3 * exposure[:, None]
    block[rng.random((n_total, m)) < missing_fraction] = np.nan
    design = factorise_covariates(covariates, NAMES)
    fits = fit_exposure_slopes(design, exposure[None], np.array([True]), block, rows, clusters=families, cluster_reference=reference)
    exog = np.column_stack([covariates, exposure])
    for j in range(m):
        present = ~np.isnan(block[rows, j])
        fit = sm.OLS(block[rows, j][present], exog[present]).fit(cov_type="cluster", cov_kwds={"groups": families[present]})
        expected_p = (
            fit.pvalues[-1] if reference == "normal" else 2 * scipy.stats.t.sf(abs(fit.tvalues[-1]), np.unique(families[present]).size - 1)
        )
        assert fits.beta[0, j] == pytest.approx(fit.params[-1], rel=RTOL)
        assert fits.se[0, j] == pytest.approx(fit.bse[-1], rel=RTOL)
        assert fits.t[0, j] == pytest.approx(fit.tvalues[-1], rel=RTOL)
        assert fits.p[0, j] == pytest.approx(expected_p, rel=RTOL)
        assert fits.n[0, j] == present.sum()


def test_designs_sharing_covariates_with_many_missing_cells() -> None:
    # lm_nonzero's case: half the cells missing, several designs over different participant
    # subsets with the same covariate columns share their Gram matrices (row atoms).
    rng = np.random.default_rng(13)
    n_total, m = 500, 20
    covariates_all = random_covariates(rng, n_total, NAMES)
    block = rng.normal(size=(n_total, m)) + 2.0
    block[rng.random((n_total, m)) < 0.5] = np.nan
    controls = rng.random(n_total) < 0.6
    designs, rows, exposures, binary = [], [], [], []
    for prevalence_of_cases in (0.1, 0.2, 0.3):
        cases = ~controls & (rng.random(n_total) < prevalence_of_cases * 3)
        design_rows = np.flatnonzero(controls | cases)
        designs.append(factorise_covariates(covariates_all[design_rows], NAMES))
        rows.append(design_rows)
        exposures.append(np.stack([cases[design_rows].astype(float), rng.normal(size=design_rows.size)]))
        binary.append(np.array([True, False]))
    everyone = np.arange(n_total)
    designs.append(factorise_covariates(covariates_all, NAMES))
    rows.append(everyone)
    exposures.append((rng.random((1, n_total)) < 0.3).astype(float))
    binary.append(np.array([True]))
    from scalable_assoc.models import fit_design_batch, prepare_block

    fits = fit_design_batch(designs, rows, exposures, binary, prepare_block(block))
    for design_fits, design_rows, design_exposures in zip(fits, rows, exposures, strict=True):
        for e in range(design_exposures.shape[0]):
            reference = _statsmodels_loop(covariates_all[design_rows], design_exposures[e], block[design_rows])
            for name in ("beta", "se", "p"):
                np.testing.assert_allclose(getattr(design_fits, name)[e], reference[name], rtol=RTOL, err_msg=name)
            np.testing.assert_array_equal(design_fits.n[e], reference["n"])
