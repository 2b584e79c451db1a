"""Summaries cover exactly what ran; outputs shaped for reading (MaAsLin-like).

With ``analyses:`` blocks an exposure need not run under the plan's first
adjustment set. Each layer x exposure x model is then read under its own base:
the first set, in plan order, it ran under. The console, adjustment_summary.tsv
and adjustment_survival.tsv must not invent combinations that never ran, nor
miss findings of an exposure whose base is not the plan's first set.
Also: all_results.tsv by q within FDR family, features.tsv, ``--top``.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from scalable_assoc.cli import main
from scalable_assoc.report.console import run_report
from scalable_assoc.results.gather import sorted_by_family_q
from scalable_assoc.results.summary import adjustment_summary, survival_readout
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_plan

ALPHA = 0.05
#: The plan's sets in order; any_ptd never runs under the first ('base') nor 'ptd'.
ORDER = ["base", "ptd", "ptd_only_set", "gi"]
BLOCKS = {"MDD": ["base", "ptd"], "any_ptd": ["ptd_only_set", "gi"]}


def _results(runs: dict[str, list[str]], q: dict[tuple[str, str], list[float]], features: int = 4) -> pd.DataFrame:
    """A results table in plan order (layer, exposure, adjustment, feature) with the given q per exposure x set."""
    rows = []
    for exposure, sets in runs.items():
        for adjustment in ORDER:
            if adjustment not in sets:
                continue
            for j in range(features):
                value = q[(exposure, adjustment)][j]
                beta = (j + 1.0) * (1.0 if adjustment in ("base", "ptd_only_set") else 0.5)
                rows.append(("gbm", f"M{j}", exposure, adjustment, "lm", beta, value / 2, value, "ok"))
    return pd.DataFrame(rows, columns=["layer", "feature", "exposure", "adjustment", "model", "beta", "p", "q", "status"])


BLOCK_Q = {
    ("MDD", "base"): [0.001, 0.01, 0.2, 0.9],
    ("MDD", "ptd"): [0.002, 0.3, 0.01, 0.9],
    ("any_ptd", "ptd_only_set"): [0.0001, 0.02, 0.03, 0.5],
    ("any_ptd", "gi"): [0.001, 0.04, 0.6, 0.01],
}


# --------------------------------------------------------------------------------------
# adjustment_summary / survival_readout / run_report on a table with analyses: blocks
# --------------------------------------------------------------------------------------
def test_summary_compares_each_exposure_with_the_first_set_it_ran_under() -> None:
    summary = adjustment_summary(_results(BLOCKS, BLOCK_Q), ORDER, ALPHA).set_index(["exposure", "feature"])
    assert list(summary["base"].groupby("exposure").unique().map(list)) == [["base"], ["ptd_only_set"]]
    # any_ptd never ran under 'base': empty, never counted as "not significant".
    any_ptd = summary.loc["any_ptd"]
    assert any_ptd[["beta_base", "q_base", "beta_ptd", "q_ptd"]].isna().all().all()
    assert any_ptd["significant_base"].isna().all() and any_ptd["significant_ptd"].isna().all()
    assert list(any_ptd["significant_ptd_only_set"]) == [True, True, True, False]
    np.testing.assert_allclose(any_ptd["change_pct_gi"], -50.0)  # beta halves relative to its own base
    assert list(any_ptd["survives_all"]) == [True, True, False, False]
    mdd = summary.loc["MDD"]
    assert mdd["significant_ptd_only_set"].isna().all() and mdd["change_pct_gi"].isna().all()
    np.testing.assert_allclose(mdd["change_pct_ptd"], -50.0)
    assert list(mdd["survives_all"]) == [True, False, False, False]
    # A set that is only ever a base gets no change column.
    assert "change_pct_ptd_only_set" not in summary.columns and "change_pct_base" not in summary.columns


def test_survival_lists_only_the_sets_each_exposure_ran_under() -> None:
    summary = adjustment_summary(_results(BLOCKS, BLOCK_Q), ORDER, ALPHA)
    survival = survival_readout(summary, ORDER)
    assert survival[["exposure", "base", "adjustment", "significant_base", "still_significant"]].values.tolist() == [
        ["MDD", "base", "ptd", 2, 1],
        ["any_ptd", "ptd_only_set", "gi", 3, 2],
    ]
    assert not survival.isna().any().any()


def test_console_shows_each_exposure_under_its_base_set() -> None:
    results = _results(BLOCKS, BLOCK_Q)
    survival = survival_readout(adjustment_summary(results, ORDER, ALPHA), ORDER)
    report = run_report(Path("out"), results, survival, ORDER, ALPHA, top=10)
    assert "no association reached" not in report
    assert "base + ptd: 1/2 (50%)" in report and "ptd_only_set + gi: 2/3 (67%)" in report
    assert "+ ptd_only_set" not in report and "base + gi" not in report
    findings = report[report.index("top findings in gbm") :].splitlines()[1:]
    assert len(findings) == 5  # MDD: 2 under base; any_ptd: 3 under ptd_only_set
    assert sum("in any_ptd" in line and line.endswith("(ptd_only_set)") for line in findings) == 3
    assert sum("in MDD" in line and line.endswith("(base)") for line in findings) == 2
    # Significant only under later sets: said so, not "nothing reached the threshold".
    later_only = results[results["adjustment"].isin(["ptd", "gi"])]
    report = run_report(
        Path("out"), pd.concat([results[~results.index.isin(later_only.index)].assign(q=0.9), later_only]), survival.iloc[:0], ORDER, ALPHA
    )
    assert "no association reached the FDR threshold under its base adjustment set; 5 did under later sets" in report
    assert "top findings" not in run_report(Path("out"), results, survival, ORDER, ALPHA, top=0)


def test_without_blocks_the_summaries_are_unchanged() -> None:
    """Every exposure under every set: one base (the plan's first), named in the base column, plain booleans."""
    every = {"MDD": ORDER, "any_ptd": ORDER}
    q = {(e, a): BLOCK_Q.get((e, a), [0.001, 0.2, 0.04, 0.9]) for e in every for a in ORDER}
    results = _results(every, q)
    summary = adjustment_summary(results, ORDER, ALPHA)
    assert list(summary.columns) == [
        "layer",
        "feature",
        "exposure",
        "model",
        "base",
        *[f"{part}_{a}" for a in ORDER for part in ("beta", "q", "significant")],
        "change_pct_ptd",
        "change_pct_ptd_only_set",
        "change_pct_gi",
        "survives_all",
    ]
    assert all(summary[f"significant_{a}"].dtype == bool for a in ORDER)
    np.testing.assert_allclose(summary["change_pct_ptd_only_set"], 0.0)
    survival = survival_readout(summary, ORDER)
    assert (summary["base"] == "base").all()
    assert list(survival.columns) == [
        "layer",
        "exposure",
        "model",
        "base",
        "adjustment",
        "significant_base",
        "still_significant",
        "percent",
    ]
    assert survival[["exposure", "adjustment"]].values.tolist() == [[e, a] for e in every for a in ORDER[1:]]
    report = run_report(Path("out"), results, survival, ORDER, ALPHA)
    assert "associations significant under 'base' that stay significant after further adjustment:\n  + ptd: 3/4 (75%)" in report
    assert "top findings in gbm (base adjustment, by q):" in report


# --------------------------------------------------------------------------------------
# all_results.tsv: by q within family
# --------------------------------------------------------------------------------------
def test_rows_sorted_by_q_within_family_in_plan_order() -> None:
    frame = pd.DataFrame(
        {
            "layer": ["gbm"] * 6 + ["species"] * 3,
            "exposure": ["MDD"] * 3 + ["ssri"] * 3 + ["MDD"] * 3,
            "feature": list("abcdefghi"),
            "p": [0.5, np.nan, 0.01, 0.2, 0.2, 0.001, np.nan, 0.3, 0.03],
            "q": [0.5, np.nan, 0.02, 0.3, 0.3, 0.006, np.nan, 0.3, 0.09],
        }
    )
    frame.loc[4, "p"] = 0.1  # same q as 'd', smaller p: first
    assert "".join(sorted_by_family_q(frame, ["layer", "exposure"])["feature"]) == "cabfedihg"
    assert "".join(sorted_by_family_q(frame, ["layer"])["feature"]) == "fcedabihg"


# --------------------------------------------------------------------------------------
# A real run with analyses: blocks, through the command
# --------------------------------------------------------------------------------------
BLOCKS_PLAN = """
name: blocks
data:
  metadata: {folder}/metadata.tsv
  layers:
    species: {folder}/species.tsv
    gbm: {folder}/gbm.tsv
preprocess: {{min_prevalence: 0.1, transform: clr}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  any_ptd: {{cases: "any_ptd == 1", controls: "any_ptd == 0"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
  ptd: [base, any_ptd]
  ptd_only_set: [age, sex]
  gi: [age, sex, bmi, ibs]
analyses:
  - {{exposures: [MDD], adjustments: [base, ptd]}}
  - {{exposures: [any_ptd], adjustments: [ptd_only_set, gi]}}
fdr: {{by: [layer, exposure, adjustment]}}
min_cases: 5
"""


@pytest.fixture(scope="module")
def blocks_run(small_study: SimulatedStudy, dask_cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("blocks")
    plan = write_plan(folder, BLOCKS_PLAN.format(folder=small_study.out_dir))
    out = folder / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(
            [
                "run",
                str(plan),
                "--out",
                str(out),
                "--no-report",
                "--scheduler",
                dask_cluster.scheduler_address,
                "--top",
                "4",
                "--allow-outside-paths",
            ]
        )
    assert code == 0
    return out, printed.getvalue()


def test_run_with_blocks_summaries_cover_exactly_what_ran(blocks_run: tuple[Path, str]) -> None:
    out, console = blocks_run
    results = pd.read_parquet(out / "results.parquet")
    ran = {tuple(r) for r in results[["layer", "exposure", "adjustment"]].drop_duplicates().values.tolist()}
    assert ran == {(layer, e, a) for layer in ("species", "gbm") for e, sets in BLOCKS.items() for a in sets}

    survival = pd.read_csv(out / "adjustment_survival.tsv", sep="\t")
    assert survival[["layer", "exposure", "base", "adjustment"]].values.tolist() == [
        ["species", "MDD", "base", "ptd"],
        ["species", "any_ptd", "ptd_only_set", "gi"],
        ["gbm", "MDD", "base", "ptd"],
        ["gbm", "any_ptd", "ptd_only_set", "gi"],
    ]
    for row in survival.itertuples():
        rows = results[(results["layer"] == row.layer) & (results["exposure"] == row.exposure)]
        base = set(rows.loc[(rows["adjustment"] == row.base) & (rows["q"] < ALPHA), "feature"])
        later = set(rows.loc[(rows["adjustment"] == row.adjustment) & (rows["q"] < ALPHA), "feature"])
        assert (row.significant_base, row.still_significant) == (len(base), len(base & later))
    assert survival["significant_base"].sum() > 0

    summary = pd.read_csv(out / "adjustment_summary.tsv", sep="\t")
    assert len(summary) == len(results) // 2  # one row per layer x feature x exposure x model
    for exposure, sets in BLOCKS.items():
        rows = summary[summary["exposure"] == exposure]
        assert set(rows["base"]) == {sets[0]}
        for adjustment in ORDER:
            missing = rows[[f"beta_{adjustment}", f"q_{adjustment}", f"significant_{adjustment}"]].isna().all(axis=1)
            assert missing.all() if adjustment not in sets else not missing.any(), (exposure, adjustment)
        base = results[(results["exposure"] == exposure) & (results["adjustment"] == sets[0])]
        assert rows[f"significant_{sets[0]}"].astype(bool).sum() == (base["q"] < ALPHA).sum()

    # The console reads every exposure under its own base set.
    significant = results[results["q"] < ALPHA]
    assert len(significant) > 0 and "no association reached" not in console
    assert "base + ptd:" in console and "ptd_only_set + gi:" in console
    shown = [line for line in console.splitlines() if line.startswith("  ") and " in " in line and "beta" in line]
    expected = pd.concat(
        [results[(results["exposure"] == e) & (results["adjustment"] == sets[0]) & (results["q"] < ALPHA)] for e, sets in BLOCKS.items()]
    )
    assert len(shown) == sum(min(4, n) for n in expected.groupby("layer").size())
    if (expected["exposure"] == "any_ptd").any():
        assert any("in any_ptd" in line for line in shown)


def test_all_results_by_q_within_family_and_results_parquet_in_plan_order(blocks_run: tuple[Path, str]) -> None:
    out, _ = blocks_run
    results = pd.read_parquet(out / "results.parquet")
    table = pd.read_csv(out / "all_results.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
    assert len(table) == len(results)
    # results.parquet: plan order (layer, exposure, adjustment, feature as in the store).
    keys = list(dict.fromkeys(map(tuple, results[["layer", "exposure", "adjustment"]].values.tolist())))
    assert keys == [(layer, e, a) for layer in ("species", "gbm") for e, sets in BLOCKS.items() for a in sets]
    # all_results.tsv: the families in plan order, each by q then p.
    families = list(dict.fromkeys(map(tuple, table[["layer", "exposure", "adjustment"]].values.tolist())))
    assert families == keys
    for _, family in table.groupby(["layer", "exposure", "adjustment"], sort=False):
        estimated = family["q"].notna().to_numpy()
        assert family["q"][estimated].is_monotonic_increasing
        assert not (estimated[1:] & ~estimated[:-1]).any(), "rows without an estimate come last"
        assert (family.sort_values(["q", "p"], kind="stable")["feature"].to_numpy() == family["feature"].to_numpy()).all()
    merged = table.merge(results, on=["layer", "feature", "exposure", "adjustment", "model"], suffixes=("", "_parquet"))
    np.testing.assert_array_equal(merged["beta"], merged["beta_parquet"])


def test_features_tsv_equals_features_parquet(blocks_run: tuple[Path, str]) -> None:
    out, _ = blocks_run
    parquet = pd.read_parquet(out / "features.parquet")
    table = pd.read_csv(out / "features.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
    assert list(table.columns) == list(parquet.columns) == ["layer", "feature", "n_observed", "n_present", "prevalence", "kept"]
    assert len(table) == len(parquet) and table["kept"].dtype == bool
    for column in table.columns:
        np.testing.assert_array_equal(table[column].to_numpy(), parquet[column].to_numpy(), err_msg=column)


def test_top_is_documented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--top N" in help_text and "smallest q per layer (and model)" in help_text and "base adjustment set" in help_text
