"""``preprocess.clr_reference`` and ``preprocess.filter``: the reference study's CLR against the group's R function.

Reference values: ``tests/reference/clr_reference/clr_reference.R`` (base R, the group's function
``log(x + c_x) - rowMeans(log(ref + c_r))``, each c half the smallest non-zero value of its matrix) on
the inputs of ``make_inputs.py``; its outputs are committed (CI has no R). Tolerances: transformed
values 1e-12 (absolute; they are O(1) logs, R printed 17 digits); betas 1e-8 relative against
statsmodels OLS on the R values (the run's OLS solves differently from statsmodels' pinv).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm

from scalable_assoc import load_plan, run_study
from scalable_assoc.engine.chunks import chunk_tasks
from scalable_assoc.engine.filters import filter_layers
from scalable_assoc.engine.graph import hold_on_cluster, layer_token
from scalable_assoc.engine.prepare import prepare_study
from scalable_assoc.engine.tasks import model_block
from scalable_assoc.errors import PlanError

REFERENCE = Path(__file__).parent / "reference" / "clr_reference"
MIN_PREVALENCE = 0.3  # as in clr_reference.R

PLAN = """
data:
  metadata: metadata.tsv
  layers:
    species: {{path: species.tsv, format: wide}}
    pathways: {{path: pathways.tsv, format: wide, preprocess: {{clr_reference: species}}}}
