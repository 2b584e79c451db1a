"""Per-feature plots of the top associations and the joint figure: the values drawn are the values the model saw.

One small simulated study (600 participants, the gbm layer, CLR) fitted with lm, lm_nonzero and
prevalence, so every model has significant rows and ``joint_results.parquet`` exists.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc import run_study, simulate_study, write_report
from scalable_assoc.report.feature_figures import feature_panels
from scalable_assoc.results.run_outputs import read_run
from scalable_assoc.testing import write_study_plan

pytestmark = pytest.mark.cluster

MODELS = ["lm", "lm_nonzero", "prevalence"]
TOP = 4


@dataclass(frozen=True)
class Run:
    folder: Path
    out: Path
    report: Path


@pytest.fixture(scope="module")
def three_models(tmp_path_factory: pytest.TempPathFactory, client) -> Run:
    folder = tmp_path_factory.mktemp("feature_figures")
    study = simulate_study(folder, participants=600, n_species=60, n_pathways=40, seed=1)
    plan = write_study_plan(folder, study, filename="three.yaml", absolute_paths=False, layers=["gbm"], models=MODELS, min_cases=3)
    out = folder / "results"
    run_study(plan, out, client=client)
    return Run(folder, out, write_report(out, features_top=TOP))


def _kinds(report: Path) -> set[tuple[str, str, str]]:
    page = report.read_text(encoding="utf-8")
    return set(re.findall(r'data-kind="([^"]+)" data-layer="([^"]+)" data-model="([^"]+)"', page))


def test_every_model_gets_its_panels_and_the_joint_result_its_figure(three_models: Run) -> None:
    kinds = _kinds(three_models.report)
    results = pd.read_parquet(three_models.out / "results.parquet")
    base = results[results["adjustment"] == "base"]
    for model in MODELS:
        for kind in ("heatmap", "qq", "volcano", "forest", "survival"):
            assert (kind, "gbm", model) in kinds, (kind, model)
        has_hits = bool((base.loc[base["model"] == model, "q"] < 0.05).any())
        assert (("features", "gbm", model) in kinds) == has_hits, model
        if has_hits:
            assert (three_models.out / "figures" / f"features_gbm_{model}.png").is_file()
    assert ("joint", "gbm", "joint") in kinds
    assert (three_models.out / "figures" / "joint_gbm.svg").is_file()


def test_plotted_clr_values_and_groups_are_what_the_model_saw(three_models: Run) -> None:
    run = read_run(three_models.out)
    found = feature_panels(run, TOP)
    panels = found.panels[("gbm", "lm")]
    assert 0 < len(panels) <= TOP
    chosen = run.results[(run.results["model"] == "lm") & (run.results["adjustment"] == "base")].sort_values(["q", "p"], kind="stable")
    assert [p.feature for p in panels] == list(chosen[chosen["q"] < run.plan.fdr.alpha]["feature"].head(TOP))
    # Independent CLR: the raw wide table, the kept features of features.parquet, the run's pseudocount.
    raw = pd.read_csv(three_models.folder / "gbm.tsv", sep="\t", index_col=0)
    raw.index = raw.index.astype(str)
    features = run.features[(run.features["layer"] == "gbm") & run.features["kept"].astype(bool)]["feature"].astype(str)
    pseudocount = run.manifest["layers"]["gbm"]["pseudocount"]
    logs = np.log(raw[list(features)].to_numpy(dtype=float) + pseudocount)
    # a missing cell is left out of its sample's mean (the documented CLR), and stays missing
    clr = pd.DataFrame(logs - np.nanmean(logs, axis=1, keepdims=True), index=raw.index, columns=list(features))
    analyses = {(a["exposure"], a["adjustment"], a["model"]): a for a in run.manifest["analyses"] if a["layer"] == "gbm"}
    for panel in panels:
        assert panel.exact_participants
        expected = clr.loc[list(panel.sample_ids), panel.feature].to_numpy()
        np.testing.assert_allclose(panel.values, expected, rtol=1e-12, atol=1e-12)
        analysis = analyses[(panel.exposure_name, panel.adjustment, "lm")]
        assert len(panel.sample_ids) == analysis["n"]
        assert int((panel.exposure == 1).sum()) == analysis["n_cases"]
        assert int((panel.exposure == 0).sum()) == analysis["n_controls"]
    # prevalence panels: presence of the raw value (threshold 0)
    for panel in found.panels.get(("gbm", "prevalence"), []):
        values = raw.loc[list(panel.sample_ids), panel.feature].to_numpy(dtype=float)
        present = np.where(np.isnan(values), np.nan, (values > 0).astype(float))
        np.testing.assert_array_equal(panel.values, present)


def test_a_report_without_the_layer_store_writes_with_a_note(three_models: Run, tmp_path: Path) -> None:
    moved = tmp_path / "results"
    shutil.copytree(three_models.out, moved, ignore=shutil.ignore_patterns("stores"))
    manifest_path = moved / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["inputs"]["layer:gbm"]["store"] = str(tmp_path / "gone")
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    report = write_report(moved, features_top=TOP)
    page = report.read_text(encoding="utf-8")
    assert "figure-note" in page and "per-feature plots not drawn" in page
    assert not any(kind == "features" for kind, _, _ in _kinds(report))
    assert ("heatmap", "gbm", "lm") in _kinds(report)
