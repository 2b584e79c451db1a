"""Every estimated row equals statsmodels OLS on the same participants (relative 1e-8).

The reference (tests/reference_model.py) re-reads the files with pandas and fits
one feature at a time with a statsmodels formula, so categorical coding, missing
covariates (participant dropped from that model) and missing abundance cells
(participant dropped for that feature only) are all checked independently.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from reference_model import fit_one, read_layer, transformed_layer

from scalable_assoc.engine.run import run_study
from scalable_assoc.simulate import SimulatedStudy

RELATIVE_TOLERANCE = 1e-8
BASE = ["age", "sex", "bmi", "bristol_stool", "read_depth"]
ADJUSTMENTS = {
    "base": BASE,
    "ssri": BASE + ["ssri"],
    "ptd": BASE + ["any_ptd"],
    "meds": BASE + ["any_ptd", "ppi", "laxatives", "metformin"],
    "gi": BASE + ["any_ptd", "ppi", "laxatives", "metformin", "ibs", "fgid"],
}
CASES = {"dysthymia": "dysthymia", "MDD": "MDD", "AnyDep": "AnyDep", "GAD": "GAD", "AnyAnx": "AnyAnx"}


@pytest.fixture(scope="module")
def run(small_study: SimulatedStudy, client, tmp_path_factory):
    out = tmp_path_factory.mktemp("exactness")
    return run_study(small_study.plan_path, out, client=client, chunk_features=16)


def _analysis_frame(metadata: pd.DataFrame, layer: pd.DataFrame, exposure: str) -> tuple[pd.DataFrame, str]:
    data = metadata.join(layer, how="inner")
    if exposure in CASES:
        column = CASES[exposure]
        selected = (data[column] == 1) | (data["no_disorder"] == 1)
        data = data[selected].assign(exposure_value=(data.loc[selected, column] == 1).astype(float))
    else:
        data = data.assign(exposure_value=data[exposure].astype(float))
    return data, "exposure_value"


@pytest.mark.parametrize("layer_name", ["species", "pathways", "gbm"])
def test_rows_equal_statsmodels(run, small_study: SimulatedStudy, layer_name: str) -> None:
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    path = small_study.out_dir / f"{layer_name}.tsv"
    layer = transformed_layer(path, 0.05)
    present = read_layer(path)[layer.columns] > 0
    results = run.results[run.results["layer"] == layer_name]
    assert set(results["feature"]) == set(layer.columns), "prevalence filter keeps the same features"
    rng = np.random.default_rng(0)
    features = list(rng.choice(layer.columns, size=min(8, layer.shape[1]), replace=False))
    # Features with missing cells exercise the per-feature subset path.
    with_missing = [f for f in layer.columns if layer[f].isna().any()]
    features += with_missing[:4]
    assert with_missing or layer_name == "species", "the simulated study has missing abundance cells"
    checked = withheld = 0
    for exposure in ["MDD", "AnyAnx", "ssri", "any_ptd"]:
        data, exposure_column = _analysis_frame(metadata, layer, exposure)
        for adjustment in ["base", "ptd", "gi"]:
            covariates = [c for c in ADJUSTMENTS[adjustment] if c != exposure]
            for feature in features:
                row = results[(results["feature"] == feature) & (results["exposure"] == exposure) & (results["adjustment"] == adjustment)]
                assert len(row) == 1
                row = row.iloc[0]
                reference = fit_one(data, feature, exposure_column, covariates, ["sex"])
                assert row["n"] == reference["n"]
                # Carriers among the model's participants, counted on the raw table (min_carriers 3).
                used = data[[feature, exposure_column, *covariates]].dropna().index
                carriers = int(present.loc[used, feature].sum())
                assert row["n_present"] == carriers
                # and the carriers among the cases, from which the present/absent x case/control cells follow
                cases = data.loc[used, exposure_column] == 1
                carrying_cases = int(present.loc[used[cases.to_numpy()], feature].sum())
                assert row["n_present_cases"] == carrying_cases
                cells = np.array(
                    [carrying_cases, carriers - carrying_cases, cases.sum() - carrying_cases, (~cases).sum() - carriers + carrying_cases]
                )
                assert (cells >= 0).all()
                # The run's rule counts carriers overall (carrier_cells, off by default, would add the cells).
                if carriers < 3 or 0 < reference["n"] - carriers < 3:
                    assert "min_carriers" in row["status"] and np.isnan(row["p"]) and pd.isna(row["q"])
                    withheld += 1
                    continue
                assert row["status"] == "ok"
                for statistic in ("beta", "se", "t", "p"):
                    assert row[statistic] == pytest.approx(reference[statistic], rel=RELATIVE_TOLERANCE), (
                        feature,
                        exposure,
                        adjustment,
                        statistic,
                    )
                checked += 1
    assert checked >= 4 * 3 * 8 - withheld and checked >= 4 * 3 * 4


def test_case_counts_and_missing_covariates(run, small_study: SimulatedStudy) -> None:
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str})
    complete = metadata[BASE].notna().all(axis=1)
    cases = int(((metadata["MDD"] == 1) & complete).sum())
    controls = int(((metadata["no_disorder"] == 1) & complete).sum())
    rows = run.results[(run.results["exposure"] == "MDD") & (run.results["adjustment"] == "base") & (run.results["layer"] == "gbm")]
    full = rows[rows["n"] == rows["n"].max()]
    assert (full["n_cases"] == cases).all() and (full["n_controls"] == controls).all()
    assert rows["n"].max() == cases + controls
    assert metadata[BASE].isna().any(axis=1).sum() > 0, "the study has participants with a missing covariate"


def test_fdr_within_families(run) -> None:
    from statsmodels.stats.multitest import multipletests

    results = run.results
    for _, family in results.groupby(["layer", "exposure", "adjustment"]):
        estimated = family[family["p"].notna()]
        expected = multipletests(estimated["p"].to_numpy(float), method="fdr_bh")[1]
        np.testing.assert_allclose(estimated["q"].to_numpy(float), expected, rtol=1e-12)
        assert family.loc[family["p"].isna(), "q"].isna().all()
