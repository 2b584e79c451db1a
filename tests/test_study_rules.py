"""Rules a real study needs beyond the fit: aliasing, carriers, constant covariates.

- Aliasing: a covariate constant among one feature's participants (every carrier
  sequenced on one platform) is aliased as R's lm() does, and the exposure is
  still estimated. Reference: tests/reference/aliasing/aliasing_reference.R
  (lm with numeric batch dummies, NA rows dropped). Tolerance: relative 1e-8 on
  beta, se, t and p; n and the residual degrees of freedom exactly.
- Carriers: a row whose model holds fewer than ``min_carriers`` participants
  with the feature (or 1 .. min_carriers - 1 without it) has a status, no p and
  no q; ``n_present`` counts the carriers (MaAsLin2's N.not.0).
- A covariate constant (a one-level categorical) among a model's participants
  leaves that model, said by ``covariates`` and ``dropped_covariates``, or is an
  error with ``on_constant_covariate: error``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import DataError
from scalable_assoc.io.metadata import covariate_columns
from scalable_assoc.models import factorise_covariates, fit_exposure_slopes
from scalable_assoc.models.fits import FitStatus, SlopeFits, withhold_rare_carriers
from scalable_assoc.testing import write_plan

REFERENCE = Path(__file__).parent / "reference" / "aliasing"
FEATURES = ["only_A", "no_C", "few_missing", "unexposed_only", "complete"]


@pytest.fixture(scope="module")
def aliasing() -> tuple[pd.DataFrame, pd.DataFrame]:
    data = pd.read_csv(REFERENCE / "aliasing_data.tsv", sep="\t", dtype={"sample_id": str})
    reference = pd.read_csv(REFERENCE / "aliasing_reference.tsv", sep="\t").set_index("feature")
    return data, reference


def _assert_equals_r(row: dict | pd.Series, expected: pd.Series, where: str) -> None:
    assert row["n"] == expected["n"], where
    if np.isnan(expected["beta"]):
        assert np.isnan(row["beta"]) and np.isnan(row["p"]), where
        return
    for statistic in ("beta", "se", "t", "p"):
        assert row[statistic] == pytest.approx(expected[statistic], rel=1e-8), (where, statistic)


def test_kernel_aliases_a_covariate_constant_among_a_features_participants(aliasing) -> None:
    data, reference = aliasing
    rows = np.arange(len(data))
    matrix, names = covariate_columns(data, ("age", "batch"), ("batch",), rows)
    assert names == ("(intercept)", "age", "batch[B]", "batch[C]")
    fits = fit_exposure_slopes(
        factorise_covariates(matrix, names), data["exposure"].to_numpy(float)[None], np.array([True]), data[FEATURES].to_numpy(float)
    )
    for j, feature in enumerate(FEATURES):
        row = {s: getattr(fits, s)[0, j] for s in ("beta", "se", "t", "p", "n")}
        _assert_equals_r(row, reference.loc[feature], feature)
        expected = FitStatus.FEATURE_RANK_DEFICIENT if feature == "unexposed_only" else FitStatus.OK
        assert fits.status[0, j] == expected, feature
    # The mixed model's own solve needs full rank: without aliasing the old status stays.
    plain = fit_exposure_slopes(
        factorise_covariates(matrix, names),
        data["exposure"].to_numpy(float)[None],
        np.array([True]),
        data[FEATURES].to_numpy(float),
        alias=False,
    )
    assert plain.status[0, FEATURES.index("only_A")] == FitStatus.FEATURE_RANK_DEFICIENT


def _write_aliasing_study(folder: Path, data: pd.DataFrame, models: str, extra: str = "") -> Path:
    metadata = data[["sample_id", "batch", "age", "exposure"]].assign(older=(data["age"] > 45).astype(int))
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    # Missing in R = absent here (value 0): lm_nonzero leaves absent participants out as R's NA rows.
    data[["sample_id", *FEATURES]].fillna(0.0).to_csv(folder / "layer.tsv", sep="\t", index=False)
    plan = write_plan(
        folder,
        f"""
name: aliasing
data: {{metadata: metadata.tsv, layers: {{values: {{path: layer.tsv, format: wide}}}}}}
preprocess: {{transform: none}}
exposures:
  exposed: {{column: exposure}}
  exposed_over_45: {{cases: "exposure == 1 and older == 1", controls: "exposure == 0 and older == 1"}}
