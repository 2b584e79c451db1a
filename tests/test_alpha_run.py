"""Alpha diversity rows of a run: statsmodels OLS on metrics computed with numpy, own FDR family, missing samples left out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from reference_model import read_layer

from scalable_assoc.engine.run import run_study
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_plan

PLAN = """
name: alpha
data:
  metadata: {metadata}
  layers:
    species: {layer}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  ssri: {{cases: "ssri == 1", controls: "ssri == 0"}}
covariates: {{categorical: [sex]}}
adjustments:
  age: [age]
  base: [age, sex, bmi]
min_cases: 5
"""
DIVERSITY = "diversity: {alpha: [shannon, simpson, richness]}\n"
METRICS = ("shannon", "simpson", "richness")


def _run(folder: Path, study: SimulatedStudy, client, layer: Path, diversity: bool = True) -> pd.DataFrame:
    folder.mkdir()
    text = PLAN.format(metadata=study.out_dir / "metadata.tsv", layer=layer) + (DIVERSITY if diversity else "")
    return run_study(write_plan(folder, text), folder / "out", client=client, allow_outside_paths=True).results


def _numpy_metrics(table: pd.DataFrame) -> pd.DataFrame:
    """vegan's shannon (natural log), simpson (1 - sum p^2) and richness (x > 0) per sample; NaN where a value is missing."""
    x = table.to_numpy(dtype=np.float64)
    total = x.sum(axis=1, keepdims=True)
    p = x / total
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    frame = pd.DataFrame(
        {"shannon": -plogp.sum(axis=1), "simpson": 1.0 - (p * p).sum(axis=1), "richness": (x > 0).sum(axis=1).astype(float)},
        index=table.index,
    )
    return frame.mask(pd.Series(np.isnan(x).any(axis=1), index=table.index), axis=0)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, client, small_study: SimulatedStudy) -> dict[str, pd.DataFrame]:
    root = tmp_path_factory.mktemp("alpha_runs")
    layer = small_study.out_dir / "species.tsv"
    # The same table as a wide TSV with one missing cell, in a sample with no other missing value.
    table = read_layer(layer)
    table.index.name = "sample_id"
    holed = table.copy()
    holed.iloc[3, 5] = np.nan
    holed.to_csv(root / "holed.tsv", sep="\t", na_rep="")
    return {
        "with": _run(root / "with", small_study, client, layer),
        "without": _run(root / "without", small_study, client, layer, diversity=False),
        "holed": _run(root / "holed", small_study, client, root / "holed.tsv"),
        "holed_sample": pd.DataFrame({"sample": [str(table.index[3])], "feature": [str(table.columns[5])]}),
    }


def test_alpha_rows_equal_statsmodels_on_numpy_metrics(runs, small_study: SimulatedStudy) -> None:
    results = runs["with"]
    alpha = results[results["layer"] == "alpha:species"]
    assert len(alpha) == len(METRICS) * 2 * 2
    assert set(alpha["feature"]) == set(METRICS) and set(alpha["model"]) == {"lm"}
    metrics = _numpy_metrics(read_layer(small_study.out_dir / "species.tsv"))
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    data = metadata.join(metrics, how="inner")
    groups = {
        "MDD": data[(data["MDD"] == 1) | (data["no_disorder"] == 1)].assign(exposure_value=lambda d: (d["MDD"] == 1).astype(float)),
        "ssri": data[data["ssri"].isin([0, 1])].assign(exposure_value=lambda d: d["ssri"].astype(float)),
    }
    covariates = {"age": "age", "base": "age + C(sex) + bmi"}
    for row in alpha.itertuples(index=False):
        frame = groups[row.exposure]
        fit = smf.ols(f"{row.feature} ~ exposure_value + {covariates[row.adjustment]}", data=frame, missing="drop").fit()
        assert row.status == "ok" and row.n == int(fit.nobs), row
        for statistic, expected in (("beta", fit.params), ("se", fit.bse), ("p", fit.pvalues)):
            assert getattr(row, statistic) == pytest.approx(expected["exposure_value"], rel=1e-8), (row.feature, statistic)
    assert alpha["q"].notna().all()


def test_feature_rows_do_not_change_with_the_diversity_block(runs, assert_results_equal) -> None:
    with_alpha, without = runs["with"], runs["without"]
    features = with_alpha[with_alpha["layer"] == "species"].reset_index(drop=True)
    assert len(features) == len(without) and not without["layer"].str.startswith("alpha:").any()
    pd.testing.assert_frame_equal(features, without.reset_index(drop=True))


def test_a_sample_with_a_missing_abundance_leaves_the_alpha_fits_only(runs) -> None:
    full, holed = runs["with"], runs["holed"]
    keys = ["feature", "exposure", "adjustment"]
    alpha_full = full[full["layer"] == "alpha:species"].set_index(keys)["n"]
    alpha_holed = holed[holed["layer"] == "alpha:species"].set_index(keys)["n"]
    dropped = alpha_full - alpha_holed.reindex(alpha_full.index)
    # the sample is in the MDD groups or the ssri groups or both: one fewer wherever it was a participant
    assert set(dropped) <= {0, 1} and (dropped == 1).any()
    for (_, exposure, adjustment), difference in dropped.items():
        assert (dropped.xs((exposure, adjustment), level=("exposure", "adjustment")) == difference).all()
    # other features' rows keep that sample
    other = runs["holed_sample"]["feature"].iloc[0]
    rows_full = full[(full["layer"] == "species") & (full["feature"] != other)].set_index(["feature", "exposure", "adjustment"])["n"]
    rows_holed = holed[(holed["layer"] == "species") & (holed["feature"] != other)].set_index(["feature", "exposure", "adjustment"])["n"]
    common = rows_full.index.intersection(rows_holed.index)
    assert len(common) and (rows_full[common] == rows_holed[common]).all()
