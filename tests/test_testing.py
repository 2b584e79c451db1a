"""The public test helpers of scalable_assoc.testing: in-memory data, plans, result comparison."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.models import FitStatus, factorise_covariates, fit_exposure_slopes
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.simulate import PLAN_YAML, SimulatedStudy
from scalable_assoc.testing import (
    COVARIATE_NAMES,
    assert_results_equal,
    logged_messages,
    random_covariates,
    results_differences,
    simulate_block,
    study_plan,
    write_plan,
    write_study_plan,
)


def test_logged_messages_collects_the_package_messages_as_the_command_prints_them() -> None:
    import logging

    with logged_messages() as messages:
        logging.getLogger("scalable_assoc.io.ingest").info("converted")
        logging.getLogger("scalable_assoc.engine.run").warning("chunk %s recomputed", "abc")
        logging.getLogger("elsewhere").warning("not ours")
    logging.getLogger("scalable_assoc").warning("after the block")
    assert messages == ["converted", "warning: chunk abc recomputed"]


def test_random_covariates_draw_columns_in_the_order_named() -> None:
    four = random_covariates(np.random.default_rng(1), 50)
    five = random_covariates(np.random.default_rng(1), 50, (*COVARIATE_NAMES, "bmi"))
    assert four.shape == (50, 4) and five.shape == (50, 5)
    np.testing.assert_array_equal(five[:, :4], four)
    assert (four[:, 0] == 1).all() and set(np.unique(four[:, 2])) <= {0, 1}


def test_simulated_block_is_reproducible_and_consistent() -> None:
    block = simulate_block(250, 30, seed=4, exposure="ssri", missing_fraction=0.01, families=True)
    again = simulate_block(250, 30, seed=4, exposure="ssri", missing_fraction=0.01, families=True)
    np.testing.assert_array_equal(block.values, again.values)
    pd.testing.assert_frame_equal(block.metadata, again.metadata)
    assert block.values.shape == (250, 30) and len(block.features) == 30
    assert np.isnan(block.values).any() and (np.nan_to_num(block.values) >= 0).all()
    assert block.metadata["sample_id"].is_unique and "family_id" in block.metadata
    np.testing.assert_array_equal(block.exposure, block.metadata["ssri"].to_numpy(dtype=float))
    np.testing.assert_array_equal(block.covariates[:, 1], block.metadata["age"])
    assert block.planted.shape == (30,)
    with pytest.raises(ValueError, match="exposure"):
        simulate_block(exposure="neuroticism")


def test_simulated_block_feeds_the_kernel() -> None:
    block = simulate_block(300, 20, seed=2)
    logged = np.log(block.values + 1e-6)
    fits = fit_exposure_slopes(
        factorise_covariates(block.covariates, block.covariate_names), block.exposure[None], np.array([True]), logged
    )
    assert (fits.status == FitStatus.OK).all() and np.isfinite(fits.p).all()


def test_study_plan_with_changes_loads(small_study: SimulatedStudy, tmp_path: Path) -> None:
    plan = study_plan(small_study, layers=["species"], min_cases=7, fdr=None, changes={"exposures.ssri.controls": "ssri == 0"})
    assert list(plan["data"]["layers"]) == ["species"] and Path(plan["data"]["metadata"]).is_absolute()
    assert plan["min_cases"] == 7 and "fdr" not in plan
    loaded = load_plan(write_plan(tmp_path / "elsewhere", plan), allow_outside_paths=True)
    assert loaded.metadata == (small_study.out_dir / "metadata.tsv").resolve()
    in_place = write_study_plan(tmp_path, write_plan(tmp_path, PLAN_YAML), filename="copy.yaml", absolute_paths=False)
    assert study_plan(in_place, absolute_paths=False)["data"]["metadata"] == "metadata.tsv"


def test_results_differences_name_what_differs() -> None:
    table = pd.DataFrame(
        {"feature": ["a", "b"], "n": [10, 12], "beta": [0.5, -1e-6], "se": [0.1, 0.2], "t": [5.0, -5e-6], "p": [1e-6, np.nan]}
    )
    assert results_differences(table, table.copy(), relative=0) == []
    nudged = table.assign(beta=[0.5, -1e-6 * (1 + 1e-9)])  # 5e-16 of its standard error
    assert results_differences(table, nudged) == []
    assert results_differences(table, nudged, relative=0)
    problems = results_differences(table, table.assign(p=[1e-6, 0.5], feature=["a", "c"]))
    assert any(line.startswith("p: missing values differ") for line in problems)
    assert any(line.startswith("feature: 1 values differ (first row 1") for line in problems)
    with pytest.raises(AssertionError, match="results differ"):
        assert_results_equal(table, table.assign(se=[0.1, 0.3]))
