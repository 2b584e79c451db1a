"""Our statistics against reference values produced by R, committed with their scripts.

- tests/reference/bh_padjust.R -> bh_padjust.tsv: R p.adjust(method = "BH"),
  NA p-values not counted in the family. Tolerance: relative 1e-12 (values are
  written with 15 significant digits).
- tests/reference/lm_reference.R -> lm_data.tsv, lm_reference.tsv: R lm() per
  feature with a 3-level factor, a covariate with missing values (na.omit) and a
  feature with missing values. Tolerance: relative 1e-8 on estimate, se, t, p.
- tests/reference/reference_level/make_reference.R -> metadata.tsv, features.tsv,
  reference.tsv: R lm() with relevel(factor(sex), ref = "male") and
  relevel(factor(site), ref = "b") (plan key covariates.reference), every
  coefficient. Tolerance: relative 1e-8.
- tests/reference/cluster/cluster_reference.R -> cluster_data.tsv,
  cluster_reference.tsv: R lm() with sandwich::vcovCL(cluster = ~project,
  type = "HC1") (our CR1) and lmtest::coeftest(df = G - 1) (Stata's t reference)
  and df = Inf (the normal), over 6 projects of unequal size, with missing
  covariate and feature values (one feature has no value in a whole project, so
  G = 5 there). Tolerance: relative 1e-8 on estimate, se, t, p. Checked on the
  kernel and through a whole run (the plan's ``lm: {se: cluster}``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.engine.clusters import cluster_codes
from scalable_assoc.engine.prepare import prepare_study
from scalable_assoc.engine.run import run_study
from scalable_assoc.io.metadata import CovariateValues, complete_rows, constant_covariates, covariate_columns, reference_levels
from scalable_assoc.models import factorise_covariates, fit_exposure_slopes
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.stats.multitest import benjamini_hochberg, benjamini_hochberg_grouped
from scalable_assoc.testing import logged_messages, write_plan

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


# --------------------------------------------------------------------------------------
# covariates.reference: a categorical covariate's reference level chosen in the plan
# --------------------------------------------------------------------------------------
RELEVEL = REFERENCE / "reference_level"
RELEVEL_PLAN = """
name: reference-level
data:
  metadata: {folder}/metadata.tsv
  layers:
    features: {folder}/features.tsv
preprocess: {{transform: none}}
exposures:
  case: {{column: case}}
covariates:
  categorical: [sex, site]
  reference: {{sex: male, site: b}}
adjustments:
  base: [age, sex, site]
