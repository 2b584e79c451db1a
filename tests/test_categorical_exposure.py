"""A multi-level categorical exposure tested jointly, and covariate coefficient rows (--covariate-rows).

References:
- tests/reference/categorical_exposure/categorical_reference.R -> categorical_data.tsv,
  categorical_reference.tsv: R lm() per feature (summary() coefficients of every term,
  anova(reduced, full) for the omnibus F and p), reference level 'Sanger', NA feature
  values and NA covariates (na.omit). Tolerance: relative 1e-8 on beta, se, t, p and F,
  for the kernel and for one end-to-end run.
- statsmodels OLS per feature (every coefficient), for the covariate rows of a
  simulated study with missing abundance values. Tolerance: relative 1e-8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from scalable_assoc.engine.chunks import batch_analyses
from scalable_assoc.engine.prepare import PreparedAnalysis
from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import DataError, PlanError
from scalable_assoc.io.metadata import complete_rows, covariate_columns
from scalable_assoc.models import FitStatus, factorise_covariates
from scalable_assoc.models.ols_terms import fit_terms, level_dummies
from scalable_assoc.plan.expand import AnalysisKey
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.testing import write_plan

REFERENCE = Path(__file__).parent / "reference" / "categorical_exposure"
FEATURES = [f"feature{j}" for j in range(1, 7)]
LEVELS = ("Sanger", "Illumina", "Nanopore", "PacBio")  # reference first, then sorted
COVARIATE_TERMS = ("age", "sex[male]", "bmi")
RELATIVE = 1e-8


@pytest.fixture(scope="module")
def data() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "categorical_data.tsv", sep="\t", dtype={"sample_id": str})


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return pd.read_csv(REFERENCE / "categorical_reference.tsv", sep="\t", skipinitialspace=True).set_index(["feature", "term"])


def _close(actual: float, expected: float, what: object) -> None:
    assert actual == pytest.approx(expected, rel=RELATIVE), what


def test_kernel_equals_r(data: pd.DataFrame, reference: pd.DataFrame) -> None:
    covariates = ("age", "sex", "bmi")
    rows = np.flatnonzero(complete_rows(data, covariates))
    matrix, names = covariate_columns(data, covariates, ("sex",), rows)
    design = factorise_covariates(matrix, names)
    codes = pd.Index(LEVELS).get_indexer(data["seqtech"].iloc[rows])
    block = data[FEATURES].to_numpy(float)[rows]
    fits = fit_terms(design, level_dummies(codes, len(LEVELS)), block)
    # Every covariate's coefficient: an intercept-only design, the level dummies and the covariates as terms.
    intercept = factorise_covariates(np.ones((rows.size, 1)), ("(intercept)",))
    every = fit_terms(intercept, np.hstack([level_dummies(codes, len(LEVELS)), design.raw_covariates()[:, 1:]]), block)
    for j, feature in enumerate(FEATURES):
        assert fits.status[j] == FitStatus.OK
        omnibus = reference.loc[(feature, "seqtech")]
        _close(fits.f_statistic[j], omnibus["F"], (feature, "F"))
        _close(fits.f_p[j], omnibus["p"], (feature, "F p"))
        assert fits.n[j] == omnibus["n"] and fits.df[j] == omnibus["df"]
        for level_index, level in enumerate(LEVELS[1:]):
            expected = reference.loc[(feature, f"seqtech[{level}]")]
            for statistic in ("beta", "se", "t", "p"):
                _close(getattr(fits, statistic)[level_index, j], expected[statistic], (feature, level, statistic))
                _close(getattr(every, statistic)[level_index, j], expected[statistic], (feature, level, statistic, "joint"))
        for term_index, term in enumerate(COVARIATE_TERMS):
            expected = reference.loc[(feature, term)]
            for statistic in ("beta", "se", "t", "p"):
                _close(getattr(every, statistic)[len(LEVELS) - 1 + term_index, j], expected[statistic], (feature, term, statistic))


def test_kernel_statuses() -> None:
    rng = np.random.default_rng(5)
    n = 40
    codes = np.repeat([0, 1, 2], [20, 15, 5])
    z = np.column_stack([np.ones(n), rng.normal(size=n)])
    design = factorise_covariates(z, ("(intercept)", "x"))
    block = rng.normal(size=(n, 4))
    block[:, 1] = 3.0  # constant
    block[codes == 2, 2] = np.nan  # level 2 absent for this feature: its dummy is all zero
    block[3:, 3] = np.nan  # 3 values for 2 + 2 design columns
    fits = fit_terms(design, level_dummies(codes, 3), block)
    assert list(fits.status) == [FitStatus.OK, FitStatus.CONSTANT_FEATURE, FitStatus.FEATURE_RANK_DEFICIENT, FitStatus.TOO_FEW_VALUES]
    assert np.isnan(fits.beta[:, 1:]).all() and np.isnan(fits.f_p[1:]).all() and np.isfinite(fits.f_p[0])
    # A level that is a covariate (collinear dummies): no estimate for any feature.
    collinear = factorise_covariates(np.column_stack([np.ones(n), codes == 1]), ("(intercept)", "one"))
    assert (fit_terms(collinear, level_dummies(codes, 3), block).status == FitStatus.EXPOSURE_COLLINEAR).all()


def _write_inputs(folder: Path, data: pd.DataFrame, exposure: str) -> Path:
    data[["sample_id", "seqtech", "age", "sex", "bmi"]].to_csv(folder / "metadata.tsv", sep="\t", index=False)
    data[["sample_id", *FEATURES]].to_csv(folder / "layer.tsv", sep="\t", index=False)
    return write_plan(
        folder,
        f"""
