"""The random-intercept linear mixed model (REML) against lme4, OLS and itself.

- tests/reference/lmm/make_reference.R -> lmm_data.tsv, lmm_reference.tsv:
  lme4::lmer(feature ~ case + age + site + sex + (1 | family_id), REML = TRUE)
  per feature, na.omit, 391 participants in 151 families after a missing age;
  feature1 is a boundary fit (sigma_u^2 = 0), feature6 has missing values.
  Tolerance: relative 1e-5 on beta, se, sigma_u^2 and sigma_e^2 (1e-8 absolute
  for a zero sigma_u^2). Both sides locate the REML optimum to ~1e-7 in lambda
  (the deviance is flat to rounding there), which is what limits agreement.
- With every cluster of size 1, or at the boundary, the model is OLS: equal to
  statsmodels OLS to relative 1e-8.
- p-values use the residual df; for this within-family exposure they are within
  1% (measured: 0.13%) of lmerTest's Satterthwaite p-values.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from scalable_assoc.io.metadata import complete_rows, covariate_columns
from scalable_assoc.models import FitStatus, factorise_covariates
from scalable_assoc.models.lmm import fit_random_intercept

REFERENCE = Path(__file__).parent / "reference" / "lmm"
FEATURES = [f"feature{j}" for j in range(1, 7)]


@pytest.fixture(scope="module")
def reference_data() -> dict:
    data = pd.read_csv(REFERENCE / "lmm_data.tsv", sep="\t", dtype={"sample_id": str})
    covariates = ("age", "site", "sex")
    rows = np.flatnonzero(complete_rows(data, covariates))
    matrix, names = covariate_columns(data, covariates, ("site", "sex"), rows)
    assert names == ("(intercept)", "age", "site[north]", "site[south]", "sex[m]")  # reference levels 'east', 'f'
    return {
        "data": data,
        "rows": rows,
        "matrix": matrix,
        "design": factorise_covariates(matrix, names),
        "block": data[FEATURES].to_numpy(float),  # all 400 rows: the kernel selects `rows`
        "clusters": pd.factorize(data["family_id"].iloc[rows])[0],
        "exposure": data["case"].to_numpy(float)[rows],
    }


def _ols(matrix: np.ndarray, exposure: np.ndarray, y: np.ndarray) -> sm.regression.linear_model.RegressionResults:
    """statsmodels OLS of y on [covariates, exposure], missing y dropped."""
    present = ~np.isnan(y)
    return sm.OLS(y[present], np.column_stack([matrix, exposure])[present]).fit()


def test_equals_lme4(reference_data: dict) -> None:
    d = reference_data
    reference = pd.read_csv(REFERENCE / "lmm_reference.tsv", sep="\t").set_index("feature")
    fits, components = fit_random_intercept(d["design"], d["exposure"][None], np.array([True]), d["block"], d["clusters"], d["rows"])
    assert np.all(fits.status == FitStatus.OK)
    for j, feature in enumerate(FEATURES):
        expected = reference.loc[feature]
        assert fits.n[0, j] == expected["n"]
        assert fits.beta[0, j] == pytest.approx(expected["beta"], rel=1e-5), feature
        assert fits.se[0, j] == pytest.approx(expected["se"], rel=1e-5), feature
        assert components.sigma_e2[0, j] == pytest.approx(expected["sigma_e2"], rel=1e-5), feature
        assert components.sigma_u2[0, j] == pytest.approx(expected["sigma_u2"], rel=1e-5, abs=1e-8), feature
    assert components.sigma_u2[0, 0] == 0.0  # the boundary fit is exactly at lambda = 0
    # p on the residual df: close to lmerTest's Satterthwaite for this within-family exposure.
    np.testing.assert_allclose(fits.p[0], reference["p_satterthwaite"].to_numpy(), rtol=0.01)


def test_boundary_fit_is_ols(reference_data: dict) -> None:
    d = reference_data
    fits, components = fit_random_intercept(d["design"], d["exposure"][None], np.array([True]), d["block"], d["clusters"], d["rows"])
    expected = _ols(d["matrix"], d["exposure"], d["block"][d["rows"], 0])
    assert components.ratio[0, 0] == 0.0
    assert fits.beta[0, 0] == pytest.approx(expected.params[-1], rel=1e-8)
    assert fits.se[0, 0] == pytest.approx(expected.bse[-1], rel=1e-8)
    assert fits.p[0, 0] == pytest.approx(expected.pvalues[-1], rel=1e-8)
    assert components.sigma_e2[0, 0] == pytest.approx(expected.scale, rel=1e-8)


def test_singleton_clusters_are_ols(reference_data: dict) -> None:
    d = reference_data
    singletons = np.arange(d["rows"].size)
    exposures = np.stack([d["exposure"], d["matrix"][:, 1] ** 2])  # binary and continuous
    fits, components = fit_random_intercept(d["design"], exposures, np.array([True, False]), d["block"], singletons, d["rows"])
    assert np.all(components.ratio == 0.0)
    for e in range(2):
        for j in range(len(FEATURES)):
            expected = _ols(d["matrix"], exposures[e], d["block"][d["rows"], j])
            assert fits.beta[e, j] == pytest.approx(expected.params[-1], rel=1e-8)
            assert fits.se[e, j] == pytest.approx(expected.bse[-1], rel=1e-8)
            assert fits.p[e, j] == pytest.approx(expected.pvalues[-1], rel=1e-8)
            assert fits.n[e, j] == expected.nobs


def _simulated(seed: int, n_families: int = 90, m: int = 7, missing: float = 0.1) -> dict:
    """Families of 1-6 members, a design with a factor, features with varied family variance and missing values."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, n_families)
    clusters = rng.permutation(np.repeat(np.arange(n_families), sizes))
    n = clusters.size
    matrix = np.column_stack([np.ones(n), rng.normal(40, 10, n), rng.integers(0, 2, n), rng.integers(0, 2, n)])
    design = factorise_covariates(matrix, ("(intercept)", "age", "a", "b"))
    family_level = rng.normal(size=n_families)[clusters]  # constant within families
    exposures = np.stack([rng.integers(0, 2, n).astype(float), rng.normal(size=n) + family_level, (family_level > 0).astype(float)])
    shares = np.linspace(0.0, 0.8, m)
    block = (
        rng.normal(size=(n_families, m))[clusters] * np.sqrt(shares)
        + rng.normal(size=(n, m)) * np.sqrt(1 - shares)
        + 0.2 * exposures[0][:, None]
        + 0.01 * matrix[:, 1:2]
    )
    block[rng.random((n, m)) < missing] = np.nan
    block[:, 0] = np.where(rng.random(n) < 0.5, np.nan, block[:, 0])  # many missing: whole families drop out
    return {
        "design": design,
        "matrix": matrix,
        "clusters": clusters,
        "exposures": exposures,
        "binary": np.array([True, False, True]),
        "block": block,
    }