covariates: {{categorical: [batch]}}
adjustments: {{base: [age, batch]}}
models: {models}
min_cases: 5
{extra}
""",
    )
    return plan


def test_lm_nonzero_aliases_like_r_in_a_run(aliasing, client, tmp_path: Path) -> None:
    data, reference = aliasing
    plan = _write_aliasing_study(tmp_path, data, "[lm_nonzero]")
    results = run_study(plan, tmp_path / "out", client=client).results
    full = results[results["exposure"] == "exposed"].set_index("feature")
    for feature in FEATURES:
        row = full.loc[feature]
        _assert_equals_r(row, reference.loc[feature], feature)
        assert row["n_present"] == reference.loc[feature, "n"]
        assert (row["status"] == "ok") == (feature != "unexposed_only"), (feature, row["status"])
    # A second design on the same covariates (a participant subset) takes the shared-Gram path;
    # statsmodels' pinv solve aliases the same way (df = n - rank).
    older = data[data["age"] > 45]
    subset = results[results["exposure"] == "exposed_over_45"].set_index("feature")
    for feature in ("only_A", "no_C", "few_missing"):
        used = older[older[feature].notna()]
        design = sm.add_constant(
            pd.DataFrame({"x": used["exposure"], "age": used["age"], "B": (used["batch"] == "B") * 1.0, "C": (used["batch"] == "C") * 1.0})
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # statsmodels warns of the very aliasing under test
            fit = sm.OLS(used[feature], design).fit()
        row = subset.loc[feature]
        assert row["n"] == int(fit.nobs) and row["status"] == "ok"
        for statistic, expected in (("beta", fit.params["x"]), ("se", fit.bse["x"]), ("p", fit.pvalues["x"])):
            assert row[statistic] == pytest.approx(expected, rel=1e-8), (feature, statistic)


def test_carrier_rule_withholds_rows_resting_on_few_carriers(client, tmp_path: Path) -> None:
    """A feature carried by 1, 2 and 3 participants: withheld, withheld, estimated; absent by 1: withheld."""
    rng = np.random.default_rng(5)
    n = 60
    metadata = pd.DataFrame(
        {"sample_id": [f"P{i:02d}" for i in range(n)], "age": rng.normal(50, 8, n).round(1), "case": (np.arange(n) % 3 == 0).astype(int)}
    )
    layer = pd.DataFrame({"sample_id": metadata["sample_id"]})
    for carriers in (1, 2, 3):
        values = np.zeros(n)
        values[rng.choice(n, carriers, replace=False)] = rng.uniform(1, 5, carriers)
        layer[f"carried_by_{carriers}"] = values
    layer["lacked_by_1"] = rng.uniform(1, 5, n)
    layer.loc[7, "lacked_by_1"] = 0.0
    layer["common"] = np.where(rng.random(n) < 0.5, rng.uniform(1, 5, n), 0.0)
    metadata.to_csv(tmp_path / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(tmp_path / "layer.tsv", sep="\t", index=False)
    write_plan(
        tmp_path,
        """