preprocess: {{min_prevalence: {min_prevalence}, transform: clr, pseudocount: half_min{order}}}
exposures:
  age: {{column: age}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [sex, bmi]
min_carriers: 0  # most pathways are present in nearly everyone: fit them all
"""

TAIL = "exposures:\n  age: {column: age}\nadjustments:\n  base: [bmi]\n"


def _study(folder: Path, order: str) -> Path:
    folder.mkdir()
    for name in ("species.tsv", "pathways.tsv", "metadata.tsv"):
        shutil.copy(REFERENCE / name, folder / name)
    (folder / "plan.yaml").write_text(PLAN.format(min_prevalence=MIN_PREVALENCE, order=f", filter: {order}" if order else ""))
    return folder / "plan.yaml"


def _transformed(client, plan_path: Path, work: Path) -> pd.DataFrame:
    """The pathways layer's transformed view of its kept features, read through the engine's own filter pass and block task."""
    study = prepare_study(load_plan(plan_path), work / "stores")
    positions = {layer.spec.name: hold_on_cluster(client, layer.sample_positions, "samples") for layer in study.layers}
    filters = filter_layers(client, study, positions, work / "filters")
    layer = study.layer_work("pathways")
    layer_filter = filters["pathways"]
    frames = []
    for index, (start, stop) in enumerate(layer.store.block_bounds()):
        kept = layer_filter.kept[index]
        block = model_block(
            layer.store.path,
            start,
            stop,
            layer.sample_positions,
            kept,
            "transformed",
            "clr",
            layer_filter.pseudocount,
            layer_filter.sample_totals,
            0.0,
        )
        ids = [layer.store.feature_ids[start + j] for j in np.flatnonzero(kept)]
        frames.append(pd.DataFrame(block.values, columns=ids))
    samples = [layer.store.sample_ids[i] for i in layer.sample_positions]
    return pd.concat(frames, axis=1).set_index(pd.Index(samples, name="sample_id"))


@pytest.mark.parametrize(("order", "expected_file"), [("after_transform", "clr_after.tsv"), ("", "clr_before.tsv")])
def test_clr_reference_equals_the_groups_r_function(tmp_path: Path, client, order: str, expected_file: str) -> None:
    plan_path = _study(tmp_path / "study", order)
    expected = pd.read_csv(REFERENCE / expected_file, sep="\t", index_col=0)
    raw = pd.read_csv(REFERENCE / "pathways.tsv", sep="\t", index_col=0)
    kept = list(raw.columns[(raw > 0).mean() >= MIN_PREVALENCE])
    ours = _transformed(client, plan_path, tmp_path / "work")
    assert list(ours.columns) == kept and len(kept) < raw.shape[1]  # the filter drops a pathway either way
    expected = expected.loc[ours.index, kept]
    np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)

    # The fitted slopes equal statsmodels OLS on the R-transformed values.
    results = run_study(plan_path, tmp_path / "out", client=client).results
    recorded = json.loads((tmp_path / "out" / "manifest.json").read_text())["layers"]["pathways"]
    assert recorded["clr_reference"] == "species" and recorded.get("filter") == (order or None)
    assert recorded["transform_features"] == (raw.shape[1] if order else len(kept))
    metadata = pd.read_csv(REFERENCE / "metadata.tsv", sep="\t", index_col=0).loc[ours.index].dropna()  # complete cases, as the run
    expected = expected.loc[metadata.index]
    male = (metadata["sex"] == sorted(metadata["sex"].unique())[1]).astype(float)
    design = sm.add_constant(pd.DataFrame({"age": metadata["age"], "male": male, "bmi": metadata["bmi"]}))
    rows = results[results["layer"] == "pathways"].set_index("feature")
    assert sorted(rows.index) == sorted(kept)
    assert (rows["status"] == "ok").all()
    for feature in kept:
        fit = sm.OLS(expected[feature].to_numpy(), design.to_numpy()).fit()
        assert rows.loc[feature, "beta"] == pytest.approx(fit.params[1], rel=1e-8), feature
        assert rows.loc[feature, "se"] == pytest.approx(fit.bse[1], rel=1e-8), feature


def test_a_reference_layer_without_analyses_still_gives_the_denominator(tmp_path: Path, client) -> None:
    # Only pathways are analysed: species is prepared and filtered for its per-sample sums, nothing of it is fitted.
    plan_path = _study(tmp_path / "study", "after_transform")
    plan_path.write_text(plan_path.read_text() + "analyses:\n  - {layers: [pathways]}\n")
    ours = _transformed(client, plan_path, tmp_path / "work")
    expected = pd.read_csv(REFERENCE / "clr_after.tsv", sep="\t", index_col=0).loc[ours.index, list(ours.columns)]
    np.testing.assert_allclose(ours.to_numpy(), expected.to_numpy(), rtol=0, atol=1e-12)
    summary = run_study(plan_path, tmp_path / "out", client=client)
    assert set(summary.results["layer"]) == {"pathways"}


def test_filter_after_transform_without_reference_uses_all_features(tmp_path: Path, client) -> None:
    # The species layer's own CLR after_transform: c and the per-sample mean over all 30 species.
    plan_path = _study(tmp_path / "study", "after_transform")
    study = prepare_study(load_plan(plan_path), tmp_path / "work" / "stores")
    positions = {layer.spec.name: hold_on_cluster(client, layer.sample_positions, "samples") for layer in study.layers}
    species_filter = filter_layers(client, study, positions, tmp_path / "work" / "filters")["species"]
    raw = pd.read_csv(REFERENCE / "species.tsv", sep="\t", index_col=0).to_numpy()
    c = raw[raw > 0].min() / 2
    assert species_filter.pseudocount == c
    assert species_filter.n_kept < raw.shape[1]
    assert species_filter.sample_totals is not None
    np.testing.assert_allclose(species_filter.sample_totals[0] / species_filter.sample_totals[1], np.log(raw + c).mean(axis=1), atol=1e-12)


@pytest.mark.parametrize(
    ("layers", "top", "key", "message"),
    [
        (
            "pathways: {path: pathways.tsv, preprocess: {clr_reference: genus}}",
            "",
            "data.layers.pathways.preprocess.clr_reference",
            "no layer called 'genus'",
        ),
        (
            "pathways: {path: pathways.tsv, preprocess: {clr_reference: species, transform: log}}",
            "",
            "data.layers.pathways.preprocess.clr_reference",
            "transform 'log'",
        ),
        (
            "pathways: {path: pathways.tsv, preprocess: {clr_reference: species}}\n"
            "    species: {path: species.tsv, preprocess: {transform: tss}}",
            "",
            "data.layers.pathways.preprocess.clr_reference",
            "reference layer 'species' has transform 'tss'",
        ),
        ("pathways: pathways.tsv", "preprocess: {clr_reference: nowhere}", "preprocess.clr_reference", "no layer called 'nowhere'"),
        ("pathways: pathways.tsv", "preprocess: {filter: afterwards}", "preprocess.filter", "before_transform, after_transform"),
        ("pathways: {path: pathways.tsv, preprocess: {filter: 1}}", "", "data.layers.pathways.preprocess.filter", "before_transform"),
    ],
)
def test_plan_errors_name_the_key(tmp_path: Path, layers: str, top: str, key: str, message: str) -> None:
    if "species:" not in layers:
        layers += "\n    species: species.tsv"
    for name in ("species.tsv", "pathways.tsv", "metadata.tsv"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    text = f"data:\n  metadata: metadata.tsv\n  layers:\n    {layers}\n{top}\n{TAIL}"
    (tmp_path / "plan.yaml").write_text(text)
    with pytest.raises(PlanError) as error:
        load_plan(tmp_path / "plan.yaml")
    assert key in str(error.value) and message in str(error.value), str(error.value)


def test_defaults_keep_the_plan_hashes(tmp_path: Path) -> None:
    # A plan without the new keys, and one naming the defaults, hash as before they existed: old chunks are reused.
    for name in ("species.tsv", "pathways.tsv", "metadata.tsv"):
        shutil.copy(REFERENCE / name, tmp_path / name)
    base = "data:\n  metadata: metadata.tsv\n  layers:\n    species: species.tsv\n    pathways: pathways.tsv\n{pre}"
    hashes = {}
    for label, pre in {
        "none": "",
        "defaults": "preprocess: {filter: before_transform}\n",
        "self": "preprocess: {clr_reference: species}\n",
        "after": "preprocess: {filter: after_transform}\n",
    }.items():
        path = tmp_path / f"{label}.yaml"
        path.write_text(base.format(pre=pre) + TAIL)
        hashes[label] = load_plan(path).rows_hash()
    assert hashes["none"] == hashes["defaults"] and hashes["after"] != hashes["none"]
    assert hashes["self"] != hashes["none"]  # species names itself (None) but pathways takes species' denominator


def test_a_changed_reference_table_changes_the_layer_token_and_chunk_ids(tmp_path: Path) -> None:
    # The pathways' CLR rests on the species table: editing it must not let a resumed run reuse pathway chunks or filters.
    plan_path = _study(tmp_path / "study", "after_transform")
    before = prepare_study(load_plan(plan_path), tmp_path / "stores")
    species = pd.read_csv(plan_path.parent / "species.tsv", sep="\t", index_col=0)
    species.iloc[0, 0] += 1.0
    species.to_csv(plan_path.parent / "species.tsv", sep="\t", float_format="%.17g")
    after = prepare_study(load_plan(plan_path), tmp_path / "stores")
    pathways = [study.layer_work("pathways") for study in (before, after)]
    assert pathways[0].input_sha256 == pathways[1].input_sha256
    assert layer_token(before, pathways[0]) != layer_token(after, pathways[1])
    ids = [{t.chunk_id for t in chunk_tasks(study, 8) if t.layer == "pathways"} for study in (before, after)]
    assert ids[0] and not ids[0] & ids[1]