def _assert_same(first: tuple, second: tuple, rtol: float) -> None:
    (fits_a, comp_a), (fits_b, comp_b) = first, second
    for name in ("beta", "se", "t", "p"):
        np.testing.assert_allclose(getattr(fits_a, name), getattr(fits_b, name), rtol=rtol, err_msg=name)
    for name in ("n", "n_cases", "n_controls", "status"):
        np.testing.assert_array_equal(getattr(fits_a, name), getattr(fits_b, name), err_msg=name)
    np.testing.assert_allclose(comp_a.sigma_e2, comp_b.sigma_e2, rtol=rtol)
    np.testing.assert_allclose(comp_a.sigma_u2, comp_b.sigma_u2, rtol=rtol, atol=1e-12)


def test_chunks_and_exposures_are_independent() -> None:
    s = _simulated(3)
    whole = fit_random_intercept(s["design"], s["exposures"], s["binary"], s["block"], s["clusters"])
    assert np.all(whole[0].status == FitStatus.OK)
    assert np.any(whole[1].ratio == 0.0) and np.any(whole[1].ratio > 0.1)
    m = s["block"].shape[1]
    chunks = [
        fit_random_intercept(s["design"], s["exposures"], s["binary"], s["block"][:, j : j + 2], s["clusters"]) for j in range(0, m, 2)
    ]
    fits = [chunk[0] for chunk in chunks]
    joined = (
        type(whole[0])(*(np.concatenate([getattr(f, name) for f in fits], axis=1) for name in whole[0].__dataclass_fields__)),
        type(whole[1])(*(np.concatenate([getattr(c[1], name) for c in chunks], axis=1) for name in ("sigma_u2", "sigma_e2"))),
    )
    _assert_same(whole, joined, rtol=1e-10)
    for e in range(3):
        alone = fit_random_intercept(s["design"], s["exposures"][e : e + 1], s["binary"][e : e + 1], s["block"], s["clusters"])
        sliced = (
            type(whole[0])(*(getattr(whole[0], name)[e : e + 1] for name in whole[0].__dataclass_fields__)),
            type(whole[1])(whole[1].sigma_u2[e : e + 1], whole[1].sigma_e2[e : e + 1]),
        )
        _assert_same(sliced, alone, rtol=1e-10)


