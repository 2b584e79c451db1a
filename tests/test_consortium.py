"""Several cohorts: summary statistics under disclosure control, meta-analysis, exact pooled model.

The pooled model is checked against one statsmodels OLS on the stacked
individual data with cohort indicators (re-derived from the raw files by
tests/reference_model.py), to a relative 1e-8; the meta-analysis against the
inverse-variance formula on the cohorts' exported rows (the kernel itself is
checked against metafor in test_meta_kernel.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from reference_model import transformed_layer

from scalable_assoc.cli import main
from scalable_assoc.engine.run import run_study
from scalable_assoc.engine.sufficient import sufficient_statistics
from scalable_assoc.errors import DataError
from scalable_assoc.results.consortium import meta_analyse, pool_cohorts
from scalable_assoc.results.harmonise import canonical_name, harmonised_names
from scalable_assoc.results.sumstats import DisclosureRules, open_cohort_file, read_run, sidecar_path, write_sumstats
from scalable_assoc.simulate import simulate_study

RELATIVE = 1e-8

PLAN = """\
name: consortium-test
data:
  metadata: metadata.tsv
  layers:
    species: species.tsv
preprocess: {min_prevalence: 0.05, transform: clr, pseudocount: half_min}
exposures:
  MDD:  {cases: "MDD == 1", controls: "no_disorder == 1"}
  ssri: {cases: "ssri == 1", controls: "ssri == 0"}
covariates:
  categorical: [sex, stool]
adjustments:
  base:  [age, sex, bmi]
  stool: [age, sex, stool]
