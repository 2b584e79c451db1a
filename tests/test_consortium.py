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
from scalable_assoc.testing import logged_messages, write_plan

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
fdr: {method: bh, by: [layer, exposure, adjustment], alpha: 0.25}
"""

SIZES = {"north": 700, "south": 500, "east": 400}
#: species of the reference cohort's kept set that cohort 'east' lacks (rows removed from its table)
DROPPED_FROM_EAST = 3


def _stool_type(metadata: pd.DataFrame, drop_hard: bool) -> pd.Series:
    """A categorical covariate whose reference level ('hard') is absent from one cohort."""
    stool = pd.cut(metadata["bristol_stool"], [0, 2, 5, 7], labels=["hard", "normal", "loose"]).astype(object)
    if drop_hard:
        stool = stool.replace("hard", "normal")
    return stool


def _drop_species(path: Path, species: list[str]) -> None:
    """Remove the rows of ``species`` from a MetaPhlAn merged table (as a profiler omits clades absent from every sample)."""
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(line for line in lines if line.split("\t", 1)[0].rsplit("|", 1)[-1] not in species))


@pytest.fixture(scope="module")
def cohort_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three small simulated cohorts; 'south' lacks a stool level, 'east' lacks some species."""
    root = tmp_path_factory.mktemp("consortium")
    folders = {}
    for seed, (name, size) in enumerate(SIZES.items(), start=31):
        folder = root / name
        simulate_study(folder, participants=size, seed=seed, n_species=60, n_pathways=5)
        metadata = pd.read_csv(folder / "metadata.tsv", sep="\t")
        metadata["stool"] = _stool_type(metadata, drop_hard=name == "south")
        metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
        write_plan(folder, PLAN)
        folders[name] = folder
    return folders


def _run_and_export(folder: Path, run_dir: Path, out: Path, client, features: Path | None = None) -> Path:
    run_study(folder / "plan.yaml", run_dir, client=client, features=features)
    write_sumstats(read_run(run_dir), folder.name, out, DisclosureRules(), sufficient_statistics(run_dir, client=client))
    return out


@pytest.fixture(scope="module")
def unlisted(cohort_dirs: dict[str, Path], client) -> dict[str, Path]:
    """Each cohort run with its own prevalence filter (no shared list): different CLR feature sets."""
    north = cohort_dirs["north"]
    run_study(north / "plan.yaml", north / "results_unlisted", client=client)
    # 'east' lacks a few species north keeps (their rows are not in its table at all)
    kept = pd.read_parquet(north / "results_unlisted" / "features.parquet")
    kept = kept.loc[kept["kept"], "feature"].tolist()
    _drop_species(cohort_dirs["east"] / "species.tsv", kept[10 : 10 + DROPPED_FROM_EAST])
    files = {}
    for name, folder in cohort_dirs.items():
        (folder.parent / "unlisted").mkdir(exist_ok=True)
        files[name] = _run_and_export(folder, folder / "results_unlisted", folder.parent / "unlisted" / f"{name}.parquet", client)
    return files


@pytest.fixture(scope="module")
def shared_list(cohort_dirs: dict[str, Path], unlisted: dict[str, Path]) -> Path:
    """The recommended practice: the reference cohort's features.parquet, passed as it is to every cohort."""
    return cohort_dirs["north"] / "results_unlisted" / "features.parquet"


@pytest.fixture(scope="module")
def cohorts(cohort_dirs: dict[str, Path], shared_list: Path, client) -> dict[str, Path]:
    """Three small cohorts, each run with the shared feature list and exported with cross-products."""
    return {
        name: _run_and_export(folder, folder / "results", folder.parent / f"{name}.parquet", client, features=shared_list)
        for name, folder in cohort_dirs.items()
    }


def _listed_species(shared_list: Path) -> list[str]:
    table = pd.read_parquet(shared_list)
    return table.loc[table["kept"] & (table["layer"] == "species"), "feature"].tolist()


def _stacked(cohort_dirs: list[Path], features: list[str]) -> pd.DataFrame:
    frames = []
    for folder in cohort_dirs:
        metadata = pd.read_csv(folder / "metadata.tsv", sep="\t", index_col="sample_id")
        species = transformed_layer(folder / "species.tsv", 0.05, features=features)
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
    fit = smf.ols(
        "y_feature ~ x + C(cohort) + " + " + ".join(terms), data=frame[["y_feature", "x", "cohort", *covariates]], missing="drop"
    ).fit()
    return {"beta": fit.params["x"], "se": fit.bse["x"], "p": fit.pvalues["x"], "n": int(fit.nobs)}


