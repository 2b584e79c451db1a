"""PERMANOVA during ``run`` (plan ``diversity.beta``): the cluster's sums equal the in-memory kernels,
do not depend on the workers or a rerun, and a Bray-Curtis matrix above the memory limit is refused."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines
from distributed import Client, LocalCluster
from reference_model import read_layer, transformed_layer

from scalable_assoc.cli import main
from scalable_assoc.engine import permanova as engine_permanova
from scalable_assoc.engine.prepare import prepare_study
from scalable_assoc.engine.run import run_study
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.results.columns import PERMANOVA_COLUMNS
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.stats.permanova import bray_curtis_rows, permanova_distance, permanova_euclidean
from scalable_assoc.testing import write_plan

PLAN = """
name: permanova
data:
  metadata: {metadata}
  layers:
    species: {layer}
preprocess: {{min_prevalence: 0.1, transform: clr, pseudocount: half_min}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  age: {{column: age}}
covariates: {{categorical: [sex]}}
adjustments:
  none: []
  base: [sex, bmi]
models: [lm]
min_cases: 5
diversity:
  alpha: []
  beta: {{distances: [aitchison, bray_curtis], permutations: 99, seed: 3}}
"""


def _plan(tmp_path: Path, study: SimulatedStudy, name: str = "plan") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    return write_plan(folder, PLAN.format(metadata=study.out_dir / "metadata.tsv", layer=study.out_dir / "species.tsv"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, client: Client, small_study: SimulatedStudy) -> tuple[Path, Path]:
    tmp_path = tmp_path_factory.mktemp("permanova")
    plan = _plan(tmp_path, small_study)
    out = tmp_path / "out"
    run_study(plan, out, client=client, allow_outside_paths=True)
    return plan, out


def test_permanova_equals_the_in_memory_kernels(first_run: tuple[Path, Path], small_study: SimulatedStudy) -> None:
    plan_path, out = first_run
    table = pd.read_parquet(out / "permanova.parquet")
    assert list(table.columns) == [c.name for c in PERMANOVA_COLUMNS]
    assert len(table) == 2 * 2 * 2 and (table["status"] == "ok").all()
    assert (table["permutations"] == 99).all()
    tsv = pd.read_csv(out / "permanova.tsv", sep="\t")
    np.testing.assert_allclose(tsv["f"].to_numpy(), table["f"].to_numpy(), rtol=1e-12)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["permanova"]["rows"] == 8 and manifest["permanova"]["seed"] == 3

    # The participants and designs as the feature fits see them; the CLR values and distances computed here.
    study = prepare_study(load_plan(plan_path, allow_outside_paths=True), out / ".scalable_assoc" / "stores")
    layer = study.layers[0]
    clr = transformed_layer(small_study.out_dir / "species.tsv", 0.1)
    raw = read_layer(small_study.out_dir / "species.tsv")[clr.columns]
    seen = set()
    for analysis in layer.analyses:
        pair = (analysis.key.exposure, analysis.key.adjustment)
        if pair in seen:
            continue
        seen.add(pair)
        design = layer.designs[analysis.design_key]
        ids = [layer.store.sample_ids[i] for i in layer.sample_positions[design.rows]]
        complete = clr.loc[ids].notna().all(axis=1).to_numpy()
        covariates, exposure = design.matrix[complete, 1:], analysis.exposure[complete]
        expected = {
            "aitchison": permanova_euclidean(clr.loc[ids].to_numpy()[complete], covariates, exposure, 99, seed=3),
        }
        x = raw.loc[ids].to_numpy()[complete]
        assert (x.sum(axis=1) > 0).all()
        expected["bray_curtis"] = permanova_distance(bray_curtis_rows(x, x), covariates, exposure, 99, seed=3)
        for distance, result in expected.items():
            row = table[(table["distance"] == distance) & (table["exposure"] == pair[0]) & (table["adjustment"] == pair[1])].iloc[0]
            assert row["n"] == result.n and row["df"] == result.df
            for column, value in (("f", result.f), ("r2", result.r2), ("sum_of_squares", result.sum_of_squares)):
                np.testing.assert_allclose(row[column], value, rtol=1e-10, err_msg=f"{distance} {pair} {column}")
            assert row["p"] == result.p


def test_a_cluster_column_permutes_within_clusters(client: Client, tmp_path: Path, small_study: SimulatedStudy) -> None:
    plan_path = _plan(tmp_path, small_study)
    plan_path.write_text(
        plan_path.read_text().replace("distances: [aitchison, bray_curtis]", "distances: [aitchison]") + "cluster: family_id\n"
    )
    out = tmp_path / "out"
    run_study(plan_path, out, client=client, allow_outside_paths=True)
    table = pd.read_parquet(out / "permanova.parquet")
    assert (table["permuted_within"] == "family_id").all() and (table["status"] == "ok").all()
    assert json.loads((out / "manifest.json").read_text())["permanova"]["permuted_within"] == "family_id"

    study = prepare_study(load_plan(plan_path, allow_outside_paths=True), out / ".scalable_assoc" / "stores")
    layer = study.layers[0]
    clr = transformed_layer(small_study.out_dir / "species.tsv", 0.1)
    checked = 0
    for analysis in layer.analyses:
        design = layer.designs[analysis.design_key]
        ids = [layer.store.sample_ids[i] for i in layer.sample_positions[design.rows]]
        complete = clr.loc[ids].notna().all(axis=1).to_numpy()
        families = design.clusters[complete]
        assert len(np.unique(families)) < complete.sum()  # some families have several members
        args = (clr.loc[ids].to_numpy()[complete], design.matrix[complete, 1:], analysis.exposure[complete], 99)
        within = permanova_euclidean(*args, seed=3, strata=families)
        row = table[(table["exposure"] == analysis.key.exposure) & (table["adjustment"] == analysis.key.adjustment)].iloc[0]
        np.testing.assert_allclose(row["f"], within.f, rtol=1e-10)
        assert row["p"] == within.p
        checked += 1
    assert checked


def test_one_worker_and_a_rerun_give_identical_results(first_run: tuple[Path, Path], tmp_path: Path, small_study: SimulatedStudy) -> None:
    plan, out = first_run
    expected = pd.read_parquet(out / "permanova.parquet")
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None, silence_logs=logging.ERROR
        ) as cluster,
        Client(cluster) as one,
    ):
        single = run_study(plan, tmp_path / "one", client=one, allow_outside_paths=True)
        rerun = run_study(plan, out, client=one, allow_outside_paths=True, force=True)
    assert single.manifest["permanova"]["rows"] == 8 and rerun.manifest["permanova"]["rows"] == 8
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "one" / "permanova.parquet"), expected, check_exact=False, rtol=1e-12)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "permanova.parquet"), expected, check_exact=False, rtol=1e-12)
    for frame in (pd.read_parquet(tmp_path / "one" / "permanova.parquet"), pd.read_parquet(out / "permanova.parquet")):
        assert frame["p"].tolist() == expected["p"].tolist()


def test_bray_curtis_above_the_memory_limit_is_refused(
    tmp_path: Path, small_study: SimulatedStudy, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], client: Client
) -> None:
    monkeypatch.setattr(engine_permanova, "BRAY_CURTIS_MEMORY_LIMIT", 1000)
    plan = _plan(tmp_path, small_study)
    out = tmp_path / "out"
    scheduler = client.scheduler.address
    code = main(["run", str(plan), "--out", str(out), "--scheduler", scheduler, "--allow-outside-paths", "--no-report"])
    assert code == 2
    message = " ".join(error_lines(capsys.readouterr().err))
    n = small_study.n_participants
    assert "layer 'species'" in message and f"{n} x {n}" in message
    assert f"({8 * n * n} bytes)" in message and "(1000 bytes)" in message
    assert not (out / "permanova.parquet").exists() and not (out / "permanova.tsv").exists()
    # refused before any feature fit was computed
    assert not list((out / ".scalable_assoc").glob("chunks/*.parquet"))