data: {metadata: metadata.tsv, layers: {values: {path: layer.tsv, format: wide}}}
preprocess: {transform: log, pseudocount: 0.5}
exposures: {case: {column: case}}
adjustments: {base: [age]}
models: [lm, lm_nonzero, prevalence]
min_cases: 5
""",
    )
    results = run_study(tmp_path / "plan.yaml", tmp_path / "out", client=client).results
    lm = results[results["model"] == "lm"].set_index("feature")
    assert lm.loc["carried_by_1", "n_present"] == 1 and lm.loc["carried_by_3", "n_present"] == 3
    assert lm.loc["lacked_by_1", "n_present"] == n - 1
    for feature, withheld in (
        ("carried_by_1", True),
        ("carried_by_2", True),
        ("carried_by_3", False),
        ("lacked_by_1", True),
        ("common", False),
    ):
        row = lm.loc[feature]
        assert ("min_carriers" in row["status"]) == withheld, (feature, row["status"])
        assert pd.isna(row["p"]) == withheld and pd.isna(row["q"]) == withheld, feature
    # lm_nonzero's participants are the carriers: only their number counts, not the absent ones.
    nonzero = results[results["model"] == "lm_nonzero"].set_index("feature")
    assert (nonzero["n_present"] == nonzero["n"]).all()
    assert nonzero.loc["lacked_by_1", "status"] == "ok"
    assert nonzero.loc["carried_by_2", "status"] != "ok"  # too few values for the design already
    # Withheld rows are not in their FDR family: the family has only the estimated rows.
    family = lm[lm["p"].notna()]
    assert len(family) == 2
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(family["q"].to_numpy(float), multipletests(family["p"].to_numpy(float), method="fdr_bh")[1], rtol=1e-12)


def test_prevalence_within_model_and_rule_off(client, tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    n = 80
    sex = np.where(np.arange(n) < 40, "female", "male")
    metadata = pd.DataFrame(
        {
            "sample_id": [f"P{i:02d}" for i in range(n)],
            "sex": sex,
            "age": rng.normal(50, 8, n).round(1),
            "case": (np.arange(n) % 2).astype(int),
        }
    )
    layer = pd.DataFrame(
        {"sample_id": metadata["sample_id"], "in_men_only": np.where((sex == "male") & (rng.random(n) < 0.6), rng.uniform(1, 5, n), 0.0)}
    )
    for j in range(4):
        layer[f"everywhere_{j}"] = rng.uniform(1, 5, n)
    metadata.to_csv(tmp_path / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(tmp_path / "layer.tsv", sep="\t", index=False)
    text = """
data: {{metadata: metadata.tsv, layers: {{values: {{path: layer.tsv, format: wide}}}}}}
preprocess: {{transform: clr, min_prevalence: 0.2{within}}}
exposures:
  women: {{cases: "sex == 'female' and case == 1", controls: "sex == 'female' and case == 0"}}