def test_pooled_equals_stacked_individual_ols(cohorts: dict[str, Path], shared_list: Path, tmp_path: Path) -> None:
    opened = [open_cohort_file(path, need_sufficient=True) for path in cohorts.values()]
    pooled = pool_cohorts(opened, tmp_path / "pooled").results
    assert (tmp_path / "pooled" / "pooled_results.parquet").is_file()
    data = _stacked([path.with_suffix("") for path in cohorts.values()], _listed_species(shared_list))
    ok = pooled[(pooled["status"] == "ok") & (pooled["k"] == 3)]
    analyses = {
        ("MDD", "base"): ["age", "sex", "bmi"],
        ("MDD", "stool"): ["age", "sex", "stool"],
        ("ssri", "stool"): ["age", "sex", "stool"],
    }
    # features every cohort exported for each of these analyses (the carrier rule withholds some rows of small cohorts)
    exported = ok[[pair in analyses for pair in zip(ok["exposure"], ok["adjustment"], strict=True)]].groupby("feature", sort=False).size()
    complete = exported.index[exported == len(analyses)]
    features = complete[:: max(1, len(complete) // 6)].tolist()
    checked = 0
    for (exposure, adjustment), covariates in analyses.items():
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
    summary = meta_analyse(opened, tmp_path / "meta", method="fe", leave_one_out_estimates=True)
    results = summary.results
    for column in ("layer", "feature", "exposure", "adjustment", "k", "beta", "se", "p", "q", "tau2", "i2", "q_stat", "q_p", "direction"):
        assert column in results.columns
    frames = {
        name: pd.read_parquet(path).set_index(["layer", "feature", "exposure", "adjustment", "model"]) for name, path in cohorts.items()
    }
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
    assert list(exported.columns) == [
        "layer",
        "feature",
        "exposure",
        "adjustment",
        "model",
        "beta",
        "se",
        "p",
        "n",
        "n_cases",
        "n_controls",
        "prevalence",
    ]
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
        meta_analyse(files, tmp_path / "refused")
    assert not (tmp_path / "refused" / "meta_results.parquet").exists()
    allowed = meta_analyse(files, tmp_path / "allowed", allow_mismatch=True)
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
    with logged_messages() as messages:
        summary = meta_analyse(
            [open_cohort_file(cohorts["north"]), open_cohort_file(cohorts["south"]), open_cohort_file(lonely)], tmp_path / "m"
        )
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


def test_meta_on_a_cluster_equals_in_process_and_reports_each_block(
    cohorts: dict[str, Path], tmp_path: Path, dask_cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scalable_assoc.engine.mapper import ClusterMapper
    from scalable_assoc.progress import ProgressReporter

    updates: dict[str, list[int]] = {}
    original = ProgressReporter.update

    def spy(self: ProgressReporter, done: int) -> None:  # every update, before the console's once-a-second limit
        updates.setdefault(self.phase, []).append(int(done))
        original(self, done)

    monkeypatch.setattr(ProgressReporter, "update", spy)
    opened = [open_cohort_file(path) for path in cohorts.values()]
    local = meta_analyse(opened, tmp_path / "local", method="reml", hksj=True, block_rows=40).results
    in_process, updates = updates.pop("meta"), {}
    whole = meta_analyse(opened, tmp_path / "whole", method="reml", hksj=True).results
    updates.clear()
    with ClusterMapper(dask_cluster.scheduler_address) as mapper:
        spread = meta_analyse(opened, tmp_path / "spread", method="reml", hksj=True, mapper=mapper, block_rows=40).results
    pd.testing.assert_frame_equal(local, spread)
    pd.testing.assert_frame_equal(local, whole)  # blocks do not change a row's result
    rows = len(local)
    assert rows > 3 * 40
    for seen in (in_process, updates["meta"]):  # progress as each block of 40 rows finishes, up to every row
        assert len(seen) >= -(-rows // 40) and seen == sorted(seen) and seen[-1] == rows, seen


def test_several_biobanks_end_to_end_from_the_command_line(tmp_path: Path, dask_cluster) -> None:
    """simulate --cohorts -> run per cohort -> sumstats --sufficient -> meta / pool, as the README shows."""
    out = tmp_path / "bb"
    address = dask_cluster.scheduler_address
    assert main(["simulate", "--out", str(out), "--cohorts", "3", "--participants", "900", "--species", "60", "--pathways", "10"]) == 0
    files = []
    for k in (1, 2, 3):
        folder = out / f"cohort_{k}"
        assert main(["run", str(folder / "plan.yaml"), "--out", str(folder / "results"), "--no-report", "--scheduler", address]) == 0
        files.append(out / f"cohort_{k}.parquet")
        assert (
            main(
                [
                    "sumstats",
                    str(folder / "results"),
                    "--cohort",
                    f"cohort_{k}",
                    "--out",
                    str(files[-1]),
                    "--sufficient",
                    "--scheduler",
                    address,
                ]
            )
            == 0
        )
    mapping = out / "feature_mapping.tsv"
    with_sufficient = [str(p) for p in sorted(out.glob("cohort_*.parquet"))]  # a shell glob also matches the cross-product files
    assert main(["meta", *with_sufficient, "--out", str(out / "meta"), "--feature-map", str(mapping), "--hksj"]) == 0
    assert main(["pool", *with_sufficient, "--out", str(out / "pooled"), "--feature-map", str(mapping)]) == 0
    meta = pd.read_parquet(out / "meta" / "meta_results.parquet")
    pooled = pd.read_parquet(out / "pooled" / "pooled_results.parquet")
    # every cohort's plan names the same features.tsv: one transform feature set per layer, no refusal
    sidecars = [json.loads(sidecar_path(out / f"cohort_{k}.parquet").read_text()) for k in (1, 2, 3)]
    for layer in ("species", "pathways", "gbm"):
        assert len({s["layers"][layer]["transform_features"]["sha256"] for s in sidecars}) == 1
        assert all(s["layers"][layer]["transform_features"]["from"] == "feature list" for s in sidecars)
    meta_manifest = json.loads((out / "meta" / "meta_manifest.json").read_text())
    assert not any("feature sets" in w for w in meta_manifest["warnings"])
    assert meta_manifest["hksj_rows_below_3_cohorts"] == int((meta["k"] == 2).sum())
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


# ------------------------------------------------------------------ one CLR scale across cohorts
def _transformed_by_run(folder: Path, run_dir: Path, features: Path | None, client) -> tuple[pd.DataFrame, object]:
    """The run's transformed species values (samples x kept features), from its own cached filter and sums."""
    from scalable_assoc.engine.filters import filter_layers
    from scalable_assoc.engine.graph import hold_on_cluster
    from scalable_assoc.engine.prepare import prepare_study
    from scalable_assoc.engine.run import WORK_DIR
    from scalable_assoc.engine.tasks import model_block
    from scalable_assoc.plan.schema import load_plan

    work = run_dir / WORK_DIR
    study = prepare_study(load_plan(folder / "plan.yaml"), work / "stores", features=features)
    positions = {layer.spec.name: hold_on_cluster(client, layer.sample_positions, "samples") for layer in study.layers}
    with logged_messages() as messages:
        filters = filter_layers(client, study, positions, work / "filters")
    assert any("reused" in m for m in messages), "the run's filter file is found again under the same name"
    layer = study.layers[0]
    f = filters["species"]
    blocks = [
        model_block(
            layer.store.path, start, stop, layer.sample_positions, kept, "transformed", "clr", f.pseudocount, f.sample_totals, 0.0
        ).values
        for (start, stop), kept in zip(layer.store.block_bounds(), f.kept, strict=True)
        if kept.any()
    ]
    samples = [layer.store.sample_ids[i] for i in layer.sample_positions]
    return pd.DataFrame(np.hstack(blocks), index=samples, columns=[i for ids in f.kept_ids for i in ids]), f


def test_without_a_shared_list_meta_and_pool_refuse_naming_the_layer(
    unlisted: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sidecars = {name: json.loads(sidecar_path(path).read_text()) for name, path in unlisted.items()}
    digests = {name: s["layers"]["species"]["transform_features"]["sha256"] for name, s in sidecars.items()}
    assert len(set(digests.values())) == 3  # each cohort's own prevalence filter kept its own set
    assert len({s["analysis_hash"] for s in sidecars.values()}) == 1  # ... although the analysis is "the same"
    files = [str(path) for path in unlisted.values()]
    assert main(["meta", *files, "--out", str(tmp_path / "meta")]) == 2
    message = capsys.readouterr().err
    assert "layer 'species'" in message and "different feature sets" in message and "--features" in message
    assert all(name in message for name in SIZES)
    assert not (tmp_path / "meta" / "meta_results.parquet").exists()
    assert main(["pool", *files, "--out", str(tmp_path / "pool")]) == 2
    assert "layer 'species'" in capsys.readouterr().err
    # --allow-mismatch combines them, with the difference kept as a warning
    assert main(["meta", *files, "--out", str(tmp_path / "allowed"), "--allow-mismatch"]) == 0
    manifest = json.loads((tmp_path / "allowed" / "meta_manifest.json").read_text())
    assert any("layer 'species'" in w and "different feature sets" in w for w in manifest["warnings"])
    assert (tmp_path / "allowed" / "meta_results.parquet").is_file()


def test_shared_list_gives_every_cohort_one_clr_denominator(
    cohorts: dict[str, Path], cohort_dirs: dict[str, Path], shared_list: Path, client
) -> None:
    listed = _listed_species(shared_list)
    manifests = {name: json.loads((folder / "results" / "manifest.json").read_text()) for name, folder in cohort_dirs.items()}
    layers = {name: m["layers"]["species"] for name, m in manifests.items()}
    assert len({layer["transform_features_sha256"] for layer in layers.values()}) == 1
    for name, layer in layers.items():
        assert layer["feature_list_used"] and layer["feature_list"]["listed"] == len(listed)
        assert layer["feature_list"]["absent"] == (DROPPED_FROM_EAST if name == "east" else 0)
        assert layer["features_kept"] == len(listed) - layer["feature_list"]["absent"]
        assert manifests[name]["features"]["path"] == str(shared_list.resolve())
    sidecars = [json.loads(sidecar_path(path).read_text()) for path in cohorts.values()]
    assert len({s["layers"]["species"]["transform_features"]["sha256"] for s in sidecars}) == 1
    for name in ("east", "north"):
        folder = cohort_dirs[name]
        values, layer_filter = _transformed_by_run(folder, folder / "results", shared_list, client)
        # every sample's mean runs over all listed features, those absent from the table included
        np.testing.assert_array_equal(layer_filter.sample_totals[1], len(listed))
        expected = transformed_layer(folder / "species.tsv", 0.05, features=listed)
        assert sorted(values.columns) == sorted(expected.columns)
        assert len(values.columns) == len(listed) - (DROPPED_FROM_EAST if name == "east" else 0)
        np.testing.assert_allclose(values.to_numpy(), expected.loc[values.index, values.columns].to_numpy(), rtol=1e-12, atol=1e-12)
    # the reference cohort's own list keeps what its filter kept: its results do not change
    north = cohort_dirs["north"]
    with_list = pd.read_parquet(north / "results" / "results.parquet")
    without = pd.read_parquet(north / "results_unlisted" / "results.parquet")
    pd.testing.assert_frame_equal(with_list, without)


def test_meta_and_pool_report_significance_at_the_plan_alpha(
    cohorts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(path) for path in cohorts.values()]
    assert main(["meta", *files, "--out", str(tmp_path / "meta")]) == 0
    printed = capsys.readouterr().out
    results = pd.read_parquet(tmp_path / "meta" / "meta_results.parquet")
    count = int((results["q"] < 0.25).sum())
    assert count > int((results["q"] < 0.05).sum())  # the plan's 0.25, not 0.05, is what is counted
    assert f"{count} with q < 0.25 (the plan's fdr.alpha)" in printed
    manifest = json.loads((tmp_path / "meta" / "meta_manifest.json").read_text())
    assert manifest["settings"]["alpha"] == 0.25 and manifest["significant"] == count
    assert main(["meta", *files, "--out", str(tmp_path / "meta01"), "--alpha", "0.1"]) == 0
    assert f"{int((results['q'] < 0.1).sum())} with q < 0.1 (--alpha)" in capsys.readouterr().out
    assert main(["pool", *files, "--out", str(tmp_path / "pool")]) == 0
    pooled = pd.read_parquet(tmp_path / "pool" / "pooled_results.parquet")
    assert f"{int((pooled['q'] < 0.25).sum())} with q < 0.25 (the plan's fdr.alpha)" in capsys.readouterr().out
    assert main(["meta", *files, "--out", str(tmp_path / "bad"), "--alpha", "1.5"]) == 2
    assert "--alpha" in capsys.readouterr().err


def test_hksj_with_fewer_than_three_cohorts_warns(cohorts: dict[str, Path], tmp_path: Path) -> None:
    two = [open_cohort_file(cohorts["north"]), open_cohort_file(cohorts["south"])]
    with logged_messages() as messages:
        summary = meta_analyse(two, tmp_path / "two", hksj=True)
    assert (summary.results["k"] == 2).all()
    assert summary.manifest["hksj_rows_below_3_cohorts"] == len(summary.results)
    assert any("--hksj" in m and "fewer than 3 cohorts" in m for m in messages)
    assert any("fewer than 3 cohorts" in w for w in summary.manifest["warnings"])
    # three cohorts: only the species 'east' lacks are combined from two
    three = meta_analyse([open_cohort_file(p) for p in cohorts.values()], tmp_path / "three", hksj=True)
    assert three.manifest["hksj_rows_below_3_cohorts"] == int((three.results["k"] == 2).sum()) > 0
    plain = meta_analyse(two, tmp_path / "plain")
    assert "hksj_rows_below_3_cohorts" not in plain.manifest and not any("hksj" in w for w in plain.manifest["warnings"])


def test_min_cases_per_cohort_leaves_the_shared_analysis_alone(
    cohorts: dict[str, Path],
    cohort_dirs: dict[str, Path],
    shared_list: Path,
    tmp_path: Path,
    dask_cluster,
    capsys: pytest.CaptureFixture[str],
) -> None:
    east = cohort_dirs["east"]
    strict = east / "plan_strict.yaml"  # the consortium's plan: more cases than this small cohort has
    strict.write_text(PLAN.replace("min_cases: 5", "min_cases: 40"))
    address = dask_cluster.scheduler_address
    run_dir = tmp_path / "east_run"
    common = ["run", str(strict), "--out", str(run_dir), "--no-report", "--features", str(shared_list), "--scheduler", address]
    assert main(common) == 2
    assert "--min-cases" in capsys.readouterr().err
    assert main([*common, "--min-cases", "5"]) == 0
    capsys.readouterr()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["min_cases"] == {"plan": 40, "used": 5}
    out = tmp_path / "east.parquet"
    assert main(["sumstats", str(run_dir), "--cohort", "east", "--out", str(out), "--sufficient", "--scheduler", address]) == 0
    sidecar = json.loads(sidecar_path(out).read_text())
    assert sidecar["analysis_hash"] == json.loads(sidecar_path(cohorts["north"]).read_text())["analysis_hash"]
    assert sidecar["min_cases"] == {"plan": 40, "used": 5}
    # the same rows as the cohort's run under a plan that says min_cases: 5
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(cohorts["east"]))
    assert main(["meta", str(cohorts["north"]), str(cohorts["south"]), str(out), "--out", str(tmp_path / "meta")]) == 0
    meta_manifest = json.loads((tmp_path / "meta" / "meta_manifest.json").read_text())
    assert not any("differs from" in w or "feature sets" in w for w in meta_manifest["warnings"])
    # sumstats --min-cases withholds the small groups from what leaves the cohort
    capsys.readouterr()
    assert main(["sumstats", str(run_dir), "--cohort", "east", "--out", str(tmp_path / "east20.parquet"), "--min-cases", "20"]) == 0
    withheld = json.loads(sidecar_path(tmp_path / "east20.parquet").read_text())["withheld"]["summary"]
    reasons = {k: v for k, v in withheld["withheld_by_reason"].items() if "--min-cases" in k}
    assert reasons and all(k.startswith("fewer than 20 c") for k in reasons)
    assert withheld["rows_withheld"] == sum(withheld["withheld_by_reason"].values())
    exported = pd.read_parquet(tmp_path / "east20.parquet")
    assert (exported["n_cases"] >= 20).all() and (exported["n_controls"] >= 20).all()
    assert len(exported) < len(pd.read_parquet(out))


def test_feature_list_files_are_checked(cohort_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = cohort_dirs["south"] / "plan.yaml"
    no_column = tmp_path / "names.tsv"
    no_column.write_text("name\ns__Faecalibacterium_prausnitzii\n")
    assert main(["run", str(plan), "--out", str(tmp_path / "a"), "--features", str(no_column)]) == 2
    message = capsys.readouterr().err
    assert str(no_column) in message and "column 'feature'" in message
    elsewhere = tmp_path / "other_layer.csv"
    elsewhere.write_text("feature,layer\ns__Nothing_here,species\nPWY-1,pathways\n")
    assert main(["run", str(plan), "--out", str(tmp_path / "b"), "--features", str(elsewhere)]) == 2
    message = capsys.readouterr().err
    assert str(elsewhere) in message and "layer 'species'" in message and "none of its" in message
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    assert main(["run", str(plan), "--out", str(tmp_path / "c"), "--features", str(broken)]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert main(["run", str(plan), "--out", str(tmp_path / "d"), "--features", str(tmp_path / "missing.tsv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_feature_list_matching_and_digest(tmp_path: Path) -> None:
    from scalable_assoc.io.feature_list import match_feature_list, read_feature_list
    from scalable_assoc.results.harmonise import feature_set_digest

    lineage = "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Bacteroidaceae|g__Phocaeicola|s__Phocaeicola_vulgatus"
    listing = tmp_path / "list.tsv"
    listing.write_text(f"feature\tkept\n{lineage}\tTrue\ns__Other\tfalse\ns__Absent\ttrue\nPWY-1\tTRUE\n")
    read = read_feature_list(listing)
    assert read.by_layer is None and read.for_layer("anything") == (lineage, "s__Absent", "PWY-1")
    matched = match_feature_list(read.path, "species", read.for_layer("species"), ("s__Other", "s__Phocaeicola_vulgatus", "PWY-1"))
    assert matched.mask.tolist() == [False, True, True] and matched.n_listed == 3 and matched.absent == ("s__Absent",)
    # the digest is the same whichever MetaPhlAn spelling the list uses
    assert matched.digest == feature_set_digest(["s__Phocaeicola_vulgatus", "s__Absent", "PWY-1"])
    layered = tmp_path / "layered.tsv"
    layered.write_text("layer\tfeature\nspecies\ts__A\npathways\tPWY-1\n")
    assert read_feature_list(layered).for_layer("species") == ("s__A",) and read_feature_list(layered).for_layer("gbm") is None


def test_a_feature_list_changes_the_cached_filter_and_chunks(
    cohort_dirs: dict[str, Path], shared_list: Path, tmp_path: Path, client
) -> None:
    south = cohort_dirs["south"]
    out = tmp_path / "south"
    plain = run_study(south / "plan.yaml", out, client=client)
    listed = run_study(south / "plan.yaml", out, client=client, features=shared_list)
    assert listed.chunks_reused == 0
    assert len(list((out / ".scalable_assoc" / "filters").glob("filter-*.npz"))) == 2
    assert plain.manifest["layers"]["species"]["features_kept"] != listed.manifest["layers"]["species"]["features_kept"]
    assert listed.manifest["layers"]["species"]["features_kept"] == len(_listed_species(shared_list))
    again = run_study(south / "plan.yaml", out, client=client, features=shared_list)
    assert again.chunks_reused == again.chunks_total


def test_features_option_overrides_the_plan_key(
    cohort_dirs: dict[str, Path], shared_list: Path, tmp_path: Path, dask_cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    south = cohort_dirs["south"]
    plan = south / "plan_with_list.yaml"
    plan.write_text(PLAN + "features: no_such_list.tsv\n")  # relative to the plan's folder
    assert main(["run", str(plan), "--out", str(tmp_path / "a")]) == 2
    assert str(south / "no_such_list.tsv") in capsys.readouterr().err
    assert (
        main(
            [
                "run",
                str(plan),
                "--out",
                str(tmp_path / "b"),
                "--no-report",
                "--features",
                str(shared_list),
                "--scheduler",
                dask_cluster.scheduler_address,
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["features"]["path"] == str(shared_list.resolve())
    assert (
        manifest["layers"]["species"]["feature_list"]["names_sha256"]
        == json.loads((south / "results" / "manifest.json").read_text())["layers"]["species"]["feature_list"]["names_sha256"]
    )
