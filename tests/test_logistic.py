"""The batched logistic (prevalence) kernel against statsmodels, Firth references and its statuses.

Tolerances: relative 1e-6 on beta, se and p against statsmodels' Newton fit
(``Logit(...).fit(method="newton", tol=1e-12)``); relative 1e-5 on Firth
estimates against a direct BFGS maximisation of the penalised log-likelihood;
1e-9 on beta and se between different batchings of the same features (a batching
can change at which pass a feature stops, and a variance taken one short final
step before the estimate is corrected along it to 1e-9, see
``_CORRECTED_VARIANCE``), 1e-7 on p (whose relative error is about z^2 times se's).
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import statsmodels.api as sm

from scalable_assoc.models import FitStatus, factorise_covariates
from scalable_assoc.models.logistic import PresenceBlock, fit_logistic_designs, fit_logistic_slopes
from scalable_assoc.testing import random_covariates

RTOL = 1e-6
NAMES = ("(intercept)", "age", "sex[male]", "read_depth", "bmi")


def _presence(rng: np.random.Generator, covariates: np.ndarray, exposures: np.ndarray, m: int) -> np.ndarray:
    """``(n, m)`` 0/1 presence with prevalences from 10% to 90%, depending on depth and the exposures."""
    prevalence = np.linspace(0.1, 0.9, m)
    depth = (covariates[:, 3:4] - 1e7) / 2e6
    effects = rng.normal(0, 0.4, size=(exposures.shape[0], m))
    linear = np.log(prevalence / (1 - prevalence)) + 0.5 * depth + 0.02 * (covariates[:, 1:2] - 50) + exposures.T @ effects
    return (rng.random(linear.shape) < 1 / (1 + np.exp(-linear))).astype(float)


def _statsmodels(covariates: np.ndarray, exposure: np.ndarray, presence: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.full(presence.shape[1], np.nan) for k in ("beta", "se", "p", "n")}
    design = np.column_stack([covariates, exposure])
    for j in range(presence.shape[1]):
        fit = sm.Logit(presence[:, j], design, missing="drop").fit(disp=0, method="newton", maxiter=100, tol=1e-12)
        out["beta"][j], out["se"][j], out["p"][j], out["n"][j] = fit.params[-1], fit.bse[-1], fit.pvalues[-1], fit.nobs
    return out


def _assert_equals_statsmodels(fits, e: int, covariates: np.ndarray, exposure: np.ndarray, presence: np.ndarray) -> None:
    ok = fits.status[e] == FitStatus.OK
    assert ok.all(), f"statuses {fits.status[e]}"
    reference = _statsmodels(covariates, exposure, presence)
    for name in ("beta", "se", "p"):
        np.testing.assert_allclose(getattr(fits, name)[e], reference[name], rtol=RTOL, err_msg=name)
    np.testing.assert_array_equal(fits.n[e], reference["n"])
    np.testing.assert_allclose(fits.t[e], fits.beta[e] / fits.se[e], rtol=1e-14)


@pytest.mark.parametrize("missing_fraction", [0.0, 0.03])
def test_every_estimate_equals_statsmodels(missing_fraction: float) -> None:
    rng = np.random.default_rng(21)
    n, m = 1000, 24
    covariates = random_covariates(rng, n, NAMES)
    exposures = np.stack([(rng.random(n) < 0.3).astype(float), rng.normal(size=n)])
    presence = _presence(rng, covariates, exposures, m)
    presence[rng.random((n, m)) < missing_fraction] = np.nan
    design = factorise_covariates(covariates, NAMES)
    fits = fit_logistic_slopes(design, exposures, np.array([True, False]), presence)
    for e in range(2):
        _assert_equals_statsmodels(fits, e, covariates, exposures[e], presence)
    used = ~np.isnan(presence)
    np.testing.assert_array_equal(fits.n_cases[0], (used & (exposures[0][:, None] == 1)).sum(axis=0))
    np.testing.assert_array_equal(fits.n_controls[0], (used & (exposures[0][:, None] == 0)).sum(axis=0))
    assert (fits.n_cases[1] == -1).all() and (fits.n_controls[1] == -1).all(), "a continuous exposure has no case count"


def test_design_on_a_subset_of_block_rows() -> None:
    rng = np.random.default_rng(22)
    n_total, m = 1300, 16
    rows = np.sort(rng.choice(n_total, size=900, replace=False))
    covariates = random_covariates(rng, rows.size, NAMES)
    exposure = (rng.random(rows.size) < 0.25).astype(float)
    block = np.full((n_total, m), np.nan)
    block[rows] = _presence(rng, covariates, exposure[None], m)
    others = np.setdiff1d(np.arange(n_total), rows)
    block[others] = (rng.random((others.size, m)) < 0.5).astype(float)  # not the design's: must be ignored
    block[rng.random((n_total, m)) < 0.02] = np.nan
    design = factorise_covariates(covariates, NAMES)
    fits = fit_logistic_slopes(design, exposure[None], np.array([True]), block, rows)
    _assert_equals_statsmodels(fits, 0, covariates, exposure, block[rows])


def _penalised_reference(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Firth's estimate by BFGS on l(b) + 0.5 log det(X'WX) itself (central-difference gradient)."""

    def negative(b: np.ndarray) -> float:
        eta = design @ b
        mu = 1 / (1 + np.exp(-eta))
        _, logdet = np.linalg.slogdet(design.T @ (design * (mu * (1 - mu))[:, None]))
        return -(np.sum(y * eta - np.logaddexp(0, eta)) + 0.5 * logdet)

    def gradient(b: np.ndarray) -> np.ndarray:
        step = 1e-5
        return np.array([(negative(b + step * e) - negative(b - step * e)) / (2 * step) for e in np.eye(b.size)])

    result = scipy.optimize.minimize(
        negative, np.zeros(design.shape[1]), jac=gradient, method="BFGS", options={"gtol": 1e-9, "maxiter": 5000}
    )
    assert np.abs(gradient(result.x)).max() < 1e-6, result.message
    return result.x


