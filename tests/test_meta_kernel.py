"""The meta-analysis kernel (scalable_assoc.stats.meta.py) against R metafor, and its edge cases.

- tests/reference/meta/make_input.py -> meta_input.tsv: 41 rows x 4 cohorts
  (homogeneous, strongly heterogeneous, 3 and 2 cohorts, very unequal se,
  identical cohorts, a single cohort).
- tests/reference/meta/metafor_reference.R -> metafor_reference.tsv:
  metafor::rma.uni per row, methods FE, DL, REML, PM, each with test "z" and
  "knha", and leave1out() of the REML fits. Tolerance: relative 1e-6 with an
  absolute floor of 1e-10 (tau2 and I2 are 0 in many rows).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.stats.meta import METHODS, MetaFits, combine_estimates, direction_strings, leave_one_out

REFERENCE = Path(__file__).parent / "reference" / "meta"
RTOL, ATOL = 1e-6, 1e-10
#: Our MetaFits field for each metafor column.
FIELDS = {"estimate": "beta", "se": "se", "pval": "p", "tau2": "tau2", "QE": "q_stat", "QEp": "q_p", "I2": "i2"}


@pytest.fixture(scope="module")
def cohorts() -> tuple[np.ndarray, np.ndarray]:
    table = pd.read_csv(REFERENCE / "meta_input.tsv", sep="\t")
    assert (table["row"].to_numpy() == np.arange(1, len(table) + 1)).all()
    beta = table[[f"beta_{j}" for j in range(1, 5)]].to_numpy(float)
    se = table[[f"se_{j}" for j in range(1, 5)]].to_numpy(float)
    return beta, se


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "metafor_reference.tsv", sep="\t", comment="#")


def _fits(reference: pd.DataFrame, method: str, test: str) -> pd.DataFrame:
    rows = reference[(reference["method"] == method) & (reference["test"] == test) & (reference["omitted"] == 0)]
    return rows.sort_values("row")


@pytest.mark.parametrize("test", ["z", "knha"])
@pytest.mark.parametrize("method", ["FE", "DL", "REML", "PM"])
def test_combine_equals_metafor(cohorts: tuple[np.ndarray, np.ndarray], reference: pd.DataFrame, method: str, test: str) -> None:
    beta, se = cohorts
    fits = combine_estimates(beta, se, method.lower(), hksj=test == "knha")
    expected = _fits(reference, method, test)
    assert (expected["row"].to_numpy() == np.arange(1, beta.shape[0] + 1)).all()
    np.testing.assert_array_equal(fits.k, expected["k"].to_numpy())
    assert fits.converged.all()
    several = fits.k >= 2
    for column, field in FIELDS.items():
        ours, theirs = getattr(fits, field), expected[column].to_numpy(float)
        if field in ("q_p", "i2"):
            # One cohort: metafor reports QEp = 1 and I2 = 0; we report NaN (no heterogeneity to test).
            assert np.isnan(ours[~several]).all() and (theirs[~several] == (1.0 if field == "q_p" else 0.0)).all()
            ours, theirs = ours[several], theirs[several]
        np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=ATOL, err_msg=f"{method} {test} {column}")
    positive = fits.se > 0
    np.testing.assert_allclose(fits.statistic[positive], fits.beta[positive] / fits.se[positive], rtol=1e-15)
    # A zero HKSJ variance (identical cohorts, row 40) gives an infinite statistic, as in metafor.
    assert np.isinf(fits.statistic[~positive]).all() and (fits.p[~positive] == 0).all()


@pytest.mark.parametrize("test", ["z", "knha"])
def test_leave_one_out_equals_metafor(cohorts: tuple[np.ndarray, np.ndarray], reference: pd.DataFrame, test: str) -> None:
    beta, se = cohorts
    loo_beta, loo_se, loo_p = leave_one_out(beta, se, "reml", hksj=test == "knha")
    expected = reference[(reference["method"] == "REML") & (reference["test"] == test) & (reference["omitted"] > 0)]
    rows, columns = expected["row"].to_numpy() - 1, expected["omitted"].to_numpy() - 1
    for ours, column in ((loo_beta, "estimate"), (loo_se, "se"), (loo_p, "pval")):
        np.testing.assert_allclose(ours[rows, columns], expected[column].to_numpy(float), rtol=RTOL, atol=ATOL, err_msg=f"{test} {column}")
        # Every other cell is NaN: cohorts without an estimate, and the single-cohort row.
        others = np.ones(beta.shape, dtype=bool)
        others[rows, columns] = False
        assert np.isnan(ours[others]).all()
    # Leaving one cohort out of one is nothing left; leaving one out of two is the other one, z-tested.
    assert np.isnan(loo_beta[40]).all()
    pair = np.flatnonzero(~np.isnan(beta[30]))
    assert loo_beta[30, pair[0]] == beta[30, pair[1]] and loo_se[30, pair[0]] == se[30, pair[1]]


def test_leave_one_out_equals_dropping_the_cohort(cohorts: tuple[np.ndarray, np.ndarray]) -> None:
    beta, se = cohorts
    loo_beta, loo_se, loo_p = leave_one_out(beta, se, "pm", hksj=True)
    for j in range(beta.shape[1]):
        dropped = combine_estimates(np.delete(beta, j, axis=1), np.delete(se, j, axis=1), "pm", hksj=True)
        present = ~np.isnan(beta[:, j])
        np.testing.assert_array_equal(loo_beta[present, j], dropped.beta[present])
        np.testing.assert_array_equal(loo_se[present, j], dropped.se[present])
        np.testing.assert_array_equal(loo_p[present, j], dropped.p[present])


def _assert_same_fits(a: MetaFits, b: MetaFits, rtol: float) -> None:
    for field in ("k", "beta", "se", "statistic", "p", "tau2", "i2", "q_stat", "q_p", "converged"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=rtol, atol=1e-14, equal_nan=True, err_msg=field)


@pytest.mark.parametrize("method", METHODS)
def test_rows_and_cohorts_do_not_interact(cohorts: tuple[np.ndarray, np.ndarray], method: str) -> None:
    beta, se = cohorts
    fits = combine_estimates(beta, se, method, hksj=True)
    rng = np.random.default_rng(5)
    order, cohort_order = rng.permutation(beta.shape[0]), rng.permutation(beta.shape[1])
    permuted = combine_estimates(beta[order][:, cohort_order], se[order][:, cohort_order], method, hksj=True)
    _assert_same_fits(permuted, MetaFits(*(getattr(fits, f)[order] for f in MetaFits.__dataclass_fields__)), rtol=1e-9)
    # Alone, or stacked with many very different rows, a row gets the same answer.
    for row in (10, 16, 37):
        alone = combine_estimates(beta[row : row + 1], se[row : row + 1], method, hksj=True)
        _assert_same_fits(alone, MetaFits(*(getattr(fits, f)[row : row + 1] for f in MetaFits.__dataclass_fields__)), rtol=0)


@pytest.mark.parametrize("method", METHODS)
def test_units_do_not_matter(cohorts: tuple[np.ndarray, np.ndarray], method: str) -> None:
    """Estimates in other units (x 1e-4): tau2 scales by 1e-8, every test statistic is unchanged."""
    beta, se = cohorts
    fits = combine_estimates(beta, se, method)
    scaled = combine_estimates(beta * 1e-4, se * 1e-4, method)
    np.testing.assert_allclose(scaled.beta, fits.beta * 1e-4, rtol=1e-8, equal_nan=True)
    np.testing.assert_allclose(scaled.tau2, fits.tau2 * 1e-8, rtol=1e-7, atol=1e-20, equal_nan=True)
    for field in ("statistic", "p", "i2", "q_stat"):
        np.testing.assert_allclose(getattr(scaled, field), getattr(fits, field), rtol=1e-7, atol=1e-12, equal_nan=True, err_msg=field)


@pytest.mark.parametrize("hksj", [False, True])
@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method: str, hksj: bool) -> None:
    nan = np.nan
    beta = np.array(
        [
            [nan, nan, nan],  # no cohort
            [nan, 0.4, nan],  # one cohort
            [0.3, 0.4, 0.2],  # se = 0, se = inf, se < 0: all missing -> no cohort
            [0.3, -0.1, 0.9],  # one cohort valid, an infinite estimate
            [-0.25, -0.25, -0.25],  # identical cohorts
            [0.5, -0.5, 2.0],  # heterogeneous
        ]
    )
    se = np.array(
        [
            [0.1, 0.1, 0.1],
            [nan, 0.2, 0.3],
            [0.0, np.inf, -0.1],
            [0.1, nan, 0.2],
            [0.1, 0.1, 0.1],
            [0.1, 0.1, 0.1],
        ]
    )
    beta[3, 2] = np.inf
    fits = combine_estimates(beta, se, method, hksj)
    np.testing.assert_array_equal(fits.k, [0, 1, 0, 1, 3, 3])
    for row in (0, 2):
        for field in ("beta", "se", "statistic", "p", "tau2", "i2", "q_stat", "q_p"):
            assert np.isnan(getattr(fits, field)[row]), (row, field)
    assert fits.converged.all()
    # One cohort: its own estimate and se, a z test even under HKSJ, Q = 0, no I2 or Q test.
    for row, (b, s) in ((1, (0.4, 0.2)), (3, (0.3, 0.1))):
        assert (fits.beta[row], fits.se[row], fits.tau2[row], fits.q_stat[row]) == (b, s, 0.0, 0.0)
        assert fits.p[row] == pytest.approx(math.erfc(b / s / math.sqrt(2)), rel=1e-12)
        assert np.isnan(fits.i2[row]) and np.isnan(fits.q_p[row])
    # Identical cohorts: no heterogeneity whatever the estimator.
    assert fits.tau2[4] == 0.0 and fits.q_stat[4] == pytest.approx(0.0, abs=1e-20) and fits.i2[4] == 0.0
    assert fits.beta[4] == pytest.approx(-0.25, rel=1e-15)
    if hksj:
        # HKSJ variance sum w (y - mu)^2 / ((k - 1) sum w) is 0, as in metafor: se 0, p 0.
        assert fits.se[4] == 0.0 and fits.p[4] == 0.0
    else:
        assert fits.se[4] == pytest.approx(0.1 / np.sqrt(3), rel=1e-14)
    assert fits.tau2[5] > 0 if method != "fe" else fits.tau2[5] == 0.0


def test_inputs_checked() -> None:
    with pytest.raises(ValueError, match="unknown meta-analysis method"):
        combine_estimates(np.zeros((1, 2)), np.ones((1, 2)), "ml")
    with pytest.raises(ValueError, match="one shape"):
        combine_estimates(np.zeros((1, 2)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="one shape"):
        combine_estimates(np.zeros(2), np.ones(2))
    # Method names as metafor spells them are accepted.
    assert combine_estimates(np.array([[0.1, 0.3]]), np.array([[0.1, 0.1]]), "REML").k[0] == 2


def test_not_converged_is_flagged(cohorts: tuple[np.ndarray, np.ndarray]) -> None:
    beta, se = cohorts
    for method in ("reml", "pm"):
        fits = combine_estimates(beta, se, method, max_iter=1)
        assert not fits.converged.all()
        assert fits.converged[fits.k < 2].all()


def test_empty_inputs() -> None:
    fits = combine_estimates(np.zeros((0, 3)), np.zeros((0, 3)))
    assert fits.beta.shape == (0,)
    assert direction_strings(np.zeros((0, 3))).shape == (0,)
    fits = combine_estimates(np.zeros((2, 0)), np.zeros((2, 0)))
    assert (fits.k == 0).all() and np.isnan(fits.beta).all()


def test_direction_strings() -> None:
    beta = np.array([[0.3, -0.1, np.nan, 0.0], [np.nan, np.nan, np.nan, np.nan], [-1e-300, 5.0, -0.0, np.inf]])
    strings = direction_strings(beta)
    assert strings.dtype == object and strings.shape == (3,)
    assert list(strings) == ["+-?0", "????", "-+0+"]
    assert list(direction_strings(np.zeros((2, 0)))) == ["", ""]