adjustments: {{base: [age]}}
min_cases: 5
{extra}
"""
    write_plan(tmp_path, text.format(within="", extra=""))
    rows = run_study(tmp_path / "plan.yaml", tmp_path / "out", client=client).results.set_index("feature")
    # Absent from every woman, the feature's CLR values still vary (the sample means do): it used to
    # be reported with an estimate and counted in the family.
    assert rows.loc["in_men_only", "n_present"] == 0 and "min_carriers" in rows.loc["in_men_only", "status"]
    write_plan(tmp_path, text.format(within=", prevalence_within: model", extra="min_carriers: 0"))
    rows = run_study(tmp_path / "plan.yaml", tmp_path / "out2", client=client).results.set_index("feature")
    assert "prevalence_within" in rows.loc["in_men_only", "status"] and (rows.drop(index="in_men_only")["status"] == "ok").all()
    write_plan(tmp_path, text.format(within="", extra="min_carriers: 0"))
    rows = run_study(tmp_path / "plan.yaml", tmp_path / "out3", client=client).results.set_index("feature")
    assert rows.loc["in_men_only", "status"] == "ok"  # the rule off: the old, misleading estimate


def test_carrier_rule_keeps_non_estimated_statuses() -> None:
    shape = (1, 3)
    fits = SlopeFits(
        np.ones(shape),
        np.ones(shape),
        np.ones(shape),
        np.full(shape, 0.5),
        np.full(shape, 10),
        np.full(shape, -1),
        np.full(shape, -1),
        np.array([[0, 1, 0]], dtype=np.int8),
    )
    out = withhold_rare_carriers(fits, np.array([[2, 2, 5]]), 3)
    assert out.status.tolist() == [[FitStatus.TOO_FEW_CARRIERS, FitStatus.CONSTANT_FEATURE, FitStatus.OK]]
    assert np.isnan(out.p[0, 0]) and out.p[0, 2] == 0.5


def test_carrier_rule_covers_the_presence_by_case_table() -> None:
    """Binary exposure, 10 cases and 10 controls: any non-zero cell of present/absent x case/control below 3 withholds."""
    # columns: carriers (cases, controls) = (1, 9), (0, 5), (3, 3), (10, 8), (3, 0), (9, 9)
    present_cases = np.array([[1, 0, 3, 10, 3, 9]])
    present = np.array([[10, 5, 6, 18, 3, 18]])
    shape = present.shape
    fits = SlopeFits(
        np.ones(shape),
        np.ones(shape),
        np.ones(shape),
        np.full(shape, 0.5),
        np.full(shape, 20),
        np.full(shape, 10),
        np.full(shape, 10),
        np.zeros(shape, dtype=np.int8),
    )
    out = withhold_rare_carriers(fits, present, 3, n_present_cases=present_cases)
    # (1, 9): one carrying case; (0, 5): the zero cell is fine; (3, 3) fine; (10, 8): two controls lack it;
    # (3, 0): fine; (9, 9): one case and one control lack it
    assert (out.status == FitStatus.TOO_FEW_CARRIERS).tolist() == [[True, False, False, True, False, True]]
    assert np.isnan(out.p[0, 0]) and out.p[0, 1] == 0.5
    # Without the case counts only the margins count (as before): the single carrying case passes.
    assert (withhold_rare_carriers(fits, present, 3).status == FitStatus.TOO_FEW_CARRIERS).tolist() == [
        [False, False, False, True, False, True]
    ]
    # lm_nonzero: absent participants are not in the model; only the present x case/control cells.
    nonzero = SlopeFits(fits.beta, fits.se, fits.t, fits.p, present, present_cases, present - present_cases, fits.status)
    out = withhold_rare_carriers(nonzero, present, 3, count_absent=False, n_present_cases=present_cases)
    assert (out.status == FitStatus.TOO_FEW_CARRIERS).tolist() == [[True, False, False, False, False, False]]
    # Continuous exposures (n_cases -1) are never hit by the cell rule, only by the margins.
    continuous = SlopeFits(fits.beta, fits.se, fits.t, fits.p, fits.n, np.full(shape, -1), np.full(shape, -1), fits.status)
    out = withhold_rare_carriers(continuous, present, 3, n_present_cases=np.full(shape, -1))
    assert (out.status == FitStatus.TOO_FEW_CARRIERS).tolist() == [[False, False, False, True, False, True]]


def test_one_carrying_case_is_withheld_in_a_run_with_carrier_cells(client, tmp_path: Path) -> None:
    """A feature carried by 12 participants, only one of them a case: with carrier_cells, no estimate; n_present_cases says why.

    By default the run counts carriers overall only (the exports always apply the cells).
    """
    rng = np.random.default_rng(12)
    n = 60
    case = (np.arange(n) % 3 == 0).astype(int)
    metadata = pd.DataFrame(
        {
            "sample_id": [f"P{i:02d}" for i in range(n)],
            "age": rng.normal(50, 8, n).round(1),
            "case": case,
            "bmi": rng.normal(25, 3, n).round(1),
        }
    )
    layer = pd.DataFrame({"sample_id": metadata["sample_id"]})
    controls, cases = np.flatnonzero(case == 0), np.flatnonzero(case == 1)
    one_case = np.zeros(n)
    one_case[np.concatenate([controls[:11], cases[:1]])] = rng.uniform(1, 5, 12)
    layer["one_carrying_case"] = one_case
    three_cases = np.zeros(n)
    three_cases[np.concatenate([controls[:9], cases[:3]])] = rng.uniform(1, 5, 12)
    layer["three_carrying_cases"] = three_cases
    layer["common"] = np.where(rng.random(n) < 0.5, rng.uniform(1, 5, n), 0.0)
    metadata.to_csv(tmp_path / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(tmp_path / "layer.tsv", sep="\t", index=False)
    write_plan(
        tmp_path,
        """