def _standardised(covariates: np.ndarray) -> np.ndarray:
    # Firth's estimate is invariant to affine changes of the covariates (the penalty
    # moves by a constant), so the reference may use a well-conditioned design.
    out = covariates.copy()
    out[:, 1:] = (covariates[:, 1:] - covariates[:, 1:].mean(axis=0)) / covariates[:, 1:].std(axis=0)
    return out


def test_quasi_complete_separation_gets_firth_estimate() -> None:
    rng = np.random.default_rng(23)
    n = 600
    covariates = random_covariates(rng, n, NAMES)
    exposure = (rng.random(n) < 0.08).astype(float)
    presence = (rng.random((n, 3)) < 0.4).astype(float)
    presence[exposure == 1, 0] = 1.0  # every case has the feature
    presence[exposure == 1, 1] = 0.0  # no case has the feature
    presence[rng.random(n) < 0.05, 1] = np.nan
    design = factorise_covariates(covariates, NAMES)
    fits = fit_logistic_slopes(design, exposure[None], np.array([True]), presence)
    assert list(fits.status[0]) == [FitStatus.FIRTH, FitStatus.FIRTH, FitStatus.OK]
    assert np.all(np.abs(fits.beta[0, :2]) < 10) and np.all(np.isfinite(fits.se[0, :2]))
    for j in range(2):
        used = ~np.isnan(presence[:, j])
        reference = _penalised_reference(np.column_stack([_standardised(covariates[used]), exposure[used]]), presence[used, j])
        assert fits.beta[0, j] == pytest.approx(reference[-1], rel=1e-5)
        assert fits.p[0, j] == pytest.approx(2 * scipy.stats.norm.sf(abs(fits.beta[0, j] / fits.se[0, j])), rel=1e-10)

    without = fit_logistic_slopes(design, exposure[None], np.array([True]), presence, firth=False)
    assert list(without.status[0]) == [FitStatus.SEPARATION, FitStatus.SEPARATION, FitStatus.OK]
    assert np.isnan(without.beta[0, :2]).all() and np.isnan(without.p[0, :2]).all()
    assert without.beta[0, 2] == fits.beta[0, 2]