min_cases: 5
fdr: {method: bh, by: [layer, exposure, adjustment], alpha: 0.05}
"""

SIZES = {"north": 700, "south": 500, "east": 400}


def _stool_type(metadata: pd.DataFrame, drop_hard: bool) -> pd.Series:
    """A categorical covariate whose reference level ('hard') is absent from one cohort."""
    stool = pd.cut(metadata["bristol_stool"], [0, 2, 5, 7], labels=["hard", "normal", "loose"]).astype(object)
    if drop_hard:
        stool = stool.replace("hard", "normal")
    return stool


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory, client) -> dict[str, Path]:
    """Three small cohorts, each run and exported with cross-products."""
    root = tmp_path_factory.mktemp("consortium")
    files = {}
    for seed, (name, size) in enumerate(SIZES.items(), start=31):
        folder = root / name
        simulate_study(folder, participants=size, seed=seed, n_species=60, n_pathways=5)
        metadata = pd.read_csv(folder / "metadata.tsv", sep="\t")
        metadata["stool"] = _stool_type(metadata, drop_hard=name == "south")
        metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
        (folder / "plan.yaml").write_text(PLAN)
        run_dir = folder / "results"
        run_study(folder / "plan.yaml", run_dir, client=client, log=lambda _m: None)
        out = root / f"{name}.parquet"
        write_sumstats(read_run(run_dir), name, out, DisclosureRules(), sufficient_statistics(run_dir, client=client, log=lambda _m: None))
        files[name] = out
    return files


def _stacked(cohort_dirs: list[Path]) -> pd.DataFrame:
    frames = []
    for folder in cohort_dirs:
        metadata = pd.read_csv(folder / "metadata.tsv", sep="\t", index_col="sample_id")
        species = transformed_layer(folder / "species.tsv", 0.05)
        frame = metadata.join(species, how="inner")
        frame["cohort"] = folder.name
        frames.append(frame)
    return pd.concat(frames)


def _pooled_reference(data: pd.DataFrame, feature: str, exposure: str, covariates: list[str]) -> dict[str, float]:
    cases, controls = {"MDD": ("MDD", "no_disorder"), "ssri": ("ssri", None)}[exposure]
    frame = data.copy()
    if controls is None:
        frame["x"] = frame[cases]
    else:
        frame["x"] = np.where(frame[cases] == 1, 1.0, np.where(frame[controls] == 1, 0.0, np.nan))
    frame = frame.rename(columns={feature: "y_feature"})
    terms = [f"C({c})" if c in ("sex", "stool") else c for c in covariates]
    fit = smf.ols("y_feature ~ x + C(cohort) + " + " + ".join(terms), data=frame[["y_feature", "x", "cohort", *covariates]], missing="drop").fit()
    return {"beta": fit.params["x"], "se": fit.bse["x"], "p": fit.pvalues["x"], "n": int(fit.nobs)}


def test_pooled_equals_stacked_individual_ols(cohorts: dict[str, Path], tmp_path: Path) -> None:
    opened = [open_cohort_file(path, need_sufficient=True) for path in cohorts.values()]
    pooled = pool_cohorts(opened, tmp_path / "pooled", log=lambda _m: None).results
    assert (tmp_path / "pooled" / "pooled_results.parquet").is_file()
    data = _stacked([path.with_suffix("") for path in cohorts.values()])
    ok = pooled[(pooled["status"] == "ok") & (pooled["k"] == 3)]
    features = ok["feature"].drop_duplicates().iloc[:: max(1, ok["feature"].nunique() // 6)].tolist()
    checked = 0
    for (exposure, adjustment), covariates in {("MDD", "base"): ["age", "sex", "bmi"], ("MDD", "stool"): ["age", "sex", "stool"], ("ssri", "stool"): ["age", "sex", "stool"]}.items():
        for feature in features:
            row = ok[(ok["feature"] == feature) & (ok["exposure"] == exposure) & (ok["adjustment"] == adjustment)]
            assert len(row) == 1, (feature, exposure, adjustment)
            expected = _pooled_reference(data, feature, exposure, covariates)
            for column in ("beta", "se", "p"):
                assert row[column].iloc[0] == pytest.approx(expected[column], rel=RELATIVE), (feature, exposure, adjustment, column)
            assert int(row["n"].iloc[0]) == expected["n"]
            checked += 1
    assert checked >= 12
    # the consortium reference level of 'stool' is 'hard', absent from cohort 'south'
    assert set(pooled.loc[pooled["adjustment"] == "stool", "covariate_terms"]) == {"age+sex[male]+stool[loose]+stool[normal]"}


def test_meta_combines_the_exported_rows(cohorts: dict[str, Path], tmp_path: Path) -> None:
    opened = [open_cohort_file(path) for path in cohorts.values()]
    summary = meta_analyse(opened, tmp_path / "meta", method="fe", leave_one_out_estimates=True, log=lambda _m: None)
    results = summary.results
    for column in ("layer", "feature", "exposure", "adjustment", "k", "beta", "se", "p", "q", "tau2", "i2", "q_stat", "q_p", "direction"):
        assert column in results.columns
    frames = {name: pd.read_parquet(path).set_index(["layer", "feature", "exposure", "adjustment", "model"]) for name, path in cohorts.items()}
    row = results[results["k"] == 3].iloc[5]
    key = tuple(row[c] for c in ("layer", "feature", "exposure", "adjustment", "model"))
    betas = np.array([frames[name].loc[key, "beta"] for name in SIZES])
    weights = 1 / np.array([frames[name].loc[key, "se"] for name in SIZES]) ** 2
    assert row["beta"] == pytest.approx((weights * betas).sum() / weights.sum(), rel=1e-12)
    assert row["se"] == pytest.approx(weights.sum() ** -0.5, rel=1e-12)
    assert row["direction"] == "".join("+" if b > 0 else "-" for b in betas)
    assert row["tau2"] == 0
    loo = pd.read_parquet(tmp_path / "meta" / "meta_leave_one_out.parquet")
    assert set(loo["left_out"]) == set(SIZES)
    for out in ("meta_results.tsv", "feature_coverage.tsv", "meta_manifest.json"):
        assert (tmp_path / "meta" / out).is_file()


def test_sumstats_holds_only_aggregates_and_sidecar_counts_withheld(cohorts: dict[str, Path], tmp_path: Path) -> None:
    exported = pd.read_parquet(cohorts["east"])
    assert list(exported.columns) == ["layer", "feature", "exposure", "adjustment", "model", "beta", "se", "p", "n", "n_cases", "n_controls", "prevalence"]
    assert (exported["n_cases"] >= 3).all() and (exported["n_controls"] >= 3).all()
    sidecar = json.loads(sidecar_path(cohorts["east"]).read_text())
    assert sidecar["cohort"] == "east" and sidecar["analysis"]["layers"]["species"]["transform"] == "clr"
    # Stricter rules withhold rows, and the sidecar says how many and why.
    run = read_run(cohorts["east"].with_suffix("") / "results")
    strict = write_sumstats(run, "east", tmp_path / "strict.parquet", DisclosureRules(min_cell_count=30))
    report = strict["withheld"]["summary"]
    assert report["rows_withheld"] > 0
    assert sum(report["withheld_by_reason"].values()) == report["rows_withheld"]
    assert report["rows_exported"] + report["rows_withheld"] + report["rows_without_estimate"] == report["rows_in_run"]
    assert (pd.read_parquet(tmp_path / "strict.parquet")["n_cases"] >= 30).all()
    too_many = write_sumstats(run, "east", tmp_path / "params.parquet", DisclosureRules(max_parameter_fraction=0.005))
    assert any("parameters" in reason for reason in too_many["withheld"]["summary"]["withheld_by_reason"])


def test_damaged_or_mismatched_files_are_refused(cohorts: dict[str, Path], tmp_path: Path) -> None:
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(cohorts["north"].read_bytes())
    sidecar_path(damaged).write_text(sidecar_path(cohorts["north"]).read_text())
    assert open_cohort_file(damaged).cohort == "north"
    table = pd.read_parquet(damaged)
    table.loc[0, "beta"] += 1.0
    table.to_parquet(damaged, index=False)
    with pytest.raises(DataError, match="checksum does not match"):
        open_cohort_file(damaged)

    # A cohort that used another transform: refused unless allowed.
    other = tmp_path / "other.parquet"
    other.write_bytes(cohorts["south"].read_bytes())
    sidecar = json.loads(sidecar_path(cohorts["south"]).read_text())
    sidecar["analysis"]["layers"]["species"]["transform"] = "log"
    sidecar["analysis_hash"] = "different"
    sidecar["cohort"] = "other"
    sidecar_path(other).write_text(json.dumps(sidecar))
    files = [open_cohort_file(cohorts["north"]), open_cohort_file(other)]
    with pytest.raises(DataError, match=r"layers\.species\.transform"):
        meta_analyse(files, tmp_path / "refused", log=lambda _m: None)
    assert not (tmp_path / "refused" / "meta_results.parquet").exists()
    allowed = meta_analyse(files, tmp_path / "allowed", allow_mismatch=True, log=lambda _m: None)
    assert any("transform" in w for w in allowed.manifest["warnings"])

    # Exit status and message from the command line; no output that looks complete.
    assert main(["meta", str(damaged), str(cohorts["south"]), "--out", str(tmp_path / "cli")]) == 2
    assert not (tmp_path / "cli" / "meta_results.parquet").exists()


def test_cohort_without_overlap_is_reported(cohorts: dict[str, Path], tmp_path: Path) -> None:
    lonely = tmp_path / "lonely.parquet"
    table = pd.read_parquet(cohorts["east"])
    table["feature"] = "x__" + table["feature"]
    table.to_parquet(lonely, index=False)
    sidecar = json.loads(sidecar_path(cohorts["east"]).read_text())
    sidecar["cohort"] = "lonely"
    from scalable_assoc.io.atomic import file_checksum

    sidecar["files"]["summary"]["sha256"] = file_checksum(lonely)
    sidecar_path(lonely).write_text(json.dumps(sidecar))
    messages: list[str] = []
    summary = meta_analyse([open_cohort_file(cohorts["north"]), open_cohort_file(cohorts["south"]), open_cohort_file(lonely)], tmp_path / "m", log=messages.append)
    assert any("lonely shares no feature" in m for m in messages)
    assert any("lonely shares no feature" in w for w in summary.manifest["warnings"])
    coverage = pd.read_csv(tmp_path / "m" / "feature_coverage.tsv", sep="\t")
    assert (coverage.loc[coverage["feature"].str.startswith("x__"), "present_in"] == "lonely").all()


def test_feature_names_match_across_metaphlan_spellings() -> None:
    lineage = "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Bacteroidaceae|g__Phocaeicola|s__Phocaeicola_vulgatus"
    assert canonical_name(lineage) == "s__Phocaeicola_vulgatus"
    assert canonical_name("PWY-5100: pyruvate fermentation") == "PWY-5100: pyruvate fermentation"
    names = pd.Series([lineage, "s__Bacteroides_vulgatus", "s__Other"])
    mapped = harmonised_names(names, {"s__Bacteroides_vulgatus": "s__Phocaeicola_vulgatus"})
    assert mapped.tolist() == ["s__Phocaeicola_vulgatus", "s__Phocaeicola_vulgatus", "s__Other"]


def test_meta_on_a_cluster_equals_in_process(cohorts: dict[str, Path], tmp_path: Path, dask_cluster) -> None:
    from scalable_assoc.engine.mapper import ClusterMapper

    opened = [open_cohort_file(path) for path in cohorts.values()]
    local = meta_analyse(opened, tmp_path / "local", method="reml", hksj=True, log=lambda _m: None).results
    with ClusterMapper(dask_cluster.scheduler_address) as mapper:
        spread = meta_analyse(opened, tmp_path / "spread", method="reml", hksj=True, mapper=mapper, block_rows=97, log=lambda _m: None).results
    pd.testing.assert_frame_equal(local, spread)


def test_several_biobanks_end_to_end_from_the_command_line(tmp_path: Path, dask_cluster) -> None:
    """simulate --cohorts -> run per cohort -> sumstats --sufficient -> meta / pool, as the README shows."""
    out = tmp_path / "bb"
    address = dask_cluster.scheduler_address
    assert main(["simulate", "--out", str(out), "--cohorts", "3", "--participants", "900", "--species", "60", "--pathways", "10"]) == 0
    files = []
    for k in (1, 2, 3):
        folder = out / f"cohort_{k}"
        assert main(["run", str(folder / "plan.yaml"), "--out", str(folder / "results"), "--scheduler", address]) == 0
        files.append(out / f"cohort_{k}.parquet")
        assert main(["sumstats", str(folder / "results"), "--cohort", f"cohort_{k}", "--out", str(files[-1]), "--sufficient", "--scheduler", address]) == 0
    mapping = out / "feature_mapping.tsv"
    with_sufficient = [str(p) for p in sorted(out.glob("cohort_*.parquet"))]  # a shell glob also matches the cross-product files
    assert main(["meta", *with_sufficient, "--out", str(out / "meta"), "--feature-map", str(mapping), "--hksj"]) == 0
    assert main(["pool", *with_sufficient, "--out", str(out / "pooled"), "--feature-map", str(mapping)]) == 0
    meta = pd.read_parquet(out / "meta" / "meta_results.parquet")
    pooled = pd.read_parquet(out / "pooled" / "pooled_results.parquet")
    # a genus renamed in cohort_3 is matched through the mapping file
    renamed = pd.read_csv(mapping, sep="\t")
    matched = meta[meta["feature"].isin(renamed["to"])]
    assert len(matched) and (matched["k"] == 3).any()
    assert set(pooled["k"]) <= {2, 3} and (pooled["status"] == "ok").mean() > 0.9
    # without the mapping, the renamed species are reported as present in some cohorts only
    assert main(["meta", *with_sufficient, "--out", str(out / "unmapped")]) == 0
    coverage = pd.read_csv(out / "unmapped" / "feature_coverage.tsv", sep="\t")
    spelled_old = coverage[coverage["feature"].isin(renamed["from"])]
    assert len(spelled_old) and (spelled_old["present_in"] == "cohort_3").all()


def test_command_line_errors_name_the_problem(cohorts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sumstats", str(tmp_path), "--cohort", "x", "--out", str(tmp_path / "x.parquet")]) == 2
    assert "no manifest.json" in capsys.readouterr().err
    run_dir = cohorts["east"].with_suffix("") / "results"
    assert main(["sumstats", str(run_dir), "--cohort", "east", "--out", str(tmp_path / "east.tsv")]) == 2
    assert "must end in .parquet" in capsys.readouterr().err
    assert main(["sumstats", str(run_dir), "--cohort", "east", "--out", str(tmp_path / "plain.parquet")]) == 0
    capsys.readouterr()
    assert main(["pool", str(tmp_path / "plain.parquet"), str(cohorts["north"]), "--out", str(tmp_path / "pool")]) == 2
    assert "exported without --sufficient" in capsys.readouterr().err
    assert not (tmp_path / "pool" / "pooled_results.parquet").exists()
    bad_map = tmp_path / "map.tsv"
    bad_map.write_text("old\tnew\na\tb\n")
    assert main(["meta", str(cohorts["north"]), str(cohorts["south"]), "--out", str(tmp_path / "m"), "--feature-map", str(bad_map)]) == 2
    assert "needs columns 'from' and 'to'" in capsys.readouterr().err
