"""The run report: figures and report.html from a run's output files, checked in a real browser and against independent numbers.

The browser test drives Debian's chromium (``/usr/bin/chromium``) through
playwright. It is skipped when either is missing, unless
``SCALABLE_ASSOC_REQUIRE_BROWSER=1`` (CI), which makes that a failure.
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
from browser import check_report_in_browser
from scipy import stats

from scalable_assoc import load_plan, run_study, simulate_study, write_report
from scalable_assoc.cli import main

pytestmark = pytest.mark.cluster

TOP = 10


@dataclass(frozen=True)
class Reported:
    run_dir: Path
    report: Path
    alpha: float
    adjustments: list[str]
    plan_path: Path


@pytest.fixture(scope="module")
def reported(tmp_path_factory: pytest.TempPathFactory, client) -> Reported:
    folder = tmp_path_factory.mktemp("report")
    study = simulate_study(folder, participants=600, n_species=60, n_pathways=40, seed=1)
    plan = load_plan(study.plan_path)
    out = folder / "results"
    run_study(plan, out, client=client, min_cases=3)
    report = write_report(out, top=TOP)
    return Reported(out, report, plan.fdr.alpha, list(plan.adjustments), study.plan_path)


def _marks(report: Path) -> pd.DataFrame:
    page = report.read_text(encoding="utf-8")
    found = re.search(r'<script type="application/json" id="heatmap-marks">(.*?)</script>', page, re.S)
    assert found, "report.html carries the heatmap marks"
    return pd.DataFrame(json.loads(found.group(1)))


def test_inflation_factors_match_an_independent_computation(reported: Reported) -> None:
    results = pd.read_parquet(reported.run_dir / "results.parquet")
    written = pd.read_csv(reported.run_dir / "figures" / "inflation.tsv", sep="\t")
    keys = ["layer", "model", "exposure", "adjustment"]
    expected = {}
    for key, group in results.groupby(keys):
        p = group["p"].dropna().to_numpy(dtype=float)
        expected[key] = np.median(stats.chi2.isf(p, 1)) / 0.4549
    assert len(written) == len(expected)
    for *key, value in written[[*keys, "lambda"]].itertuples(index=False, name=None):
        assert np.isclose(value, expected[tuple(key)], rtol=1e-12, atol=1e-12, equal_nan=True), key


def test_heatmap_marks_are_the_base_set_associations_significant_by_both_p_and_q(reported: Reported) -> None:
    results = pd.read_parquet(reported.run_dir / "results.parquet")
    marks = _marks(reported.report)
    base = results[results["adjustment"] == reported.adjustments[0]]  # every exposure of the simulated plan runs under the first set
    significant = results[results["q"] < reported.alpha]
    for layer, rows in base.groupby("layer"):
        shown = marks[marks["layer"] == layer]
        # the plotted features: the TOP with the smallest q anywhere, among those with q < alpha
        best = significant[significant["layer"] == layer].groupby("feature")["q"].min().sort_values().head(TOP)
        assert set(shown["feature"]) == set(best.index), layer
        plotted = rows[rows["feature"].isin(best.index)]
        both = plotted[(plotted["q"] < reported.alpha) & (plotted["p"] < 0.05)]
        assert set(shown.loc[shown["mark"] == "**", ["feature", "exposure"]].itertuples(index=False, name=None)) == set(
            both[["feature", "exposure"]].itertuples(index=False, name=None)
        ), layer
        nominal = plotted[(plotted["p"] < 0.05) & ~(plotted["q"] < reported.alpha)]
        assert set(shown.loc[shown["mark"] == "*", ["feature", "exposure"]].itertuples(index=False, name=None)) == set(
            nominal[["feature", "exposure"]].itertuples(index=False, name=None)
        ), layer
    assert (marks["mark"] == "**").any(), "the simulated study has significant associations to mark"


def test_the_report_in_a_browser(reported: Reported) -> None:
    significant_rows = len(pd.read_csv(reported.run_dir / "significant_results.tsv", sep="\t"))
    results = pd.read_parquet(reported.run_dir / "results.parquet", columns=["layer", "adjustment", "q"])
    layers = results["layer"].nunique()
    # per-feature plots where the base set (the first: every exposure of the simulated plan runs under it) has q < alpha
    with_hits = results[(results["adjustment"] == reported.adjustments[0]) & (results["q"] < reported.alpha)]["layer"].nunique()
    assert with_hits > 0

    def read(page) -> tuple[list[list[str]], list[str]]:
        rows = page.eval_on_selector_all("#survival-table tr", "rows => rows.map(r => Array.from(r.children).map(c => c.textContent))")
        contents = page.eval_on_selector_all("nav.contents a", "links => links.map(a => a.getAttribute('href'))")
        return rows, contents

    # heatmap, qq, volcano, forest, survival per layer (one model), and the per-feature plots
    links, (survival_rows, contents) = check_report_in_browser(reported.report, 5 * layers + with_hits, significant_rows, read)
    assert contents and all(link.startswith("#") for link in contents)  # the contents line leads to the sections
    assert "#diversity" not in contents  # no diversity block: no such section
    _assert_survival_table_equals_the_file(survival_rows, reported.run_dir)
    assert {"results.parquet", "significant_results.tsv", "manifest.json", "figures/inflation.tsv"} <= set(links)


def _assert_survival_table_equals_the_file(shown: list[list[str]], run_dir: Path) -> None:
    """Each cell 'kept/base (pct%)' equals the sums of adjustment_survival.tsv over exposures."""
    survival = pd.read_csv(run_dir / "adjustment_survival.tsv", sep="\t")
    survival = survival[survival["significant_base"] > 0]
    sums = survival.groupby(["layer", "model", "adjustment"])[["still_significant", "significant_base"]].sum()
    header, body = shown[0], shown[1:]
    assert header[:2] == ["layer", "model"] and len(body) == survival[["layer", "model"]].drop_duplicates().shape[0]
    checked = 0
    for layer, model, *cells in body:
        for adjustment, cell in zip(header[2:], cells, strict=True):
            kept, base = sums.loc[(layer, model, adjustment)]
            assert cell == f"{kept}/{base} ({100 * kept / base:.1f}%)", (layer, adjustment, cell)
            checked += 1
    assert checked == len(sums) > 0  # the simulated study has associations that survive, or not


def test_report_on_a_folder_that_is_not_a_finished_run_exits_2_and_writes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "results.parquet").write_bytes(b"")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["report", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert str(tmp_path) in error and "manifest.json" in error
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_a_run_that_is_up_to_date_keeps_its_report(reported: Reported, client, capsys) -> None:
    written = reported.report.stat().st_mtime_ns
    command = ["run", str(reported.plan_path), "--out", str(reported.run_dir), "--scheduler", client.scheduler.address, "--min-cases", "3"]
    assert main(command) == 0
    assert "(up to date)" in capsys.readouterr().out
    assert reported.report.stat().st_mtime_ns == written


def test_a_run_removes_an_earlier_report_with_the_other_outputs(tmp_path: Path) -> None:
    from scalable_assoc.engine.outputs import remove_outputs

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "qq_species_lm.svg").write_text("<svg/>")
    (tmp_path / "report.html").write_text("<html></html>")
    remove_outputs(tmp_path)  # what a run does first, so a failing run leaves no earlier answer behind
    assert not (tmp_path / "report.html").exists() and not (tmp_path / "figures").exists()


@pytest.mark.parametrize(
    ("name", "dropped"), [("results.parquet", "q"), ("adjustment_survival.tsv", "still_significant"), ("manifest.json", "analyses")]
)
def test_report_on_a_run_of_an_older_format_exits_2_naming_what_it_lacks_and_writes_nothing(
    reported: Reported, tmp_path: Path, capsys, name: str, dropped: str
) -> None:
    older = tmp_path / "older"
    shutil.copytree(reported.run_dir, older, ignore=shutil.ignore_patterns("figures", "report.html"))
    path = older / name
    if name.endswith(".parquet"):
        pd.read_parquet(path).drop(columns=[dropped]).to_parquet(path)
    elif name.endswith(".tsv"):
        pd.read_csv(path, sep="\t").drop(columns=[dropped]).to_csv(path, sep="\t", index=False)
    else:
        manifest = json.loads(path.read_text())
        del manifest[dropped]
        path.write_text(json.dumps(manifest))
    before = sorted(p.relative_to(older) for p in older.rglob("*"))
    assert main(["report", str(older)]) == 2
    error = capsys.readouterr().err
    assert str(path) in error and dropped in error and "older" in error
    assert sorted(p.relative_to(older) for p in older.rglob("*")) == before


def test_the_timings_table_shows_phases_and_a_note_the_moments_that_overlap_them() -> None:
    from scalable_assoc.report.html import _run_section

    timings = {"prepare": 1.25, "cluster_start": 0.0, "cluster_start_background": 1.5, "filter": 0.1, "first_part": 2.5}
    timings |= {"first_task": 2.75, "total": 4.0}
    html = "".join(_run_section({"timings_seconds": timings, "warnings": []}))
    table = html[html.index('id="timings-table"') : html.index("</table>")]
    assert "prepare" in table and "filter" in table and "total" in table
    assert "first_task" not in table and "first_part" not in table and "cluster_start_background" not in table
    note = re.search(r'<p id="timings-note">(.*?)</p>', html)
    assert note is not None
    assert note[1] == (
        "First layers handed to the cluster 2.50 s after the command started; first task result 2.75 s after the command started; "
        "the local cluster started in the background, while the study was prepared, in 1.50 s."
    )
    assert "timings-note" not in "".join(_run_section({"timings_seconds": {"prepare": 1.0}, "warnings": []}))