def test_complete_separation_without_covariates_matches_the_closed_form() -> None:
    # Intercept and one binary exposure (a saturated model): Firth's estimate is the
    # log odds ratio with 1/2 added to every cell of the 2x2 table, and its variance
    # the inverse Fisher information at the fitted cell probabilities.
    rng = np.random.default_rng(24)
    n = 400
    exposure = (rng.random(n) < 0.2).astype(float)
    presence = np.column_stack([exposure, 1 - exposure])  # present exactly in the cases / controls
    design = factorise_covariates(np.ones((n, 1)), ("(intercept)",))
    fits = fit_logistic_slopes(design, exposure[None], np.array([True]), presence)
    assert (fits.status == FitStatus.FIRTH).all()
    cases, controls = exposure.sum(), n - exposure.sum()
    log_odds_ratio = np.log((cases + 0.5) * (controls + 0.5) / 0.25)
    np.testing.assert_allclose(fits.beta[0], [log_odds_ratio, -log_odds_ratio], rtol=1e-10)
    in_cases, in_controls = (cases + 0.5) / (cases + 1), 0.5 / (controls + 1)
    variance = 1 / (cases * in_cases * (1 - in_cases)) + 1 / (controls * in_controls * (1 - in_controls))
    # se to 1e-9: the variance may be taken one short final step before the estimate
    # and corrected along it (to _CORRECTED_VARIANCE).
    np.testing.assert_allclose(fits.se[0], np.sqrt(variance), rtol=1e-9)
    reference = _penalised_reference(np.column_stack([np.ones(n), exposure]), presence[:, 0])
    assert fits.beta[0, 0] == pytest.approx(reference[-1], rel=1e-5)


def test_complete_separation_found_by_divergence() -> None:
    # A continuous exposure separating perfectly: no level shows it, Newton's iterations do.
    rng = np.random.default_rng(25)
    n = 500
    covariates = random_covariates(rng, n, NAMES)
    exposure = rng.normal(size=n)
    presence = np.column_stack([(exposure > 0.3).astype(float), (rng.random(n) < 0.5).astype(float)])
    design = factorise_covariates(covariates, NAMES)
    fits = fit_logistic_slopes(design, exposure[None], np.array([False]), presence)
    assert list(fits.status[0]) == [FitStatus.FIRTH, FitStatus.OK]
    reference = _penalised_reference(np.column_stack([_standardised(covariates), exposure]), presence[:, 0])
    assert fits.beta[0, 0] == pytest.approx(reference[-1], rel=1e-5)
    without = fit_logistic_slopes(design, exposure[None], np.array([False]), presence, firth=False)
    assert without.status[0, 0] == FitStatus.SEPARATION and np.isnan(without.beta[0, 0])


@pytest.mark.parametrize("checked_together", [0, 4, 10**6])
def test_wild_steps_are_halved_whether_checked_in_the_pass_or_apart(monkeypatch: pytest.MonkeyPatch, checked_together: int) -> None:
    # Newton's steps from the constant fit rarely lower a logistic log-likelihood, so the
    # start is made wild on purpose (25 times its step for three features, far beyond
    # the optimum): the halving must bring them back, whether their log-likelihoods come
    # from the pass of all features (10**6) or from a pass of their own (0).
    from scalable_assoc.models.logistic import newton

    rng = np.random.default_rng(31)
    n, m = 600, 12
    covariates = random_covariates(rng, n, NAMES)
    exposure = (rng.random(n) < 0.4).astype(float)
    presence = _presence(rng, covariates, exposure[None], m)
    design = factorise_covariates(covariates, NAMES)
    expected = fit_logistic_slopes(design, exposure[None], np.array([True]), presence)
    start, halved = newton.start, []
    evaluate = newton.evaluate

    def wild_start(*args, **kwargs):  # type: ignore[no-untyped-def]
        point = start(*args, **kwargs)
        point.delta[:, :3] *= 25.0
        return point

    def counting_evaluate(basis, y, missing, coefficients, fisher=True, score=True, loglik=False, *args, **kwargs):  # type: ignore[no-untyped-def]
        if fisher and loglik and y.shape[1] < m:
            halved.append(y.shape[1])
        return evaluate(basis, y, missing, coefficients, fisher, score, loglik, *args, **kwargs)

    monkeypatch.setattr(newton, "start", wild_start)
    monkeypatch.setattr(newton, "evaluate", counting_evaluate)
    monkeypatch.setattr(newton, "CHECKED_TOGETHER", checked_together)
    fits = fit_logistic_slopes(design, exposure[None], np.array([True]), presence)
    assert halved, "no step was halved: the test lost its point"
    assert (fits.status == FitStatus.OK).all()
    for name in ("beta", "se"):
        np.testing.assert_allclose(getattr(fits, name), getattr(expected, name), rtol=1e-8, err_msg=name)


