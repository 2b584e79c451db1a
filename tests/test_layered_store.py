"""A store holding several layers: one ``ingest --layer`` per table into one store, read by a plan.

Results from the layers of one store equal those from the tables themselves; adding a layer leaves the
others (and their checksums, hence finished results) unchanged; every wrong use exits 2 naming the store,
the layer or the plan key, with nothing written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines

from scalable_assoc.cli import main
from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import DataError, PlanError
from scalable_assoc.io.ingest import ingest_table, layer_store
from scalable_assoc.io.store import open_store, store_layers
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_plan

PLAN = """
name: layered
data:
  metadata: {metadata}
  layers:
    species: {species}
    modules: {modules}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
min_cases: 5
min_carriers: 0
"""


def _cli_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return " ".join(error_lines(err))


@pytest.fixture
def two_layer_store(tmp_path: Path, small_study: SimulatedStudy, capsys: pytest.CaptureFixture[str]) -> Path:
    store = tmp_path / "study.zarr"
    for layer, table in (("species", "species.tsv"), ("gbm", "gbm.tsv")):
        assert main(["ingest", str(small_study.out_dir / table), "--out", str(store), "--layer", layer, "--chunk-features", "7"]) == 0
        assert f"wrote {store / layer}:" in capsys.readouterr().out
    return store


def test_layers_of_one_store_give_the_results_of_their_tables(tmp_path, client, small_study: SimulatedStudy, two_layer_store) -> None:
    assert store_layers(two_layer_store) == ("gbm", "species")
    results = {}
    for name, species, modules in (
        ("tables", small_study.out_dir / "species.tsv", small_study.out_dir / "gbm.tsv"),
        # species by the plan layer's own name, modules through store_layer
        ("store", two_layer_store, f"{{path: {two_layer_store}, store_layer: gbm}}"),
    ):
        folder = tmp_path / name
        folder.mkdir()
        plan = write_plan(folder, PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=species, modules=modules))
        results[name] = run_study(plan, folder / "out", client=client, allow_outside_paths=True).results
        # The same plan again is up to date: each layer's checksum is that layer's, as the run recorded it.
        again = run_study(plan, folder / "out", client=client, allow_outside_paths=True)
        assert again.seconds == 0.0 and again.chunks_reused == again.chunks_total, name
    tables, store = results["tables"], results["store"]
    assert set(tables["layer"]) == {"species", "modules"} and len(tables) > 20
    columns = ["layer", "feature", "n", "n_cases", "n_controls", "status"]
    pd.testing.assert_frame_equal(store[columns], tables[columns])
    for statistic in ("beta", "se", "p", "q"):
        np.testing.assert_allclose(store[statistic].to_numpy(float), tables[statistic].to_numpy(float), rtol=1e-10)


def test_adding_a_layer_changes_no_other_layer(tmp_path, small_study: SimulatedStudy, two_layer_store) -> None:
    before = layer_store(two_layer_store, "auto", "species", tmp_path / "cache", "species", None)
    added = ingest_table(small_study.out_dir / "pathways.tsv", two_layer_store, layer="pathways")
    assert added.path == two_layer_store / "pathways" and store_layers(two_layer_store) == ("gbm", "pathways", "species")
    after = layer_store(two_layer_store, "auto", "species", tmp_path / "cache", "species", None)
    assert after[1] == before[1] and after[0].feature_ids == before[0].feature_ids
    # the layer's folder is itself a store: inspect or a plan may name it directly
    assert open_store(two_layer_store / "gbm").feature_ids == open_store(two_layer_store, layer="gbm").feature_ids


def test_wrong_uses_of_a_layered_store_exit_2(tmp_path, small_study: SimulatedStudy, two_layer_store, capsys) -> None:
    species = str(small_study.out_dir / "species.tsv")
    message = _cli_error(capsys, ["ingest", species, "--out", str(two_layer_store), "--layer", "species"])
    assert f"{two_layer_store} already holds layer 'species'; a layer is never overwritten" in message
    single = tmp_path / "single.zarr"
    assert main(["ingest", species, "--out", str(single)]) == 0
    message = _cli_error(capsys, ["ingest", species, "--out", str(single), "--layer", "gbm"])
    assert f"--out {single} is a single-layer store" in message and not (single / "gbm").exists()
    message = _cli_error(capsys, ["ingest", species, "--out", str(tmp_path / "x.zarr"), "--layer", "../up"])
    assert "a layer name is letters, digits" in message and not (tmp_path / "x.zarr").exists()
    with pytest.raises(DataError, match=r"a store of several layers \(gbm, species\); name the layer to read"):
        open_store(two_layer_store)

    metadata = small_study.out_dir / "metadata.tsv"
    cases = {
        # the plan layer's name is not in the store: the layers it holds and how to name one
        "absent": (f"{two_layer_store}", "holds layers gbm, species, not 'modules' named by the plan's layer name"),
        "named": (f"{{path: {two_layer_store}, store_layer: pathways}}", "not 'pathways' named by 'store_layer: pathways'"),
        "single": (f"{{path: {single}, store_layer: gbm}}", "data.layers.modules.store_layer'): " + f"{single} is a single-layer store"),
        "table": (f"{{path: {species}, store_layer: gbm}}", "'store_layer' applies to a store made by 'ingest --layer'"),
        "rank": (f"{{path: {two_layer_store}, store_layer: gbm, rank: genus}}", "(plan key 'data.layers.modules.rank')"),
    }
    for name, (modules, expected) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        plan = write_plan(folder, PLAN.format(metadata=metadata, species=species, modules=modules))
        message = _cli_error(
            capsys, ["run", str(plan), "--out", str(folder / "out"), "--workers", "1", "--no-report", "--allow-outside-paths"]
        )
        assert expected in message, (name, message)
        assert not (folder / "out" / "results.parquet").exists()


def test_plan_refuses_store_layer_for_a_table_format(tmp_path: Path) -> None:
    plan = write_plan(
        tmp_path,
        PLAN.format(metadata="m.tsv", species="s.tsv", modules="{path: g.tsv, format: wide, store_layer: gbm}"),
    )
    with pytest.raises(PlanError, match=r"data\.layers\.modules\.store_layer.*applies to stores made by 'ingest --layer'"):
        load_plan(plan)


def test_rank_is_refused_for_a_table_without_ranks(tmp_path: Path, small_study: SimulatedStudy, capsys) -> None:
    message = _cli_error(capsys, ["ingest", str(small_study.out_dir / "gbm.tsv"), "--out", str(tmp_path / "g.zarr"), "--rank", "genus"])
    assert "'rank: genus' applies to MetaPhlAn tables and BIOM tables with taxonomy, not to a wide table" in message
    assert not (tmp_path / "g.zarr").exists()