def test_missing_values_equal_fitting_present_rows_only() -> None:
    """A feature's missing cells change its cluster sizes: the fit equals one over its present rows only."""
    s = _simulated(5)
    fits, components = fit_random_intercept(s["design"], s["exposures"], s["binary"], s["block"], s["clusters"])
    for j in (0, 3, 6):
        present = np.flatnonzero(~np.isnan(s["block"][:, j]))
        design = factorise_covariates(s["matrix"][present], s["design"].names)
        codes = np.unique(s["clusters"][present], return_inverse=True)[1]
        alone, alone_components = fit_random_intercept(
            design, s["exposures"][:, present], s["binary"], s["block"][present, j : j + 1], codes
        )
        np.testing.assert_allclose(fits.beta[:, j], alone.beta[:, 0], rtol=1e-9)
        np.testing.assert_allclose(fits.se[:, j], alone.se[:, 0], rtol=1e-9)
        np.testing.assert_allclose(components.sigma_u2[:, j], alone_components.sigma_u2[:, 0], rtol=1e-8, atol=1e-12)
        np.testing.assert_array_equal(fits.n[:, j], present.size)


def test_rows_select_the_design_participants(reference_data: dict) -> None:
    d = reference_data
    exposure, binary = d["exposure"][None], np.array([True])
    padded = fit_random_intercept(d["design"], exposure, binary, d["block"], d["clusters"], d["rows"])
    subset = fit_random_intercept(d["design"], exposure, binary, d["block"][d["rows"]], d["clusters"])
    _assert_same(padded, subset, rtol=1e-10)
    sparse_codes = fit_random_intercept(d["design"], exposure, binary, d["block"], d["clusters"] * 1000 + 7, d["rows"])
    _assert_same(padded, sparse_codes, rtol=1e-10)


