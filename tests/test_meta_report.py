"""The report of a meta-analysis or pooled folder: forest estimates kept by ``meta``, the page in a real browser, refusals.

The browser test drives Debian's chromium through playwright, as ``tests/test_report.py``
does (skipped when either is missing, unless ``SCALABLE_ASSOC_REQUIRE_BROWSER=1``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import check_report_in_browser

from scalable_assoc import meta_analyse, open_cohorts, pool_cohorts, read_mapping, run_study, simulate_cohorts, write_report
from scalable_assoc.cli import main
from scalable_assoc.engine.sufficient import sufficient_statistics
from scalable_assoc.results.consortium import FOREST_KEYS, KEY_COLUMNS
from scalable_assoc.results.harmonise import harmonised_names
from scalable_assoc.results.sumstats import DisclosureRules, read_run, write_sumstats

pytestmark = pytest.mark.cluster

TOP = 6


@dataclass(frozen=True)
class Combined:
    root: Path
    cohort_files: list[Path]
    mapping: dict[str, str]
    meta: Path
    pooled: Path


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory, client) -> Combined:
    """Three small simulated cohorts (300 to 900 participants), run, exported with cross-products, meta-analysed and pooled."""
    root = tmp_path_factory.mktemp("meta_report")
    biobanks = simulate_cohorts(root, cohorts=3, participants=900, n_species=50, n_pathways=8, seed=3)
    files = []
    for name, study in biobanks.studies.items():
        run_dir = study.out_dir / "results"
        run_study(study.plan_path, run_dir, client=client, min_cases=3)
        files.append(root / f"{name}.parquet")
        write_sumstats(read_run(run_dir), name, files[-1], DisclosureRules(), sufficient_statistics(run_dir, client=client))
    mapping = read_mapping(root / "feature_mapping.tsv")
    opened = open_cohorts(files, need_sufficient=True)
    meta_analyse(opened, root / "meta", mapping=mapping)
    pool_cohorts(opened, root / "pooled", mapping=mapping)
    return Combined(root, files, mapping, root / "meta", root / "pooled")


def test_forest_estimates_are_the_cohorts_rows_of_the_smallest_p_keys(combined: Combined) -> None:
    keys = list(KEY_COLUMNS)
    results = pd.read_parquet(combined.meta / "meta_results.parquet")
    forest = pd.read_parquet(combined.meta / "meta_forest_estimates.parquet")
    assert (combined.meta / "meta_forest_estimates.tsv").is_file()
    # the keys: per layer x model, the FOREST_KEYS rows with the smallest p
    expected = results.dropna(subset=["p"]).sort_values("p").groupby(["layer", "model"]).head(FOREST_KEYS)
    assert set(forest[keys].drop_duplicates().itertuples(index=False, name=None)) == set(expected[keys].itertuples(index=False, name=None))
    # every cohort combined for a key has its row, and its numbers are the cohort file's
    per_key = forest.groupby(keys).size().rename("rows").reset_index().merge(expected[[*keys, "k"]], on=keys)
    assert (per_key["rows"] == per_key["k"]).all()
    for path in combined.cohort_files:
        cohort = path.stem
        own = pd.read_parquet(path)
        own = own.assign(feature=harmonised_names(own["feature"].astype(str), combined.mapping).to_numpy())
        shown = forest[forest["cohort"] == cohort].merge(own, on=keys, suffixes=("", "_cohort"))
        assert len(shown) == int((forest["cohort"] == cohort).sum()) > 0
        np.testing.assert_array_equal(shown["beta"], shown["beta_cohort"])
        np.testing.assert_array_equal(shown["se"], shown["se_cohort"])
        np.testing.assert_array_equal(shown["n"], shown["n_cohort"])
    manifest = json.loads((combined.meta / "meta_manifest.json").read_text())
    assert all(entry["samples"] and all(v > 0 for v in entry["samples"].values()) for entry in manifest["cohorts"])


def test_the_meta_report_in_a_browser(combined: Combined) -> None:
    report = write_report(combined.meta, top=TOP)
    assert report == combined.meta / "report.html"
    results = pd.read_parquet(combined.meta / "meta_results.parquet")
    alpha = json.loads((combined.meta / "meta_manifest.json").read_text())["settings"]["alpha"]
    significant = int((results["q"] < alpha).sum())
    assert significant > 0, "the simulated cohorts share associations to find"
    groups = results.groupby(["layer", "model"]).ngroups
    links, _ = check_report_in_browser(report, 3 * groups, significant)  # forests, heterogeneity, direction per layer x model
    assert {"meta_results.parquet", "meta_forest_estimates.parquet", "meta_manifest.json", "figures/inflation.tsv"} <= set(links)
    for layer in results["layer"].unique():
        for suffix in (".svg", ".png"):
            assert (combined.meta / "figures" / f"meta_forest_{layer}_lm{suffix}").stat().st_size > 0
    page = report.read_text(encoding="utf-8")
    for path in combined.cohort_files:  # the inputs with their checksums
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar["files"]["summary"]["sha256"] in page
    assert 'id="participants-table"' in page and "forest-note" not in page
    assert "data:image/svg+xml;base64," in page and "<script src" not in page


def test_the_pool_report_in_a_browser(combined: Combined) -> None:
    report = write_report(combined.pooled)
    results = pd.read_parquet(combined.pooled / "pooled_results.parquet")
    alpha = json.loads((combined.pooled / "pool_manifest.json").read_text())["settings"]["alpha"]
    groups = results.groupby(["layer", "model"]).ngroups
    several_sets = results["adjustment"].nunique() > 1
    links, _ = check_report_in_browser(report, (4 if several_sets else 3) * groups, int((results["q"] < alpha).sum()))
    assert {"pooled_results.parquet", "pool_manifest.json", "figures/inflation.tsv"} <= set(links)


def test_a_meta_folder_without_forest_estimates_still_gets_a_report(combined: Combined, tmp_path: Path) -> None:
    older = tmp_path / "older_meta"
    shutil.copytree(combined.meta, older, ignore=shutil.ignore_patterns("meta_forest_estimates.*", "figures", "report.html"))
    assert main(["report", str(older)]) == 0
    page = (older / "report.html").read_text(encoding="utf-8")
    assert 'id="forest-note"' in page and "rerun" in page
    assert not list((older / "figures").glob("meta_forest_*")) and list((older / "figures").glob("heterogeneity_*.svg"))


def test_report_on_a_folder_of_no_kind_exits_2_naming_what_is_missing(tmp_path: Path, capsys) -> None:
    (tmp_path / "meta_results.parquet").write_bytes(b"")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "manifest.json" in error and "meta_manifest.json" in error and "pool_manifest.json" in error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # a meta folder that lacks its results is refused as such
    (tmp_path / "meta_manifest.json").write_text("{}")
    (tmp_path / "meta_results.parquet").unlink()
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "meta_results.parquet" in error and "feature_coverage.tsv" in error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_meta_again_removes_the_report_of_its_earlier_outputs(combined: Combined, tmp_path: Path) -> None:
    folder = tmp_path / "again"
    shutil.copytree(combined.meta, folder)
    write_report(folder, top=1)
    assert (folder / "report.html").is_file() and (folder / "figures").is_dir()
    meta_analyse(open_cohorts(combined.cohort_files), folder, mapping=combined.mapping, method="fe")
    assert not (folder / "report.html").exists() and not (folder / "figures").exists()
    assert (folder / "meta_forest_estimates.parquet").is_file()
