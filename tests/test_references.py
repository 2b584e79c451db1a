"""Our statistics against reference values produced by R, committed with their scripts.

- tests/reference/bh_padjust.R -> bh_padjust.tsv: R p.adjust(method = "BH"),
  NA p-values not counted in the family. Tolerance: relative 1e-12 (values are
  written with 15 significant digits).
- tests/reference/lm_reference.R -> lm_data.tsv, lm_reference.tsv: R lm() per
  feature with a 3-level factor, a covariate with missing values (na.omit) and a
  feature with missing values. Tolerance: relative 1e-8 on estimate, se, t, p.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.io.metadata import complete_rows, covariate_columns
from scalable_assoc.models import factorise_covariates, fit_exposure_slopes
from scalable_assoc.stats.multitest import benjamini_hochberg, benjamini_hochberg_grouped

REFERENCE = Path(__file__).parent / "reference"


def test_bh_equals_r_p_adjust() -> None:
    table = pd.read_csv(REFERENCE / "bh_padjust.tsv", sep="\t", keep_default_na=True)
    for family, rows in table.groupby("family", sort=False):
        q = benjamini_hochberg(rows["p"].to_numpy(float))
        expected = rows["q"].to_numpy(float)
        np.testing.assert_array_equal(np.isnan(q), np.isnan(expected), err_msg=family)
        np.testing.assert_allclose(q[~np.isnan(q)], expected[~np.isnan(expected)], rtol=1e-12, err_msg=family)
    codes = pd.factorize(table["family"])[0]
    grouped = benjamini_hochberg_grouped(table["p"].to_numpy(float), codes)
    np.testing.assert_allclose(grouped, table["q"].to_numpy(float), rtol=1e-12, equal_nan=True)


def test_ols_equals_r_lm() -> None:
    data = pd.read_csv(REFERENCE / "lm_data.tsv", sep="\t", dtype={"sample_id": str})
    reference = pd.read_csv(REFERENCE / "lm_reference.tsv", sep="\t")
    covariates = ("age", "site", "bmi")
    rows = np.flatnonzero(complete_rows(data, covariates))
    matrix, names = covariate_columns(data, covariates, ("site",), rows)
    assert names == ("(intercept)", "age", "site[north]", "site[south]", "bmi")  # reference level 'east'
    design = factorise_covariates(matrix, names)
    features = [f"feature{j}" for j in range(1, 7)]
    block = data[features].to_numpy(float)[rows]
    fits = fit_exposure_slopes(design, data["case"].to_numpy(float)[rows][None], np.array([True]), block)
    for j, feature in enumerate(features):
        expected = reference[reference["feature"] == feature].iloc[0]
        for statistic in ("beta", "se", "t", "p"):
            assert getattr(fits, statistic)[0, j] == pytest.approx(expected[statistic], rel=1e-8), (feature, statistic)
        assert fits.n[0, j] == expected["n"]