def test_statuses_instead_of_estimates() -> None:
    rng = np.random.default_rng(26)
    n = 300
    covariates = random_covariates(rng, n, NAMES)
    exposure = (rng.random(n) < 0.3).astype(float)
    presence = (rng.random((n, 6)) < 0.5).astype(float)
    presence[:, 0] = 0.0
    presence[:3, 0] = 1.0  # present in 3 participants
    presence[:, 1] = 1.0
    presence[:4, 1] = 0.0  # absent in 4
    presence[:, 2] = 0.0  # never present
    presence[exposure == 1, 3] = np.nan  # no case left: exposure constant for this feature
    presence[covariates[:, 2] == 1, 4] = np.nan  # one sex left: the sex column is constant
    design = factorise_covariates(covariates, NAMES)
    fits = fit_logistic_slopes(design, exposure[None], np.array([True]), presence, min_events=5)
    expected = [FitStatus.TOO_FEW_EVENTS] * 3 + [FitStatus.FEATURE_RANK_DEFICIENT] * 2 + [FitStatus.OK]
    assert list(fits.status[0]) == expected
    assert np.isnan(fits.beta[0, :5]).all() and np.isnan(fits.se[0, :5]).all() and np.isnan(fits.p[0, :5]).all()
    assert np.isfinite(fits.p[0, 5])
    assert fits.n[0, 3] == (exposure == 0).sum() and fits.n_cases[0, 3] == 0

    collinear = fit_logistic_slopes(design, covariates[:, 2][None], np.array([True]), presence)
    assert (collinear.status == FitStatus.EXPOSURE_COLLINEAR).all() and np.isnan(collinear.beta).all()

    duplicated = np.column_stack([covariates, 2 * covariates[:, 1]])
    broken = factorise_covariates(duplicated, NAMES + ("twice_age",))
    assert broken.problem is not None
    deficient = fit_logistic_slopes(broken, exposure[None], np.array([True]), presence)
    assert (deficient.status == FitStatus.DESIGN_RANK_DEFICIENT).all() and np.isnan(deficient.p).all()
    assert (deficient.n_cases == -1).all() and (deficient.n_controls == -1).all()  # as OLS: no case counts

    with pytest.raises(ValueError, match="presence"):
        fit_logistic_slopes(design, exposure[None], np.array([True]), presence * 2)


def test_chunks_and_exposures_do_not_change_the_fits() -> None:
    rng = np.random.default_rng(27)
    n, m = 700, 40
    covariates = random_covariates(rng, n, NAMES)
    exposures = np.stack([(rng.random(n) < 0.1).astype(float), rng.normal(size=n), (rng.random(n) < 0.5).astype(float)])
    binary = np.array([True, False, True])
    presence = _presence(rng, covariates, exposures, m)
    presence[exposures[0] == 1, 5] = 1.0  # quasi-complete separation: Firth fits among the others
    presence[exposures[0] == 1, 17] = 0.0
    presence[:, 30] = 0.0
    presence[:2, 30] = 1.0  # too few events
    presence[rng.random((n, m)) < 0.02] = np.nan
    design = factorise_covariates(covariates, NAMES)
    together = fit_logistic_slopes(design, exposures, binary, presence)
    assert {FitStatus.OK, FitStatus.FIRTH, FitStatus.TOO_FEW_EVENTS} <= set(together.status.ravel().tolist())

    pieces = [fit_logistic_slopes(design, exposures, binary, presence[:, s : s + 7]) for s in range(0, m, 7)]
    # p's relative error is about z^2 times se's (z reaches 9 here): 1e-7 for p.
    tolerances = {"beta": 1e-9, "se": 1e-9, "p": 1e-7}
    for name, rtol in tolerances.items():
        np.testing.assert_allclose(np.hstack([getattr(p, name) for p in pieces]), getattr(together, name), rtol=rtol, err_msg=name)
    for name in ("status", "n", "n_cases", "n_controls"):
        np.testing.assert_array_equal(np.hstack([getattr(p, name) for p in pieces]), getattr(together, name), err_msg=name)

    for e in range(3):
        alone = fit_logistic_slopes(design, exposures[e : e + 1], binary[e : e + 1], presence)
        for name, rtol in tolerances.items():
            np.testing.assert_allclose(getattr(alone, name)[0], getattr(together, name)[e], rtol=rtol, err_msg=name)
        np.testing.assert_array_equal(alone.status[0], together.status[e])