"""


def test_levels_and_constant_covariates_from_shared_codes_match_pandas_on_every_subset() -> None:
    """One CovariateValues serves many participant subsets (its columns' codes computed once): each subset's levels,
    dummies and constant columns are those pandas' unique finds among that subset alone."""
    rng = np.random.default_rng(7)
    n = 60
    data = pd.DataFrame(
        {
            "site": rng.choice(["b", "a", "c", "nan"], n),
            "sex": rng.choice(["male", "female"], n),
            "zero": rng.choice([0.0, -0.0], n),  # one value for pandas: -0.0 equals 0.0
            "dose": rng.choice([1.0, 2.0, np.nan], n),
        }
    )
    values = CovariateValues(data)
    subsets = [np.arange(n), np.flatnonzero(data["site"] == "a"), np.flatnonzero(data["site"] != "b")[:7], np.array([3]), np.array([], int)]
    subsets += [np.flatnonzero(data["dose"].isna()), np.flatnonzero(data["dose"] == 2.0)]
    for rows in subsets:
        expected = {}
        for column in ("site", "sex", "zero", "dose"):
            cells = data[column].astype(str).to_numpy()[rows] if column in ("site", "sex") else data[column].to_numpy(float)[rows]
            distinct = pd.unique(cells)
            if len(distinct) == 1:
                expected[column] = str(distinct[0])
        assert constant_covariates(values, ("site", "sex", "zero", "dose"), ("site", "sex"), rows) == expected
        if rows.size == 0:
            continue
        matrix, names = covariate_columns(values, ("site", "sex"), ("site", "sex"), rows, {"site": "c"})
        site_levels = sorted(pd.unique(data["site"].to_numpy()[rows]))
        reference = "c" if "c" in site_levels else site_levels[0]
        others = [level for level in site_levels if level != reference]
        assert names[1 : 1 + len(others)] == tuple(f"site[{level}]" for level in others)
        for position, level in enumerate(others, start=1):
            np.testing.assert_array_equal(matrix[:, position], (data["site"].to_numpy()[rows] == level).astype(float))
        assert reference_levels(values, ("site",), ("site",), rows, {"site": "c"}) == (f"site[{reference}]",)
        alone, alone_names = covariate_columns(data, ("site", "sex"), ("site", "sex"), rows, {"site": "c"})  # codes of its own
        assert names == alone_names
        np.testing.assert_array_equal(matrix, alone)


def test_covariate_columns_name_the_levels_other_than_the_reference() -> None:
    data = pd.DataFrame({"sex": ["male", "female", "female", "male"], "site": ["c", "a", "b", "b"]})
    rows = np.arange(4)
    _, names = covariate_columns(data, ("sex",), ("sex",), rows, {"sex": "female"})
    assert names == ("(intercept)", "sex[male]")
    matrix, names = covariate_columns(data, ("sex", "site"), ("sex", "site"), rows, {"sex": "male", "site": "b"})
    assert names == ("(intercept)", "sex[female]", "site[a]", "site[c]")
    np.testing.assert_array_equal(matrix[:, 1:], [[0, 0, 1], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert reference_levels(data, ("sex", "site"), ("sex", "site"), rows, {"sex": "male", "site": "b"}) == ("sex[male]", "site[b]")
    # Without a chosen reference: the first level in sorted order, as before.
    assert covariate_columns(data, ("site",), ("site",), rows)[1] == ("(intercept)", "site[b]", "site[c]")
    # The chosen level absent among a model's participants: the first sorted level present there.
    without_b = np.array([0, 1])
    assert covariate_columns(data, ("site",), ("site",), without_b, {"site": "b"})[1] == ("(intercept)", "site[c]")
    assert reference_levels(data, ("site",), ("site",), without_b, {"site": "b"}) == ("site[a]",)


def test_reference_level_equals_r_relevel(client, tmp_path: Path) -> None:
    plan_path = write_plan(tmp_path, RELEVEL_PLAN.format(folder=RELEVEL))
    reference = pd.read_csv(RELEVEL / "reference.tsv", sep="\t")
    # R names a dummy <column><level>; ours is column[level].
    terms = {"(Intercept)": "(intercept)", "age": "age", "sexfemale": "sex[female]", "sitea": "site[a]", "sitec": "site[c]", "case": "case"}

    # The design the run uses: dummies for the levels other than the plan's references.
    study = prepare_study(load_plan(plan_path, allow_outside_paths=True), tmp_path / "stores")
    (design,) = study.layers[0].designs.values()
    assert design.names == ("(intercept)", "age", "sex[female]", "site[a]", "site[c]")
    assert design.references == ("sex[male]", "site[b]")
    # Every coefficient of the OLS on that design equals R's, the covariates' effects included.
    metadata = pd.read_csv(RELEVEL / "metadata.tsv", sep="\t").set_index("sample_id")
    features = pd.read_csv(RELEVEL / "features.tsv", sep="\t").set_index("sample_id")
    (analysis,) = study.layers[0].analyses
    x = np.column_stack([design.matrix, analysis.exposure])
    names = [*design.names, "case"]
    for feature in features.columns:
        y = features.loc[metadata.index[design.rows], feature].to_numpy(float)
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        residual = y - x @ beta
        se = np.sqrt(np.diag(np.linalg.inv(x.T @ x)) * (residual @ residual) / (len(y) - x.shape[1]))
        expected = reference[reference["feature"] == feature].set_index("term")
        for term, row in expected.iterrows():
            column = names.index(terms[term])
            assert beta[column] == pytest.approx(row["estimate"], rel=1e-8), (feature, term)
            assert se[column] == pytest.approx(row["se"], rel=1e-8), (feature, term)

    # The run's exposure estimates equal R's lm with the releveled factors.
    results = run_study(plan_path, tmp_path / "out", client=client, allow_outside_paths=True).results
    assert set(results["covariates"]) == {"age+sex+site"}
    for _, row in results.iterrows():
        expected = reference[(reference["feature"] == row["feature"]) & (reference["term"] == "case")].iloc[0]
        assert row["status"] == "ok" and row["n"] == expected["n"]
        for statistic, column in (("beta", "estimate"), ("se", "se"), ("t", "t"), ("p", "p")):
            assert row[statistic] == pytest.approx(expected[column], rel=1e-8), (row["feature"], statistic)


CLUSTER = REFERENCE / "cluster"
CLUSTER_FEATURES = [f"feature{j}" for j in range(1, 7)]


def _cluster_reference() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(CLUSTER / "cluster_data.tsv", sep="\t", dtype={"sample_id": str})
    return data, pd.read_csv(CLUSTER / "cluster_reference.tsv", sep="\t", skipinitialspace=True)


@pytest.mark.parametrize("reference", ["t", "normal"])
def test_cluster_robust_ols_equals_r_sandwich(reference: str) -> None:
    data, expected = _cluster_reference()
    covariates = ("age", "sex", "bmi")
    rows = np.flatnonzero(complete_rows(data, covariates))
    matrix, names = covariate_columns(data, covariates, ("sex",), rows)
    design = factorise_covariates(matrix, names)
    clusters = cluster_codes(data.iloc[rows], "project")
    block = data[CLUSTER_FEATURES].to_numpy(float)[rows]
    for exposure, binary in (("case", True), ("score", False)):
        values = data[exposure].to_numpy(float)[rows][None]
        robust = fit_exposure_slopes(design, values, np.array([binary]), block, clusters=clusters, cluster_reference=reference)
        classical = fit_exposure_slopes(design, values, np.array([binary]), block)
        for j, feature in enumerate(CLUSTER_FEATURES):
            row = expected[(expected["exposure"] == exposure) & (expected["feature"] == feature)].iloc[0]
            p = row["p"] if reference == "t" else row["p_normal"]
            for statistic, value in (("beta", row["beta"]), ("se", row["se"]), ("t", row["t"]), ("p", p)):
                assert getattr(robust, statistic)[0, j] == pytest.approx(value, rel=1e-8), (exposure, feature, statistic)
            assert robust.n[0, j] == row["n"]
            assert classical.se[0, j] == pytest.approx(row["se_classical"], rel=1e-8), (exposure, feature)
            assert classical.p[0, j] == pytest.approx(row["p_classical"], rel=1e-8), (exposure, feature)
    assert set(expected["G"]) == {5, 6}  # feature4 lost a whole project


CLUSTER_PLAN = """
name: cluster-reference
data:
  metadata: metadata.tsv
  layers:
    features: features.tsv
preprocess: {{min_prevalence: 0, transform: none, pseudocount: 0}}
exposures:
  case: {{cases: "case == 1", controls: "case == 0"}}
  score: {{column: score}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
min_cases: 5
models: [lm, lm_nonzero]
cluster: project
{options}
"""


def _cluster_run(folder: Path, client, options: str, spaced: bool = False) -> tuple[pd.DataFrame, dict, list[str]]:
    """The R data through a whole run; ``spaced`` adds surrounding whitespace to some project labels."""
    data, _ = _cluster_reference()
    folder.mkdir()
    metadata = data.drop(columns=CLUSTER_FEATURES)
    if spaced:
        # The same projects, spelt with stray spaces: still six clusters.
        metadata.loc[metadata.index[::3], "project"] = metadata["project"].iloc[::3] + " "
        metadata.loc[metadata.index[1::7], "project"] = " " + metadata["project"].iloc[1::7]
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    data[["sample_id", *CLUSTER_FEATURES]].to_csv(folder / "features.tsv", sep="\t", index=False)
    write_plan(folder, CLUSTER_PLAN.format(options=options))
    with logged_messages() as log:
        summary = run_study(folder / "plan.yaml", folder / "out", client=client)
    manifest = json.loads((folder / "out" / "manifest.json").read_text())
    return summary.results, manifest, log


def _compare_run(results: pd.DataFrame, model: str, kind: str) -> None:
    """``model``'s rows against R: ``kind`` 't' (cluster-robust, t(G - 1)), 'normal' or 'classical'."""
    _, expected = _cluster_reference()
    for _, row in expected.iterrows():
        ours = results[
            (results["model"] == model) & (results["exposure"] == row["exposure"]) & (results["feature"] == row["feature"])
        ].iloc[0]
        se, p = {"t": ("se", "p"), "normal": ("se", "p_normal"), "classical": ("se_classical", "p_classical")}[kind]
        assert ours["status"] == "ok" and ours["n"] == row["n"]
        for statistic, value in (("beta", row["beta"]), ("se", row[se]), ("p", row[p])):
            assert ours[statistic] == pytest.approx(value, rel=1e-8), (model, row["exposure"], row["feature"], statistic)


def test_cluster_robust_run_equals_r_and_warns_of_few_clusters(tmp_path: Path, client) -> None:
    # lm cluster-robust with t(G - 1) (the default reference), lm_nonzero with the normal; every value of the
    # features is positive, so lm_nonzero fits the same participants as lm. Labels with stray spaces are one cluster.
    results, manifest, log = _cluster_run(
        tmp_path / "robust", client, "lm: {se: cluster}\nlm_nonzero: {se: cluster, reference: normal}", spaced=True
    )
    _compare_run(results, "lm", "t")
    _compare_run(results, "lm_nonzero", "normal")
    assert [a["n_clusters"] for a in manifest["analyses"]] == [6] * 4
    few = [w for w in manifest["warnings"] if "fewer than 30 clusters" in w]
    assert len(few) == 2 and all("'project'" in w for w in few)  # one per model of the layer
    assert any("model 'lm'" in w and "6 for case/base, 6 for score/base" in w for w in few)
    merged = [w for w in manifest["warnings"] if "differ only by surrounding whitespace" in w]
    assert len(merged) == 1 and "'kurokawa07' = 'kurokawa07 '" in merged[0]
    for warning in manifest["warnings"]:
        assert f"warning: {warning}" in log


def test_cluster_without_se_option_is_classical_ols(tmp_path: Path, client) -> None:
    results, manifest, log = _cluster_run(tmp_path / "classical", client, "")
    _compare_run(results, "lm", "classical")
    _compare_run(results, "lm_nonzero", "classical")
    assert [a["n_clusters"] for a in manifest["analyses"]] == [None] * 4
    assert not any("fewer than 30 clusters" in w for w in manifest["warnings"])
    assert any("no model uses it" in w for w in manifest["warnings"]) and any("no model uses it" in line for line in log)