data:
  metadata: metadata.tsv
  layers:
    features: {{path: layer.tsv, format: wide}}
preprocess: {{min_prevalence: 0, transform: none}}
models: [lm, lm_nonzero]
exposures:
{exposure}
  age_exposure: {{column: age}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
""",
    )


def test_end_to_end_equals_r(data: pd.DataFrame, reference: pd.DataFrame, client, tmp_path: Path) -> None:
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech, categorical: true, reference: Sanger}")
    summary = run_study(plan, tmp_path / "out", client=client, covariate_rows=True)
    results = pd.read_parquet(tmp_path / "out" / "results.parquet")
    # Plan order: the omnibus row, then one row per non-reference level, each for lm then lm_nonzero.
    expected_order = ["seqtech"] + [f"seqtech[{level}]" for level in LEVELS[1:]] + ["age_exposure"]
    assert list(dict.fromkeys(results["exposure"])) == expected_order
    categorical = results[results["exposure"].str.startswith("seqtech")]
    assert len(categorical) == 2 * len(FEATURES) * len(LEVELS)  # both models; no value is missing in lm_nonzero's view
    for row in categorical.itertuples():
        expected = reference.loc[(row.feature, row.exposure)]
        assert row.status == "ok" and row.n == expected["n"]
        if row.exposure == "seqtech":
            assert pd.isna(row.beta) and pd.isna(row.se) and pd.isna(row.t) and pd.isna(row.n_cases)
            _close(row.f_statistic, expected["F"], (row.feature, "F"))
        else:
            assert pd.isna(row.f_statistic)
            for statistic in ("beta", "se", "t"):
                _close(getattr(row, statistic), expected[statistic], (row.feature, row.exposure, statistic))
        _close(row.p, expected["p"], (row.feature, row.exposure, "p"))
    assert results.loc[results["exposure"] == "age_exposure", "f_statistic"].isna().all()
    # Every covariate's coefficient in the same model, in its own file, lm only.
    covariates = pd.read_parquet(tmp_path / "out" / "covariate_results.parquet")
    assert set(covariates["model"]) == {"lm"}
    rows = covariates[covariates["exposure"] == "seqtech"]
    assert list(rows["term"][: len(COVARIATE_TERMS)]) == list(COVARIATE_TERMS)
    assert len(rows) == len(FEATURES) * len(COVARIATE_TERMS)
    for row in rows.itertuples():
        expected = reference.loc[(row.feature, row.term)]
        for statistic in ("beta", "se", "t", "p"):
            _close(getattr(row, statistic), expected[statistic], (row.feature, row.term, statistic))
    assert (tmp_path / "out" / "covariate_results.tsv").is_file()
    assert summary.manifest["analyses"][0]["parameters"] == 1 + 3 + 3  # intercept, age, sex[male], bmi, 3 level dummies


def test_default_reference_is_first_sorted_level(data: pd.DataFrame, client, tmp_path: Path) -> None:
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech, categorical: true}")
    summary = run_study(plan, tmp_path / "out", client=client)
    levels = [e for e in dict.fromkeys(summary.results["exposure"]) if e.startswith("seqtech[")]
    assert levels == ["seqtech[Nanopore]", "seqtech[PacBio]", "seqtech[Sanger]"]  # reference 'Illumina'
    assert not (tmp_path / "out" / "covariate_results.parquet").exists()


@pytest.mark.parametrize(
    ("exposure", "models", "message"),
    [
        ("  seqtech: {column: seqtech, categorical: true}", "[lm, prevalence]", "cannot be analysed with model 'prevalence'"),
        ("  seqtech: {column: seqtech, reference: Sanger}", "[lm]", "needs 'categorical: true'"),
        ('  seqtech: {cases: "age > 50", controls: "age <= 50", categorical: true}', "[lm]", "apply to a 'column' exposure"),
        ("  seqtech: {column: seqtech, categorical: yes please}", "[lm]", "expected true or false"),
    ],
)
def test_plan_errors(data: pd.DataFrame, tmp_path: Path, exposure: str, models: str, message: str) -> None:
    plan = _write_inputs(tmp_path, data, exposure)
    plan.write_text(plan.read_text().replace("models: [lm, lm_nonzero]", f"models: {models}"))
    with pytest.raises(PlanError, match=message):
        load_plan(plan)


def test_unknown_reference_level_names_the_key(data: pd.DataFrame, tmp_path: Path) -> None:
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech, categorical: true, reference: sanger}")
    with pytest.raises(PlanError, match=r"exposures\.seqtech\.reference.*Did you mean 'Sanger'"):
        run_study(plan, tmp_path / "out", workers=1)


def test_reference_level_without_participants(data: pd.DataFrame, tmp_path: Path) -> None:
    # Every 'PacBio' participant lacks bmi: the level exists in the metadata but not in the design.
    data = data.assign(bmi=data["bmi"].mask(data["seqtech"] == "PacBio"))
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech, categorical: true, reference: PacBio}")
    with pytest.raises(DataError, match="reference level 'PacBio'"):
        run_study(plan, tmp_path / "out", workers=1)


def test_categorical_analyses_keep_their_own_batches() -> None:
    def analysis(exposure: str, levels: tuple[str, ...]) -> PreparedAnalysis:
        return PreparedAnalysis(AnalysisKey("l", exposure, "base"), "design", np.zeros(3), False, ("age",), (), 3, None, None, levels)

    batches = batch_analyses([analysis("a", ()), analysis("b", ("x", "y")), analysis("c", ())], analyses_per_task=8)
    assert sorted(tuple(a.key.exposure for a in batch) for batch in batches) == [("a", "c"), ("b",)]


def test_covariate_rows_equal_statsmodels_and_resume(small_study, client, tmp_path: Path) -> None:
    """Every coefficient against statsmodels, features with missing values included; chunks without covariate rows are not reused."""
    from reference_model import transformed_layer

    text = small_study.plan_path.read_text()
    plan_path = small_study.plan_path.parent / "plan_covariate_rows.yaml"
    plan_path.write_text(text + "analyses:\n  - {exposures: [MDD], adjustments: [base], layers: [pathways]}\n")
    out = tmp_path / "out"
    first = run_study(plan_path, out, client=client)
    assert not (out / "covariate_results.parquet").exists()
    second = run_study(plan_path, out, client=client, covariate_rows=True)
    assert second.chunks_reused == 0 < first.chunks_total  # lm chunks now also carry covariate rows
    third = run_study(plan_path, out, client=client, covariate_rows=True)
    assert third.chunks_reused == third.chunks_total

    plan = load_plan(plan_path)
    metadata = pd.read_csv(plan.metadata, sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    layer = transformed_layer(plan.layer("pathways").path, plan.layer("pathways").preprocess.min_prevalence)
    covariates = pd.read_parquet(out / "covariate_results.parquet")
    assert list(covariates.columns) == [
        "layer",
        "feature",
        "exposure",
        "adjustment",
        "model",
        "term",
        "beta",
        "se",
        "t",
        "p",
        "n",
        "status",
    ]
    mdd = np.where(metadata["MDD"] == 1, 1.0, np.where(metadata["no_disorder"] == 1, 0.0, np.nan))
    frame = pd.DataFrame(
        {
            "MDD": mdd,
            "age": metadata["age"],
            "sex[male]": (metadata["sex"] == "male").astype(float),
            **{c: metadata[c] for c in ("bmi", "bristol_stool", "read_depth")},
        },
        index=metadata.index,
    )
    frame.loc[metadata["sex"].isna(), "sex[male]"] = np.nan
    with_missing = [f for f in layer.columns if layer[f].isna().any()]
    checked = set(with_missing[:3]) | set(layer.columns[:4])
    assert with_missing, "the simulated layer should have missing values"
    for feature in checked:
        data = frame.join(layer[feature].rename("y")).dropna()
        fit = sm.OLS(data["y"], sm.add_constant(data.drop(columns="y"))).fit()
        rows = covariates[covariates["feature"] == feature].set_index("term")
        assert list(rows.index) == ["age", "sex[male]", "bmi", "bristol_stool", "read_depth"]
        for term in rows.index:
            assert rows.loc[term, "n"] == fit.nobs
            for statistic, values in (("beta", fit.params), ("se", fit.bse), ("t", fit.tvalues), ("p", fit.pvalues)):
                _close(rows.loc[term, statistic], values[term], (feature, term, statistic))


def test_cli_flag_and_plan_error_exit_code(data: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scalable_assoc.cli import build_parser, main

    assert build_parser().parse_args(["run", "plan.yaml", "--covariate-rows"]).covariate_rows
    assert not build_parser().parse_args(["run", "plan.yaml"]).covariate_rows
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech, categorical: true}")
    plan.write_text(plan.read_text().replace("models: [lm, lm_nonzero]", "models: [lmm]\ncluster: sex"))
    assert main(["run", str(plan), "--out", str(tmp_path / "out"), "--covariate-rows"]) == 2
    error = capsys.readouterr().err
    assert "categorical exposure 'seqtech'" in error and "Traceback" not in error


def test_covariate_rows_refused_with_cluster(data: pd.DataFrame, tmp_path: Path) -> None:
    plan = _write_inputs(tmp_path, data, "  seqtech: {column: seqtech}")  # not categorical: only the cluster is at fault
    plan.write_text(plan.read_text().replace("seqtech: {column: seqtech}", "bmi_exposure: {column: bmi}") + "cluster: sex\n")
    with pytest.raises(PlanError, match="--covariate-rows reports classical standard errors"):
        run_study(plan, tmp_path / "out", workers=1, covariate_rows=True)
