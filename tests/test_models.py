"""Models beyond lm in a real run: lm_nonzero and cluster-robust lm against statsmodels.

lm_nonzero: participants with the feature only; CLR over the features a sample
has (no pseudocount). A plan's ``cluster:`` alone leaves lm / lm_nonzero
classical (plain statsmodels OLS); ``se: cluster`` makes them cluster-robust:
beta and se as statsmodels OLS(cov_type="cluster"), p from t with G - 1 degrees
of freedom, or statsmodels' normal p with ``reference: normal``.
Tolerance: relative 1e-8.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import statsmodels.formula.api as smf
from reference_model import read_layer

from scalable_assoc.engine.run import run_study
from scalable_assoc.models import factorise_covariates, fit_random_intercept
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import logged_messages, write_plan

PLAN = """
name: models
data:
  metadata: {metadata}
  layers:
    species: {species}
preprocess: {{min_prevalence: 0.1, transform: clr, pseudocount: half_min}}
exposures:
  AnyDep: {{cases: "AnyDep == 1", controls: "no_disorder == 1"}}
  any_ptd: {{cases: "any_ptd == 1", controls: "any_ptd == 0"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
models: [lm, lm_nonzero]
cluster: household
min_cases: 5
"""


#: The OLS models' options of the cluster-robust run: lm with t(G - 1) p-values (the default reference), lm_nonzero with normal ones.
ROBUST_OPTIONS = "lm: {se: cluster}\nlm_nonzero: {se: cluster, reference: normal}\n"


def _run_with_households(small_study: SimulatedStudy, client, folder, options: str):
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str})
    rng = np.random.default_rng(3)
    metadata["household"] = [f"H{h:04d}" for h in rng.integers(0, 250, len(metadata))]
    metadata.loc[rng.random(len(metadata)) < 0.02, "household"] = np.nan  # no household: a cluster of one
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    plan = write_plan(folder, PLAN.format(metadata=folder / "metadata.tsv", species=small_study.out_dir / "species.tsv") + options)
    with logged_messages() as log:
        summary = run_study(plan, folder / "out", client=client, allow_outside_paths=True, chunk_features=11)
    return summary, metadata.set_index("sample_id"), log


@pytest.fixture(scope="module")
def run(small_study: SimulatedStudy, client, tmp_path_factory):
    """``cluster: household`` and no OLS options: lm and lm_nonzero stay classical."""
    summary, metadata, _ = _run_with_households(small_study, client, tmp_path_factory.mktemp("models"), "")
    return summary, metadata


@pytest.fixture(scope="module")
def robust_run(small_study: SimulatedStudy, client, tmp_path_factory):
    """The same plan with cluster-robust lm (t reference) and lm_nonzero (normal reference)."""
    return _run_with_households(small_study, client, tmp_path_factory.mktemp("models_robust"), ROBUST_OPTIONS)


def _reference(data: pd.DataFrame, feature: str, exposure: str, cluster: str | None) -> dict[str, float]:
    """statsmodels OLS of one feature: classical (``cluster`` None), or cluster-robust with ``cluster`` "t" or "normal" p-values."""
    frame = (
        data[[feature, "exposure_value", "age", "sex", "bmi", "household"]]
        .rename(columns={feature: "y_feature"})
        .dropna(subset=["y_feature", "exposure_value", "age", "sex", "bmi"])
    )
    groups = pd.factorize(frame["household"])[0]
    groups[groups < 0] = groups.max() + 1 + np.arange((groups < 0).sum())
    model = smf.ols("y_feature ~ exposure_value + age + C(sex) + bmi", data=frame)
    fit = model.fit(cov_type="cluster", cov_kwds={"groups": groups}) if cluster else model.fit()
    p = fit.pvalues["exposure_value"]
    if cluster == "t":  # Stata's reference: t with G - 1 degrees of freedom, G the clusters among the rows used
        p = 2 * scipy.stats.t.sf(abs(fit.tvalues["exposure_value"]), np.unique(groups).size - 1)
    return {"beta": fit.params["exposure_value"], "se": fit.bse["exposure_value"], "p": p, "n": int(fit.nobs)}


def _small_presence_cell(data: pd.DataFrame, raw: pd.DataFrame, feature: str, model: str) -> bool:
    """A non-zero cell of present/absent x case/control below 3 among the model's participants (lm_nonzero: present cells only)."""
    used = data.dropna(subset=[feature, "exposure_value", "age", "sex", "bmi"])
    present = raw.loc[used.index, feature] > 0
    cases = used["exposure_value"] == 1
    cells = [(present & cases).sum(), (present & ~cases).sum()]
    if model != "lm_nonzero":
        cells += [(~present & cases).sum(), (~present & ~cases).sum()]
    return any(0 < cell < 3 for cell in cells)


def _gbm_clr_with_most_clustered(study: SimulatedStudy) -> tuple[pd.DataFrame, pd.Series]:
    """The gbm layer's CLR values (half the smallest positive value as pseudocount) with metadata and
    the any_ptd exposure, and the 3 features the simulation gave the largest family ICC."""
    metadata = pd.read_csv(study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    raw = read_layer(study.out_dir / "gbm.tsv")
    pseudocount = raw[raw > 0].min().min() / 2
    logged = np.log(raw + pseudocount)
    clr = logged.sub(logged.mean(axis=1, skipna=True), axis=0)
    truth = pd.read_csv(study.out_dir / "truth.tsv", sep="\t")
    clustered = truth[truth["layer"] == "gbm"].drop_duplicates("feature").nlargest(3, "family_icc")["feature"]
    return _exposure_frame(metadata, clr, "any_ptd"), clustered


def _exposure_frame(metadata: pd.DataFrame, layer: pd.DataFrame, exposure: str) -> pd.DataFrame:
    data = metadata.join(layer, how="inner")
    if exposure == "AnyDep":
        data = data[(data["AnyDep"] == 1) | (data["no_disorder"] == 1)]
    return data.assign(exposure_value=(data[exposure] == 1).astype(float))


def _check_ols_models(
    results: pd.DataFrame, metadata: pd.DataFrame, small_study: SimulatedStudy, references: dict[str, str | None]
) -> None:
    """lm and lm_nonzero rows equal statsmodels fits of the kinds named in ``references`` (model -> cluster argument of _reference)."""
    assert set(results["model"]) == {"lm", "lm_nonzero"}
    raw = read_layer(small_study.out_dir / "species.tsv")
    kept = raw.loc[:, (raw > 0).sum() / raw.notna().sum() >= 0.1]
    pseudocount = kept[kept > 0].min().min() / 2
    logged = np.log(kept + pseudocount)
    clr = logged.sub(logged.mean(axis=1), axis=0)
    present_log = np.log(kept.where(kept > 0))
    clr_nonzero = present_log.sub(present_log.mean(axis=1, skipna=True), axis=0)
    features = list(kept.columns[:: max(1, kept.shape[1] // 8)])
    for exposure in ("AnyDep", "any_ptd"):
        for model, layer in (("lm", clr), ("lm_nonzero", clr_nonzero)):
            data = _exposure_frame(metadata, layer, exposure)
            for feature in features:
                row = results[(results["feature"] == feature) & (results["exposure"] == exposure) & (results["model"] == model)].iloc[0]
                reference = _reference(data, feature, exposure, references[model])
                if row["status"] != "ok":
                    few_values = model == "lm_nonzero" and reference["n"] < 10
                    assert few_values or ("min_carriers" in row["status"] and _small_presence_cell(data, kept, feature, model)), (
                        feature,
                        row["status"],
                    )
                    continue
                assert row["n"] == reference["n"], (model, feature)
                for statistic in ("beta", "se", "p"):
                    assert row[statistic] == pytest.approx(reference[statistic], rel=1e-8), (model, exposure, feature, statistic)
    nonzero = results[results["model"] == "lm_nonzero"]
    linear = results[results["model"] == "lm"]
    assert (nonzero["n"].to_numpy() <= linear["n"].to_numpy()).all()
    assert (nonzero["n"].to_numpy() < linear["n"].to_numpy()).any(), "absent participants leave the non-zero model"


def test_cluster_alone_leaves_lm_and_lm_nonzero_classical(run, small_study: SimulatedStudy) -> None:
    """``cluster:`` without ``se: cluster``: plain OLS standard errors and t(n - rank) p-values."""
    summary, metadata = run
    _check_ols_models(summary.results, metadata, small_study, {"lm": None, "lm_nonzero": None})
    manifest = summary.manifest
    assert all(a["n_clusters"] is None for a in manifest["analyses"])
    assert all(a["ols_options"] == {"se": "classical", "reference": None} for a in manifest["analyses"])
    assert any("no model uses it" in w for w in manifest["warnings"])


def test_cluster_robust_lm_and_lm_nonzero_equal_statsmodels(robust_run, small_study: SimulatedStudy) -> None:
    """``se: cluster``: CR1 as statsmodels; p from t(G - 1) (lm, the default) or the normal (lm_nonzero, reference: normal)."""
    summary, metadata, log = robust_run
    _check_ols_models(summary.results, metadata, small_study, {"lm": "t", "lm_nonzero": "normal"})
    # About 250 households: no warning about few clusters; each analysis records its clusters.
    assert summary.manifest["warnings"] == [] and not any("warning" in line for line in log)
    for entry in summary.manifest["analyses"]:
        exposure = _exposure_frame(metadata, metadata[[]], entry["exposure"]).dropna(subset=["age", "sex", "bmi"])
        households = exposure["household"]
        assert entry["n_clusters"] == households.nunique() + households.isna().sum() > 200, entry
        assert entry["ols_options"] == {"se": "cluster", "reference": "t" if entry["model"] == "lm" else "normal"}


def test_fdr_families_separate_models(run) -> None:
    results = run[0].results
    from statsmodels.stats.multitest import multipletests

    for _, family in results.groupby(["layer", "exposure", "adjustment", "model"]):
        estimated = family[family["p"].notna()]
        np.testing.assert_allclose(
            estimated["q"].to_numpy(float), multipletests(estimated["p"].to_numpy(float), method="fdr_bh")[1], rtol=1e-12
        )


def test_lmm_in_a_run_equals_statsmodels_mixedlm(small_study: SimulatedStudy, client, tmp_path) -> None:
    import statsmodels.api as sm

    plan = tmp_path / "plan.yaml"
    text = PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=small_study.out_dir / "gbm.tsv")
    # The numerics under test, not the carrier rule (tests/test_study_rules.py): min_carriers 0.
    plan.write_text(
        text.replace("models: [lm, lm_nonzero]", "models: [lmm]").replace("cluster: household", "cluster: family_id") + "min_carriers: 0\n"
    )
    results = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True).results
    assert set(results["model"]) == {"lmm"} and (results["status"] == "ok").mean() > 0.9
    data, clustered = _gbm_clr_with_most_clustered(small_study)
    for feature in clustered:
        frame = data[[feature, "exposure_value", "age", "sex", "bmi", "family_id"]].dropna(subset=[feature, "age", "bmi"])
        exog = np.column_stack([np.ones(len(frame)), frame["exposure_value"], frame["age"], frame["sex"] == "male", frame["bmi"]]).astype(
            float
        )
        fit = sm.MixedLM(frame[feature].to_numpy(float), exog, groups=pd.factorize(frame["family_id"])[0]).fit(reml=True, method="bfgs")
        row = results[(results["feature"] == feature) & (results["exposure"] == "any_ptd")].iloc[0]
        assert row["status"] == "ok" and row["n"] == len(frame)
        # The plumbing (participants, families, transform) exactly: the kernel on this frame.
        codes = pd.factorize(frame["family_id"])[0]
        design = factorise_covariates(exog[:, [0, 2, 3, 4]], ("(intercept)", "age", "sex[male]", "bmi"))
        direct, _ = fit_random_intercept(design, exog[:, 1][None], np.array([True]), frame[[feature]].to_numpy(float), codes)
        assert row["beta"] == pytest.approx(direct.beta[0, 0], rel=1e-8)
        assert row["se"] == pytest.approx(direct.se[0, 0], rel=1e-8)
        # And an independent fit. MixedLM's optimiser stops ~1e-4 from the REML optimum, and its
        # bse_fe comes from the joint information of fixed and variance parameters; lme4 (and we,
        # equal to lme4 to ~1e-8 in tests/test_lmm.py) report sigma_e^2 (X'V^-1X)^-1 at the
        # estimated variances, so that is what is compared, at MixedLM's variance estimates.
        sigma_u2, sigma_e2 = float(np.asarray(fit.cov_re)[0, 0]), float(fit.scale)
        information = np.zeros((exog.shape[1], exog.shape[1]))
        for family in np.unique(codes):
            members = exog[codes == family]
            covariance = sigma_e2 * np.eye(len(members)) + sigma_u2
            information += members.T @ np.linalg.solve(covariance, members)
        assert row["beta"] == pytest.approx(fit.fe_params[1], rel=1e-3, abs=1e-4)
        assert row["se"] == pytest.approx(np.sqrt(np.linalg.inv(information)[1, 1]), rel=1e-3)


def test_lmm_rows_carry_variance_components(small_study: SimulatedStudy, client, tmp_path) -> None:
    """cluster_variance, residual_variance, icc: the kernel's REML components on lmm rows, null (not NaN) elsewhere."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from scalable_assoc.results.columns import RESULT_SCHEMA
    from scalable_assoc.results.sumstats import SUMMARY_COLUMNS, DisclosureRules, read_run, write_sumstats

    components = ["cluster_variance", "residual_variance", "icc"]
    plan = tmp_path / "plan.yaml"
    text = PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=small_study.out_dir / "gbm.tsv")
    plan.write_text(
        text.replace("models: [lm, lm_nonzero]", "models: [lm, lmm]").replace("cluster: household", "cluster: family_id")
        + "min_carriers: 0\n"
    )
    results = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True).results
    assert set(results["model"]) == {"lm", "lmm"}
    # The written table has the registry's schema; the components are nulls, never NaN, where absent.
    table = pq.read_table(tmp_path / "out" / "results.parquet")
    assert table.schema.equals(RESULT_SCHEMA)
    model = table.column("model").to_numpy(zero_copy_only=False)
    ok = table.column("status").to_numpy(zero_copy_only=False) == "ok"
    for name in components:
        column = table.column(name).combine_chunks()
        assert not pc.any(pc.is_nan(column)).as_py(), name
        np.testing.assert_array_equal(column.is_null().to_numpy(zero_copy_only=False), (model != "lmm") | ~ok, err_msg=name)
    lmm = results[(results["model"] == "lmm") & (results["status"] == "ok")]
    assert len(lmm) > 0.9 * (results["model"] == "lmm").sum()
    icc = lmm["icc"].to_numpy(float)
    assert np.all((icc >= 0) & (icc <= 1)) and (icc > 0).any() and (icc == 0).any()  # some clustered, some at the boundary
    np.testing.assert_allclose(icc, lmm["cluster_variance"] / (lmm["cluster_variance"] + lmm["residual_variance"]), rtol=1e-12)
    tsv = pd.read_csv(tmp_path / "out" / "all_results.tsv", sep="\t")
    assert tsv.loc[tsv["model"] == "lm", components].isna().all().all()

    # Equal to the kernel on the same participants, families and transformed values.
    data, clustered = _gbm_clr_with_most_clustered(small_study)
    for feature in [*clustered, *lmm["feature"].iloc[:2]]:
        frame = data[[feature, "exposure_value", "age", "sex", "bmi", "family_id"]].dropna(subset=[feature, "age", "bmi"])
        covariates = np.column_stack([np.ones(len(frame)), frame["age"], frame["sex"] == "male", frame["bmi"]]).astype(float)
        design = factorise_covariates(covariates, ("(intercept)", "age", "sex[male]", "bmi"))
        exposure = frame["exposure_value"].to_numpy(float)[None]
        _, direct = fit_random_intercept(
            design, exposure, np.array([True]), frame[[feature]].to_numpy(float), pd.factorize(frame["family_id"])[0]
        )
        row = lmm[(lmm["feature"] == feature) & (lmm["exposure"] == "any_ptd")].iloc[0]
        assert row["cluster_variance"] == pytest.approx(direct.sigma_u2[0, 0], rel=1e-7, abs=1e-12), feature
        assert row["residual_variance"] == pytest.approx(direct.sigma_e2[0, 0], rel=1e-8), feature
        assert row["icc"] == pytest.approx(direct.icc[0, 0], rel=1e-7, abs=1e-12), feature
    assert (lmm.set_index("feature").loc[list(clustered), "icc"] > 0.05).all()

    # Not part of the summary statistics a cohort exports (SUMMARY_COLUMNS is the whole disclosed set).
    write_sumstats(read_run(tmp_path / "out"), "cohort", tmp_path / "cohort.parquet", DisclosureRules())
    assert list(pd.read_parquet(tmp_path / "cohort.parquet").columns) == list(SUMMARY_COLUMNS)


def test_prevalence_in_a_run_equals_statsmodels_logit(small_study: SimulatedStudy, client, tmp_path) -> None:
    import statsmodels.api as sm

    plan = tmp_path / "plan.yaml"
    text = PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=small_study.out_dir / "species.tsv")
    plan.write_text(
        text.replace("models: [lm, lm_nonzero]", "models: [prevalence]\npresence_threshold: 0.001").replace("cluster: household\n", "")
    )
    results = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True).results
    assert set(results["model"]) == {"prevalence"}
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    raw = read_layer(small_study.out_dir / "species.tsv")
    kept = raw.loc[:, (raw > 0).sum() / raw.notna().sum() >= 0.1]
    presence = (kept > 0.001).astype(float).where(kept.notna())
    checked = 0
    for exposure in ("AnyDep", "any_ptd"):
        data = _exposure_frame(metadata, presence, exposure).dropna(subset=["age", "bmi"])
        exog = np.column_stack([np.ones(len(data)), data["age"], data["sex"] == "male", data["bmi"], data["exposure_value"]]).astype(float)
        for feature in kept.columns[::5]:
            row = results[(results["feature"] == feature) & (results["exposure"] == exposure)].iloc[0]
            if row["status"] != "ok":
                assert row["status"].startswith(("separation", "too few")), row["status"]
                continue
            fit = sm.Logit(data[feature].to_numpy(float), exog, missing="drop").fit(disp=0, method="newton", tol=1e-12, maxiter=100)
            assert row["n"] == int(fit.nobs)
            for statistic, expected in (("beta", fit.params[-1]), ("se", fit.bse[-1]), ("p", fit.pvalues[-1])):
                assert row[statistic] == pytest.approx(expected, rel=1e-6), (exposure, feature, statistic)
            checked += 1
    assert checked >= 6


def test_all_models_invariant_to_chunk_size(small_study: SimulatedStudy, client, tmp_path) -> None:
    text = PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=small_study.out_dir / "species.tsv")
    text = text.replace("models: [lm, lm_nonzero]", "models: [lm, lm_nonzero, prevalence, lmm]").replace(
        "cluster: household", "cluster: family_id"
    )
    frames = []
    for chunk in (5, 64):
        folder = tmp_path / f"chunk{chunk}"
        folder.mkdir()
        write_plan(folder, text)
        frames.append(
            run_study(folder / "plan.yaml", folder / "out", client=client, chunk_features=chunk, allow_outside_paths=True).results
        )
    small, large = frames
    assert set(small["model"]) == {"lm", "lm_nonzero", "prevalence", "lmm"}
    pd.testing.assert_frame_equal(
        small[["layer", "feature", "exposure", "model", "n", "status"]], large[["layer", "feature", "exposure", "model", "n", "status"]]
    )
    for statistic in ("beta", "se", "p", "q"):
        a, b = small[statistic].to_numpy(float), large[statistic].to_numpy(float)
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12 * np.nanmax(np.abs(b)))


def test_joint_p_of_abundance_and_presence_as_maaslin3(small_study: SimulatedStudy, client, tmp_path) -> None:
    """joint_results: Beta(1, 2) CDF at the smaller p (the other p where one part has none), BH per family."""
    import scipy.stats
    from statsmodels.stats.multitest import multipletests

    plan = tmp_path / "plan.yaml"
    text = PLAN.format(metadata=small_study.out_dir / "metadata.tsv", species=small_study.out_dir / "species.tsv")
    plan.write_text(text.replace("models: [lm, lm_nonzero]", "models: [lm_nonzero, prevalence]").replace("cluster: household\n", ""))
    results = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True).results
    joint = pd.read_parquet(tmp_path / "out" / "joint_results.parquet")
    keys = ["layer", "feature", "exposure", "adjustment"]
    parts = {m: results[results["model"] == m].set_index(keys) for m in ("lm_nonzero", "prevalence")}
    assert len(joint) == len(parts["prevalence"])
    indexed = joint.set_index(keys)
    p_abundance = parts["lm_nonzero"].loc[indexed.index, "p"].to_numpy(dtype=float, na_value=np.nan)
    p_presence = parts["prevalence"].loc[indexed.index, "p"].to_numpy(dtype=float, na_value=np.nan)
    both = ~np.isnan(p_abundance) & ~np.isnan(p_presence)
    expected = scipy.stats.beta(1, 2).cdf(np.minimum(p_abundance, p_presence))
    np.testing.assert_allclose(indexed["p_joint"].to_numpy()[both], expected[both], rtol=1e-12)
    only_presence = np.isnan(p_abundance) & ~np.isnan(p_presence)
    assert only_presence.any()  # rare species: no abundance model, a presence one
    np.testing.assert_array_equal(indexed["p_joint"].to_numpy()[only_presence], p_presence[only_presence])
    for _, family in joint.groupby(["layer", "exposure", "adjustment"]):
        defined = family["p_joint"].notna()
        np.testing.assert_allclose(
            family.loc[defined, "q_joint"], multipletests(family.loc[defined, "p_joint"], method="fdr_bh")[1], rtol=1e-12
        )


def test_prevalence_tasks_keep_a_subsets_adjustment_sets_together(small_study: SimulatedStudy, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # The prevalence kernel shares work between the designs of one participant subset (an
    # exposure's adjustment sets): tasks must hold them together, the linear models
    # keep packing designs with the same covariates.
    from scalable_assoc.engine.chunks import chunk_tasks
    from scalable_assoc.engine.prepare import prepare_study
    from scalable_assoc.plan.schema import load_plan
    from scalable_assoc.simulate import plan_yaml

    plan = small_study.out_dir / "prevalence_plan.yaml"
    plan.write_text(plan_yaml(models=["lm", "prevalence"]) + "min_cases: 3\n")
    study = prepare_study(load_plan(plan), tmp_path / "stores")
    layer = study.layers[0]
    rows = {key: design.rows.tobytes() for key, design in layer.designs.items()}
    per_subset: dict[bytes, int] = {}
    for analysis in layer.analyses:
        if analysis.key.model == "prevalence":
            per_subset[rows[analysis.design_key]] = per_subset.get(rows[analysis.design_key], 0) + 1
    assert len(per_subset) > 1 and min(per_subset.values()) > 1
    per_task = max(per_subset.values())  # every subset fits a task
    tasks = [t for t in chunk_tasks(study, per_task) if t.layer == layer.spec.name and t.block_index == 0]
    for task in tasks:
        assert len({a.key.model for a in task.analyses}) == 1
        if task.analyses[0].key.model == "prevalence":
            subsets = {rows[a.design_key] for a in task.analyses}
            assert all(sum(1 for a in task.analyses if rows[a.design_key] == s) == per_subset[s] for s in subsets)
    covered = [a.key.analysis_id for t in tasks for a in t.analyses]
    assert sorted(covered) == sorted(a.key.analysis_id for a in layer.analyses)  # every analysis once


def test_cluster_labels_compared_without_surrounding_whitespace() -> None:
    from scalable_assoc.engine import clusters as prepare

    frame = pd.DataFrame({"project": ["a", "a ", " a", "b", None, "  ", "b\t", "c"]})
    codes = prepare.cluster_codes(frame, "project")
    assert codes[0] == codes[1] == codes[2] and codes[3] == codes[6]
    # No value, or whitespace only: a cluster of one each.
    assert len(set(codes)) == 5 and codes[4] != codes[5]
    assert prepare.merged_cluster_labels(frame["project"]) == {"a": [" a", "a", "a "], "b": ["b", "b\t"]}
    # Numeric labels are kept as they are.
    np.testing.assert_array_equal(prepare.cluster_codes(pd.DataFrame({"family": [3, 3, 7, np.nan]}), "family"), [0, 0, 1, 2])


def test_standard_error_options_change_chunk_ids(small_study: SimulatedStudy, tmp_path) -> None:
    """Chunk files of one choice of standard errors are never reused by a run with another."""
    from scalable_assoc.engine.chunks import chunk_tasks
    from scalable_assoc.engine.prepare import prepare_study
    from scalable_assoc.plan.schema import load_plan
    from scalable_assoc.simulate import plan_yaml

    ids = {}
    for options in ("", "lm: {se: cluster}\n", "lm: {se: cluster, reference: normal}\n"):
        plan = small_study.out_dir / "options_plan.yaml"
        plan.write_text(plan_yaml(models=["lm"]) + "cluster: family_id\nmin_cases: 3\n" + options)
        study = prepare_study(load_plan(plan), tmp_path / "stores")
        ids[options] = {task.chunk_id for task in chunk_tasks(study, 8)}
    first, *others = ids.values()
    assert all(not first & other for other in others) and not others[0] & others[1]