def test_designs_fitted_together_equal_each_fitted_alone() -> None:
    # Designs on two participant subsets, interleaved: the batch shares one view per
    # subset (in its own order) and must return each design's fits in the given order.
    rng = np.random.default_rng(29)
    n_total, m = 900, 30
    covariates = random_covariates(rng, n_total, NAMES)
    exposure = (rng.random(n_total) < 0.3).astype(float)
    presence = _presence(rng, covariates, exposure[None], m)
    presence[exposure == 1, 4] = 1.0  # quasi-complete separation in every design: Firth fits,
    presence[exposure == 1, 9] = 0.0  # the later ones started from the earlier ones' estimates
    presence[rng.random((n_total, m)) < 0.03] = np.nan
    first, second = np.arange(0, 800), np.arange(150, 900)
    designs, rows = [], []
    for subset, columns in [(first, 5), (second, 5), (first, 3), (second, 4)]:
        designs.append(factorise_covariates(covariates[subset][:, :columns], NAMES[:columns]))
        rows.append(subset)
    exposures = [exposure[r][None] for r in rows]
    binary = [np.array([True])] * len(rows)
    together = fit_logistic_designs(designs, rows, exposures, binary, PresenceBlock(presence))
    for index, fits in enumerate(together):
        assert (fits.status[0, [4, 9]] == FitStatus.FIRTH).all()
        alone = fit_logistic_slopes(designs[index], exposures[index], binary[index], presence, rows[index])
        # Other starts (Firth's) and stopping passes: equal to the batching tolerances.
        for name, rtol in {"beta": 1e-9, "se": 1e-9, "p": 1e-7}.items():
            np.testing.assert_allclose(getattr(fits, name), getattr(alone, name), rtol=rtol, err_msg=f"design {index} {name}")
        for name in ("status", "n", "n_cases", "n_controls"):
            np.testing.assert_array_equal(getattr(fits, name), getattr(alone, name), err_msg=f"design {index} {name}")
    with pytest.raises(ValueError, match="presence"):
        PresenceBlock(presence * 2)


def test_pass_log_likelihood_matches_the_direct_formula_even_where_exp_overflows() -> None:
    # The pass's log-likelihood, (1 - y)(-eta) + log mu per cell, in double and single
    # precision, against -log(1 + exp(-s eta)); the last feature's predictors reach
    # -900, where exp(-eta) overflows in either precision (the overflow-free fallback).
    from scalable_assoc.models.logistic.packed import Cells, make_basis
    from scalable_assoc.models.logistic.passes import evaluate

    rng = np.random.default_rng(28)
    n, m = 400, 4
    basis = make_basis(np.linalg.qr(np.column_stack([np.ones(n), rng.normal(size=(n, 2))]))[0])
    coefficients = rng.normal(0, 20, size=(3, m))
    coefficients[:, -1] = [-900 * np.sqrt(n) * np.sign(basis.matrix[0, 0]), 0.0, 0.0]  # eta = -900 for everyone
    y = (rng.random((n, m)) < 0.5).astype(float)
    missing = Cells(np.array([3, 7]), np.array([1, 2]))
    y[missing.rows, missing.columns] = 0.0
    eta = basis.matrix @ coefficients
    cells = np.logaddexp(0.0, -(2 * y - 1) * eta)
    cells[missing.rows, missing.columns] = 0.0
    expected = -cells.sum(axis=0)
    for single, rtol in ((False, 1e-12), (True, 1e-6)):
        got = evaluate(basis, y, missing, coefficients, fisher=False, score=False, loglik=True, single=single).loglik
        np.testing.assert_allclose(got, expected, rtol=rtol, err_msg=f"single={single}")