data: {metadata: metadata.tsv, layers: {values: {path: layer.tsv, format: wide}}}
preprocess: {transform: log, pseudocount: 0.5}
exposures: {case: {column: case}, bmi: {column: bmi}}
adjustments: {base: [age]}
models: [lm, prevalence]
min_cases: 5
""",
    )
    default = run_study(tmp_path / "plan.yaml", tmp_path / "default", client=client).results.set_index(["exposure", "model", "feature"])
    assert (
        default.loc[("case", "lm", "one_carrying_case"), "status"] == "ok"
        and default.loc[("case", "lm", "one_carrying_case"), "n_present_cases"] == 1
    )
    with (tmp_path / "plan.yaml").open("a") as plan:
        plan.write("carrier_cells: true\n")
    results = run_study(tmp_path / "plan.yaml", tmp_path / "out", client=client).results
    binary = results[results["exposure"] == "case"].set_index(["model", "feature"])
    for model in ("lm", "prevalence"):
        assert (
            binary.loc[(model, "one_carrying_case"), "n_present"] == 12 and binary.loc[(model, "one_carrying_case"), "n_present_cases"] == 1
        )
        assert "min_carriers" in binary.loc[(model, "one_carrying_case"), "status"] and pd.isna(
            binary.loc[(model, "one_carrying_case"), "p"]
        )
        assert binary.loc[(model, "three_carrying_cases"), "n_present_cases"] == 3
        assert binary.loc[(model, "three_carrying_cases"), "status"] == "ok"
    # A continuous exposure has no case/control table: n_present_cases is null and the margins alone count.
    continuous = results[results["exposure"] == "bmi"].set_index(["model", "feature"])
    assert continuous["n_present_cases"].isna().all()
    assert continuous.loc[("lm", "one_carrying_case"), "status"] == "ok"


def _constant_covariate_study(folder: Path, on_constant: str = "") -> Path:
    rng = np.random.default_rng(2)
    n = 90
    metadata = pd.DataFrame(
        {
            "sample_id": [f"P{i:02d}" for i in range(n)],
            "age": rng.normal(50, 8, n).round(1),
            "seqtech": np.where(np.arange(n) < 45, "illumina", "sanger"),
            "site": np.where(np.arange(n) < 45, "north", "south"),
            "case": (np.arange(n) % 3 == 0).astype(int),
        }
    )
    # The subset model: the northern site's participants, all sequenced on one platform.
    layer = pd.DataFrame({"sample_id": metadata["sample_id"], **{f"f{j}": rng.uniform(1, 5, n) for j in range(4)}})
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(folder / "layer.tsv", sep="\t", index=False)
    plan = write_plan(
        folder,
        f"""
data: {{metadata: metadata.tsv, layers: {{values: {{path: layer.tsv, format: wide}}}}}}
preprocess: {{transform: log, pseudocount: 0.5}}
exposures:
  north_case: {{cases: "site == 'north' and case == 1", controls: "site == 'north' and case == 0"}}
  all_case: {{column: case}}
covariates: {{categorical: [seqtech]}}
adjustments: {{base: [age, seqtech]}}
min_cases: 5
{on_constant}
""",
    )
    return plan


def test_one_level_covariate_is_dropped_and_said(client, tmp_path: Path) -> None:
    plan = _constant_covariate_study(tmp_path)
    summary = run_study(plan, tmp_path / "out", client=client)
    results = summary.results
    subset = results[results["exposure"] == "north_case"]
    assert (subset["covariates"] == "age").all() and (subset["dropped_covariates"] == "seqtech").all()
    assert (subset["status"] == "ok").all()
    everyone = results[results["exposure"] == "all_case"]
    assert (everyone["covariates"] == "age+seqtech").all() and (everyone["dropped_covariates"] == "").all()
    # The subset model's estimate is OLS without the covariate (statsmodels on the same participants).
    metadata = pd.read_csv(tmp_path / "metadata.tsv", sep="\t").set_index("sample_id")
    layer = pd.read_csv(tmp_path / "layer.tsv", sep="\t").set_index("sample_id")
    used = metadata[metadata["site"] == "north"]
    for feature in layer.columns:
        fit = sm.OLS(np.log(layer.loc[used.index, feature] + 0.5), sm.add_constant(used[["case", "age"]].astype(float))).fit()
        row = subset[subset["feature"] == feature].iloc[0]
        assert row["beta"] == pytest.approx(fit.params["case"], rel=1e-8) and row["p"] == pytest.approx(fit.pvalues["case"], rel=1e-8)
    entry = next(a for a in summary.manifest["analyses"] if a["exposure"] == "north_case")
    assert entry["left_out_constant"] == ["seqtech"] and entry["covariates"] == ["age"]


def test_one_level_covariate_can_be_an_error(tmp_path: Path) -> None:
    plan = _constant_covariate_study(tmp_path, "on_constant_covariate: error")
    with pytest.raises(DataError, match=r"covariate 'seqtech' takes one value \('illumina'\) among the model's 45 participants"):
        run_study(plan, tmp_path / "out", workers=1)