def test_statuses() -> None:
    s = _simulated(7, n_families=30, missing=0.0)
    block = s["block"][:, 1:5].copy()  # column 0 of the simulation has many missing values
    n = block.shape[0]
    block[5:, 1] = np.nan  # 5 values for 5 design columns: no residual df
    block[:, 2] = 3.0  # constant
    block[s["matrix"][:, 2] == 1, 3] = np.nan  # covariate 'a' is constant among this feature's participants
    exposures = np.stack([s["exposures"][0], s["matrix"][:, 2]])  # the second equals a covariate
    fits, components = fit_random_intercept(s["design"], exposures, np.array([True, True]), block, s["clusters"])
    assert fits.status[0].tolist() == [
        FitStatus.OK,
        FitStatus.TOO_FEW_VALUES,
        FitStatus.CONSTANT_FEATURE,
        FitStatus.FEATURE_RANK_DEFICIENT,
    ]
    assert np.all(fits.status[1] == FitStatus.EXPOSURE_COLLINEAR)
    assert np.isnan(fits.beta[0, 1]) and np.isnan(components.sigma_u2[0, 1]) and fits.n[0, 1] == 5
    assert np.isfinite(fits.p[0, 0]) and np.isnan(fits.p[0, 3])
    duplicated = factorise_covariates(np.column_stack([s["matrix"], s["matrix"][:, 1]]), (*s["design"].names, "age2"))
    fits, _ = fit_random_intercept(duplicated, exposures[:1], np.array([True]), block, s["clusters"])
    assert np.all(fits.status == FitStatus.DESIGN_RANK_DEFICIENT) and fits.n[0, 0] == n
    with pytest.raises(ValueError, match="must agree"):
        fit_random_intercept(s["design"], exposures, np.array([True, True]), block, s["clusters"][1:])


def test_no_within_cluster_variation_is_not_converged() -> None:
    """A feature constant within every family has sigma_e^2 -> 0: REML runs off to lambda = infinity."""
    s = _simulated(7, n_families=30, missing=0.0)
    block = s["block"][:, 1:3].copy()
    block[:, 0] = np.random.default_rng(0).normal(size=30)[s["clusters"]]
    fits, components = fit_random_intercept(s["design"], s["exposures"], s["binary"], block, s["clusters"])
    assert np.all(fits.status[:, 0] == FitStatus.NOT_CONVERGED) and np.all(np.isnan(fits.p[:, 0]))
    assert np.all(fits.status[:, 1] == FitStatus.OK) and np.all(components.ratio[:, 1] > 0)


def test_result_rows_carry_components_only_where_ok() -> None:
    """fits_to_table: variance components and icc on OK lmm rows, null (not NaN) on the others and for other models."""
    import pyarrow.compute as pc

    from scalable_assoc.results.columns import PARTIAL_SCHEMA
    from scalable_assoc.results.partials import AnalysisLabels, fits_to_table

    s = _simulated(7, n_families=30, missing=0.0)
    block = s["block"][:, 1:4].copy()
    block[:, 1] = 3.0  # constant: no estimate
    fits, components = fit_random_intercept(s["design"], s["exposures"][:2], s["binary"][:2], block, s["clusters"])
    labels = [AnalysisLabels(f"e{e}", "base", "lmm", "age+a+b", f"id{e}", bool(s["binary"][e])) for e in range(2)]
    table = fits_to_table("species", ["f0", "f1", "f2"], labels, fits, None, components)
    assert table.schema.equals(PARTIAL_SCHEMA)
    ok = (fits.status == FitStatus.OK).ravel()
    assert ok.sum() == 4 and not ok[[1, 4]].any()
    expected = {"cluster_variance": components.sigma_u2, "residual_variance": components.sigma_e2, "icc": components.icc}
    for name, values in expected.items():
        column = table.column(name).combine_chunks()
        np.testing.assert_array_equal(column.is_null().to_numpy(zero_copy_only=False), ~ok, err_msg=name)
        assert not pc.any(pc.is_nan(column)).as_py()
        np.testing.assert_array_equal(column.to_numpy(zero_copy_only=False)[ok], values.ravel()[ok])
    icc = table.column("icc").to_numpy(zero_copy_only=False)[ok]
    assert np.all((icc >= 0) & (icc <= 1))
    plain = fits_to_table("species", ["f0", "f1", "f2"], labels, fits, None)  # other models pass no components
    assert all(plain.column(name).null_count == plain.num_rows for name in expected)
