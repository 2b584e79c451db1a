"""Fast tests of scalable_assoc.simulate (the planted-truth study simulator)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scalable_assoc.errors import UserInputError
from scalable_assoc.simulate import (
    DISORDERS,
    DRUG_CONFOUNDED_FEATURES,
    FAMILY_SIZE_PROBABILITIES,
    GBM_HEADLINE_MODULES,
    HEADLINE_FEATURES,
    HEADLINE_SIGNS,
    PLAN_EXPOSURES,
    PLAN_YAML,
    PLAN_YAML_WITH_MODELS,
    SPLIT_EFFECTS,
    SimulatedStudy,
    plan_yaml,
    simulate_study,
)

DISORDER_EXPOSURES = ("dysthymia", "MDD", "AnyDep", "GAD", "AnyAnx")
# Exposures with >= 250 cases at the default size, where one-part effects are tested.
WELL_POWERED = ("MDD", "AnyDep", "AnyAnx")
SMALL = dict(participants=600, n_species=60, n_pathways=40)
FILES = ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv", "truth.tsv", "plan.yaml")
META_COLUMNS = [
    "sample_id",
    "age",
    "sex",
    "bmi",
    "bristol_stool",
    "read_depth",
    "ppi",
    "laxatives",
    "metformin",
    "ibs",
    "fgid",
    "ssri",
    "any_ptd",
    "dysthymia",
    "MDD",
    "AnyDep",
    "GAD",
    "social_phobia",
    "panic",
    "AnyAnx",
    "no_disorder",
    "neuroticism",
    "family_id",
]
TRUTH_COLUMNS = ["layer", "feature", "exposure", "effect", "presence_effect", "abundance_effect", "family_icc"]
BINARY = ["ppi", "laxatives", "metformin", "ibs", "fgid", "ssri", "any_ptd", *DISORDERS, "no_disorder"]


# ---------------------------------------------------------------------------- helpers
def read_meta(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "metadata.tsv", sep="\t", dtype={"sample_id": str})


def read_species(d: Path) -> pd.DataFrame:
    """Merged MetaPhlAn table: clades x samples (percent)."""
    with open(d / "species.tsv", encoding="utf-8") as fh:
        assert fh.readline().startswith("#mpa_vJan21")
    return pd.read_csv(d / "species.tsv", sep="\t", skiprows=1, index_col=0)


def species_level(tab: pd.DataFrame) -> pd.DataFrame:
    """Species rows only, indexed by their last clade component (``s__...``)."""
    sp = tab[tab.index.str.contains(r"\|s__")]
    sp.index = [c.rsplit("|", 1)[1] for c in sp.index]
    return sp


def read_wide(d: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(d / name, sep="\t", index_col=0)


def read_truth(d: Path) -> pd.DataFrame:
    return pd.read_csv(d / "truth.tsv", sep="\t")


def family_pairs(family_id: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Row positions (i, k), i != k, of every ordered pair of relatives."""
    codes = pd.factorize(family_id)[0]
    order = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    first, second = [], []
    for size in range(2, int(sizes.max()) + 1):
        members = order[starts[sizes == size][:, None] + np.arange(size)]  # (families, size)
        i, k = np.nonzero(~np.eye(size, dtype=bool))
        first.append(members[:, i].ravel())
        second.append(members[:, k].ravel())
    return np.concatenate(first), np.concatenate(second)


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    return simulate_study(tmp_path_factory.mktemp("small") / "nested" / "study", seed=1, **SMALL)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    # Default cohort size; few features to keep the test fast, but enough synthetic
    # species (102) for every presence-only / abundance-only effect of SPLIT_EFFECTS.
    return simulate_study(tmp_path_factory.mktemp("full"), seed=0, n_species=150, n_pathways=20)


# ---------------------------------------------------------------------------- files
def test_files_and_metadata_columns(small: SimulatedStudy) -> None:
    d = small.out_dir
    for f in FILES:
        assert (d / f).is_file(), f
    assert small.plan_path == d / "plan.yaml"
    meta = read_meta(d)
    assert list(meta.columns) == META_COLUMNS
    assert len(meta) == small.n_participants == 600
    assert meta["sample_id"].is_unique
    assert meta["sample_id"].str.fullmatch(r"LL\d{6}").all()
    assert set(meta["sex"].dropna()) == {"female", "male"}
    assert meta["age"].between(18, 80).all()
    assert meta["bristol_stool"].dropna().isin(range(1, 8)).all()
    assert meta["read_depth"].between(3, 30).all()
    for col in BINARY:
        assert meta[col].isin([0, 1]).all(), col
    # IBS is an FGID; SSRIs are psychotropics.
    assert (meta["fgid"] >= meta["ibs"]).all()
    assert (meta["any_ptd"] >= meta["ssri"]).all()
    # Summary matches the files.
    assert small.n_controls == int(meta["no_disorder"].sum())
    assert small.case_counts == {d_: int(meta[d_].sum()) for d_ in DISORDERS}
    assert all(v >= 5 for v in small.case_counts.values())


def test_sample_ids_identical_across_tables(small: SimulatedStudy) -> None:
    d = small.out_dir
    ids = list(read_meta(d)["sample_id"])
    assert list(read_species(d).columns) == ids
    assert list(read_wide(d, "pathways.tsv").index) == ids
    assert list(read_wide(d, "gbm.tsv").index) == ids


def test_feature_tables_shape_and_names(small: SimulatedStudy) -> None:
    d = small.out_dir
    sp = species_level(read_species(d))
    pw = read_wide(d, "pathways.tsv")
    gb = read_wide(d, "gbm.tsv")
    assert small.n_features == {"species": 60, "pathways": 40, "gbm": 56}
    assert sp.shape[0] == 60 and sp.index.is_unique
    for name in (
        "s__Ruminococcus_bromii",
        "s__Bifidobacterium_bifidum",
        "s__Faecalibacterium_prausnitzii",
        "s__Eggerthella_lenta",
        "s__Coprococcus_comes",
        "s__Dialister_invisus",
        "s__Streptococcus_salivarius",
        "s__Escherichia_coli",
    ):
        assert name in sp.index, name
    assert pw.shape[1] == 40 and pw.columns.is_unique
    assert "PWY-5097: L-lysine biosynthesis VI" in pw.columns
    assert list(gb.columns) == [f"MGB{k:03d}" for k in range(1, 57)]
    assert (pw.fillna(0) >= 0).all().all() and (gb.fillna(0) >= 0).all().all()


def test_plan_yaml(small: SimulatedStudy) -> None:
    plan = yaml.safe_load(small.plan_path.read_text())
    assert plan["name"] == "lifelines-internalizing"
    assert plan["preprocess"] == {"min_prevalence": 0.05, "transform": "clr", "pseudocount": "half_min"}
    assert list(plan["exposures"]) == list(PLAN_EXPOSURES)
    assert plan["exposures"]["ssri"] == {"cases": "ssri == 1", "controls": "ssri == 0"}
    assert plan["adjustments"]["gi"] == ["meds", "ibs", "fgid"]
    assert plan["fdr"] == {"method": "bh", "by": ["layer", "exposure", "adjustment"], "alpha": 0.05}
    base = small.plan_path.parent
    assert (base / plan["data"]["metadata"]).is_file()
    for path in plan["data"]["layers"].values():
        assert (base / path).is_file()


def test_plan_with_models(small: SimulatedStudy) -> None:
    # plan.yaml stays the lm-only plan; the opt-in models come as extra lines.
    assert small.plan_path.read_text() == PLAN_YAML == plan_yaml()
    assert PLAN_YAML_WITH_MODELS.startswith(PLAN_YAML)
    assert PLAN_YAML_WITH_MODELS[len(PLAN_YAML) :] == (
        "models: [lm, lm_nonzero, prevalence]\ncluster: family_id\nlm: {se: cluster}\nlm_nonzero: {se: cluster}\n"
    )
    plan = yaml.safe_load(PLAN_YAML_WITH_MODELS)
    assert plan["models"] == ["lm", "lm_nonzero", "prevalence"] and plan["cluster"] == "family_id"
    assert plan["lm"] == plan["lm_nonzero"] == {"se": "cluster"}
    assert {k: v for k, v in plan.items() if k not in ("models", "cluster", "lm", "lm_nonzero")} == yaml.safe_load(PLAN_YAML)
    assert plan["cluster"] in read_meta(small.out_dir).columns
    assert yaml.safe_load(plan_yaml(["lm", "lmm"], "family_id"))["models"] == ["lm", "lmm"]
    assert "cluster" not in yaml.safe_load(plan_yaml(["lm", "prevalence"]))


def test_plan_with_models_loads(small: SimulatedStudy, tmp_path: Path) -> None:
    from scalable_assoc.plan import load_plan

    for name in ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv"):
        (tmp_path / name).symlink_to(small.out_dir / name)
    (tmp_path / "plan.yaml").write_text(PLAN_YAML_WITH_MODELS)
    plan = load_plan(tmp_path / "plan.yaml", allow_outside_paths=True)  # the links point outside the plan's folder
    assert plan.cluster == "family_id"
    assert all(layer.models == ("lm", "lm_nonzero", "prevalence") for layer in plan.layers)


# ---------------------------------------------------------------------------- cohort
def test_default_cohort_shape(full: SimulatedStudy) -> None:
    meta = read_meta(full.out_dir)
    assert len(meta) == 7656
    assert full.n_controls == 5522 == int(meta["no_disorder"].sum())
    dis = meta[list(DISORDERS)]
    any_dis = dis.max(axis=1) == 1
    assert int(any_dis.sum()) == 491
    # Controls have no disorder; the rest (1,643) are neither case nor control.
    assert (dis[meta["no_disorder"] == 1] == 0).all().all()
    assert int(((meta["no_disorder"] == 0) & ~any_dis).sum()) == 7656 - 5522 - 491
    for col in DISORDERS:
        assert 70 <= int(meta[col].sum()) <= 385, col
    assert (meta["AnyDep"] == (meta["dysthymia"] | meta["MDD"])).all()
    assert (meta["AnyAnx"] == (meta["GAD"] | meta["social_phobia"] | meta["panic"])).all()
    assert ((meta["AnyDep"] == 1) & (meta["AnyAnx"] == 1)).sum() > 0  # comorbidity
    assert (meta["any_ptd"] >= meta["ssri"]).all()
    controls = meta["no_disorder"] == 1
    for drug in ("any_ptd", "ssri"):
        assert meta.loc[any_dis, drug].mean() > 2 * meta.loc[controls, drug].mean()
    assert meta.loc[any_dis, "neuroticism"].mean() > meta.loc[controls, "neuroticism"].mean()
    assert 0.54 < (meta["sex"] == "female").mean() < 0.62


def test_small_cohort_scales(small: SimulatedStudy) -> None:
    # 600 / 7656 of the reference design, every disorder still has >= 5 cases.
    assert small.n_controls == round(5522 * 600 / 7656)
    meta = read_meta(small.out_dir)
    assert (meta[list(DISORDERS)].max(axis=1) == 1).sum() > 20


def test_covariate_missingness(full: SimulatedStudy) -> None:
    meta = read_meta(full.out_dir)
    assert 0.01 < meta["bmi"].isna().mean() < 0.03
    assert 0.02 < meta["bristol_stool"].isna().mean() < 0.04
    must_be_complete = ["sample_id", "sex", "age", "read_depth", *BINARY]
    assert not meta[must_be_complete].isna().any().any()


# ---------------------------------------------------------------------------- families
def test_family_structure(full: SimulatedStudy) -> None:
    fam = read_meta(full.out_dir)["family_id"]
    assert fam.notna().all() and fam.str.fullmatch(r"F\d{5}").all()
    assert fam.iloc[0] == "F00001"  # numbered in order of first appearance
    sizes = fam.value_counts()
    assert full.n_families == len(sizes)
    assert 3000 <= full.n_families <= 4000  # 7,656 participants, mean size ~2.1
    assert sizes.between(1, 5).all()
    share = sizes.value_counts(normalize=True)
    assert set(share.index) == set(FAMILY_SIZE_PROBABILITIES)
    for size, p in FAMILY_SIZE_PROBABILITIES.items():
        assert abs(share[size] - p) < 0.03, (size, share.to_dict())
    # Lifelines-like: mostly singletons and couples, some families of 3-5.
    assert share[1] + share[2] > 0.6 and share[[3, 4, 5]].sum() > 0.2


def test_families_independent_of_disorders(full: SimulatedStudy) -> None:
    meta = read_meta(full.out_dir)
    i, k = family_pairs(meta["family_id"])
    assert len(i) > 5000
    for col in ("AnyDep", "AnyAnx", "ssri"):
        x = meta[col].to_numpy(float)
        assert abs(np.corrcoef(x[i], x[k])[0, 1]) < 0.05, col


def test_family_random_effect_visible(full: SimulatedStudy) -> None:
    """Relatives' log abundances (both present) correlate as much as family_icc says."""
    d = full.out_dir
    meta = read_meta(d)
    sp = species_level(read_species(d))
    truth = read_truth(d)
    icc_all = truth[(truth["layer"] == "species") & (truth["exposure"] == "MDD")].set_index("feature")["family_icc"][sp.index]
    logx = np.log(sp.T.where(sp.T > 0)).to_numpy()  # samples x species, NaN if absent
    i, k = family_pairs(meta["family_id"])
    a, b = logx[i], logx[k]
    r = {}
    for j, name in enumerate(sp.index):
        both = ~np.isnan(a[:, j]) & ~np.isnan(b[:, j])
        if both.sum() >= 1000:
            r[name] = np.corrcoef(a[both, j], b[both, j])[0, 1]
    r = pd.Series(r)
    icc = icc_all[r.index]
    assert (icc >= 0.2).sum() >= 3 and (icc <= 0.03).sum() >= 3
    assert (r[icc >= 0.2] > 0.1).all(), r[icc >= 0.2]
    # Closure adds a little shared signal (a sample's total holds its family effects).
    assert abs(r[icc <= 0.03].mean()) < 0.08, r[icc <= 0.03]
    assert np.corrcoef(icc, r)[0, 1] > 0.7
    # Presence is clustered as well (family effect on the log odds of presence).
    present = (sp.T > 0).to_numpy(float)
    prev = present.mean(axis=0)
    mid = (prev > 0.2) & (prev < 0.8)
    clustered = mid & (icc_all.to_numpy() >= 0.2)
    rp = [np.corrcoef(present[i, j], present[k, j])[0, 1] for j in np.flatnonzero(clustered)]
    assert len(rp) >= 3 and np.mean(rp) > 0.03


def test_without_families(small: SimulatedStudy, tmp_path: Path) -> None:
    s = simulate_study(tmp_path, seed=1, families=False, **SMALL)
    meta = read_meta(s.out_dir)
    assert list(meta.columns) == META_COLUMNS[:-1]
    assert s.n_families == 0
    assert (read_truth(s.out_dir)["family_icc"] == 0).all()
    # Families draw from their own stream: the cohort of a seed is the same either way.
    pd.testing.assert_frame_equal(meta, read_meta(small.out_dir).drop(columns="family_id"))
    assert s == SimulatedStudy(**{**small.__dict__, "out_dir": s.out_dir, "plan_path": s.plan_path, "n_families": 0})


def test_small_cohort_families(small: SimulatedStudy) -> None:
    sizes = read_meta(small.out_dir)["family_id"].value_counts()
    assert small.n_families == len(sizes) and sizes.between(1, 5).all()
    assert 200 <= small.n_families <= 400


# ---------------------------------------------------------------------------- species
def test_species_compositional_and_hierarchical(full: SimulatedStudy) -> None:
    tab = read_species(full.out_dir)
    assert not tab.isna().any().any() and (tab >= 0).all().all()
    is_species = tab.index.str.contains(r"\|s__")
    sp = tab[is_species]
    assert np.allclose(sp.sum(axis=0), 100.0, atol=1e-3)
    # Every higher-rank row equals the sum of the species below it.
    sp_values = sp.to_numpy()
    higher = tab.index[~is_species]
    below = np.array([[c.startswith(clade + "|") for c in sp.index] for clade in higher])
    assert below.any(axis=1).all()
    np.testing.assert_allclose(tab.loc[higher].to_numpy(), below @ sp_values, rtol=1e-4, atol=1e-4)
    assert np.allclose(tab.loc[["k__Archaea", "k__Bacteria"]].sum(axis=0), 100.0, atol=1e-3)
    prevalence = (sp > 0).mean(axis=1)
    assert (prevalence < 0.05).any()  # a prevalence filter removes some species
    assert (prevalence > 0.9).any()
    assert (sp == 0).to_numpy().mean() > 0.1  # zero-inflated


# ---------------------------------------------------------------------------- missing
def test_missing_abundance_cells(small: SimulatedStudy, tmp_path: Path) -> None:
    for name in ("pathways.tsv", "gbm.tsv"):
        assert read_wide(small.out_dir, name).isna().to_numpy().sum() > 0, name
    dense = simulate_study(tmp_path, seed=1, missing_abundance_fraction=0.0, **SMALL)
    for name in ("pathways.tsv", "gbm.tsv"):
        assert read_wide(dense.out_dir, name).isna().to_numpy().sum() == 0, name
    assert not read_species(dense.out_dir).isna().any().any()


def test_missing_fraction_is_respected(tmp_path: Path) -> None:
    s = simulate_study(tmp_path, participants=400, n_species=50, n_pathways=200, missing_abundance_fraction=0.05)
    frac = read_wide(s.out_dir, "pathways.tsv").isna().to_numpy().mean()
    assert 0.04 < frac < 0.06


# ---------------------------------------------------------------------------- truth
def test_truth_table(small: SimulatedStudy) -> None:
    d = small.out_dir
    truth = pd.read_csv(d / "truth.tsv", sep="\t")
    assert list(truth.columns) == TRUTH_COLUMNS
    assert not truth.duplicated(["layer", "feature", "exposure"]).any()
    features = {
        "species": set(species_level(read_species(d)).index),
        "pathways": set(read_wide(d, "pathways.tsv").columns),
        "gbm": set(read_wide(d, "gbm.tsv").columns),
    }
    for layer, feats in features.items():
        sub = truth[truth["layer"] == layer]
        for exposure in PLAN_EXPOSURES:
            assert set(sub.loc[sub["exposure"] == exposure, "feature"]) == feats
    assert len(truth) == sum(len(f) for f in features.values()) * len(PLAN_EXPOSURES)
    assert small.n_planted == int((truth["effect"] != 0).sum()) > 0


def test_headline_effects_planted(full: SimulatedStudy) -> None:
    truth = pd.read_csv(full.out_dir / "truth.tsv", sep="\t").set_index(["layer", "feature", "exposure"])["effect"]
    assert len(HEADLINE_SIGNS) == sum(len(v) for v in HEADLINE_FEATURES.values())
    for key, sign in HEADLINE_SIGNS.items():
        assert np.sign(truth[key]) == sign, key
        assert 0.3 <= abs(truth[key]) <= 1.5, key
    assert set(GBM_HEADLINE_MODULES) == {"tryptophan", "glutamate", "dopac"}
    # Drug-driven features: zero for disorders, non-zero for the drugs.
    for layer, feature in DRUG_CONFOUNDED_FEATURES:
        for exposure in ("dysthymia", "MDD", "AnyDep", "GAD", "AnyAnx"):
            assert truth[(layer, feature, exposure)] == 0
        assert truth[(layer, feature, "any_ptd")] != 0
    # A sensible share of features is non-null per exposure.
    nonnull = truth.ne(0).groupby(level="exposure").mean()
    assert ((nonnull > 0.02) & (nonnull < 0.2)).all(), nonnull


def test_planted_effect_recoverable(full: SimulatedStudy) -> None:
    """Crude mean log-abundance difference of R. bromii, AnyDep cases vs controls."""
    d = full.out_dir
    meta = read_meta(d).set_index("sample_id")
    sp = species_level(read_species(d))
    x = np.log(sp.loc["s__Ruminococcus_bromii"] + 1e-3)
    diff = x[meta["AnyDep"] == 1].mean() - x[meta["no_disorder"] == 1].mean()
    assert diff < -0.3
    # B. bifidum is lower in anxiety cases as planted.
    y = np.log(sp.loc["s__Bifidobacterium_bifidum"] + 1e-3)
    assert y[meta["AnyAnx"] == 1].mean() < y[meta["no_disorder"] == 1].mean() - 0.3


def species_kinds(truth: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Species truth rows of each planted kind."""
    sp = truth[truth["layer"] == "species"]
    pe, ae = sp["presence_effect"], sp["abundance_effect"]
    return {"presence_only": sp[(ae == 0) & (pe != 0)], "abundance_only": sp[(pe == 0) & (ae != 0)], "ordinary": sp[(pe != 0) & (ae != 0)]}


def test_truth_effect_kinds_consistent(full: SimulatedStudy) -> None:
    truth = read_truth(full.out_dir)
    assert list(truth.columns) == TRUTH_COLUMNS
    eff, pe, ae = (truth[c].to_numpy() for c in ("effect", "presence_effect", "abundance_effect"))
    # effect keeps its meaning (the log fold change) wherever the abundance moves and
    # otherwise carries the presence effect, so effect != 0 whenever anything moves.
    np.testing.assert_array_equal(eff, np.where(ae != 0, ae, pe))
    assert full.n_planted == int((eff != 0).sum())
    # Ordinary effects move presence with half the abundance effect (coupling 0.5).
    both = (pe != 0) & (ae != 0)
    np.testing.assert_allclose(pe[both], 0.5 * ae[both], rtol=1e-5)
    assert ((pe != 0) == (ae != 0)).sum() > 0.9 * len(truth)
    # One-part effects: species only, disorder exposures only, one kind per feature.
    kinds = species_kinds(truth)
    one_part = truth[(pe == 0) != (ae == 0)]
    assert set(one_part["layer"]) == {"species"}
    assert set(one_part["exposure"]) == set(DISORDER_EXPOSURES)
    presence_only = set(kinds["presence_only"]["feature"])
    abundance_only = set(kinds["abundance_only"]["feature"])
    assert len(presence_only) == len(abundance_only) == sum(SPLIT_EFFECTS.values())
    assert not presence_only & abundance_only
    assert not (presence_only | abundance_only) & set(kinds["ordinary"]["feature"])
    named = {"s__" + name for name in ("Ruminococcus_bromii", "Bifidobacterium_bifidum")}
    assert not named & (presence_only | abundance_only)  # named taxa keep their effects
    for exposure in DISORDER_EXPOSURES:
        for rows in (kinds["presence_only"], kinds["abundance_only"]):
            assert (rows["exposure"] == exposure).sum() >= 3, exposure
    # family_icc: one value per feature, in [0, 0.3], some clearly clustered, many barely.
    per_feature = truth.groupby(["layer", "feature"])["family_icc"]
    assert (per_feature.nunique() == 1).all()
    assert truth["family_icc"].between(0, 0.3).all()
    icc = per_feature.first()
    assert 0.08 < (icc >= 0.2).mean() < 0.3 and 0.2 < (icc < 0.05).mean() < 0.5


def case_control_contrasts(d: Path, exposure: str) -> pd.DataFrame:
    """Per species: z of the prevalence difference and t of the mean log abundance among
    present participants, cases vs controls.

    The median difference of the log abundance over all species is removed first: it is
    the shift that closure to 100 % gives every species in cases (not part of the truth).
    """
    meta = read_meta(d)
    sp = species_level(read_species(d))
    case_col, case_val, ctrl_col, ctrl_val = PLAN_EXPOSURES[exposure]
    cases = (meta[case_col] == case_val).to_numpy()
    controls = (meta[ctrl_col] == ctrl_val).to_numpy()
    x = sp.T.to_numpy()  # samples x species
    present = x > 0
    p1, p0 = present[cases].mean(axis=0), present[controls].mean(axis=0)
    pooled = present[cases | controls].mean(axis=0)
    z = (p1 - p0) / np.sqrt(pooled * (1 - pooled) * (1 / cases.sum() + 1 / controls.sum()))
    logx = np.log(np.where(present, x, np.nan))
    a, b = logx[cases], logx[controls]
    diff = np.nanmean(a, axis=0) - np.nanmean(b, axis=0)
    se = np.sqrt(np.nanvar(a, axis=0, ddof=1) / present[cases].sum(axis=0) + np.nanvar(b, axis=0, ddof=1) / present[controls].sum(axis=0))
    t = (diff - np.median(diff)) / se
    return pd.DataFrame({"z_prevalence": z, "t_present": t}, index=sp.index)


@pytest.mark.parametrize("exposure", WELL_POWERED)
def test_presence_only_and_abundance_only_effects(full: SimulatedStudy, exposure: str) -> None:
    """Presence-only effects change prevalence, not abundance when present; and vice versa."""
    truth = read_truth(full.out_dir)
    kinds = {k: v[v["exposure"] == exposure].set_index("feature") for k, v in species_kinds(truth).items()}
    stats = case_control_contrasts(full.out_dir, exposure)
    presence_only = kinds["presence_only"][kinds["presence_only"]["presence_effect"].abs() >= 0.8]
    abundance_only = kinds["abundance_only"][kinds["abundance_only"]["abundance_effect"].abs() >= 0.6]
    assert len(presence_only) >= 3 and len(abundance_only) >= 3
    p = stats.loc[presence_only.index]
    assert (np.sign(p["z_prevalence"]) == np.sign(presence_only["presence_effect"])).all(), p
    assert (p["z_prevalence"].abs() > 3).all(), p
    assert (p["t_present"].abs() < 3.5).all(), p
    a = stats.loc[abundance_only.index]
    assert (np.sign(a["t_present"]) == np.sign(abundance_only["abundance_effect"])).all(), a
    assert (a["t_present"].abs() > 3).all(), a
    assert (a["z_prevalence"].abs() < 3.5).all(), a
    # An ordinary planted depletion moves both (R. bromii is lower in depression).
    if exposure in ("MDD", "AnyDep"):
        bromii = stats.loc["s__Ruminococcus_bromii"]
        assert bromii["z_prevalence"] < 0 and bromii["t_present"] < -3, bromii


# ---------------------------------------------------------------------------- determinism
def test_deterministic(small: SimulatedStudy, tmp_path: Path) -> None:
    again = simulate_study(tmp_path / "again", seed=1, **SMALL)
    other = simulate_study(tmp_path / "other", seed=2, **SMALL)
    for f in FILES:
        assert (again.out_dir / f).read_bytes() == (small.out_dir / f).read_bytes(), f
    for f in ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv"):
        assert (other.out_dir / f).read_bytes() != (small.out_dir / f).read_bytes(), f
    assert again == SimulatedStudy(**{**small.__dict__, "out_dir": again.out_dir, "plan_path": again.plan_path})


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserInputError):
        simulate_study(tmp_path, participants=600, n_species=10)
    with pytest.raises(UserInputError):
        simulate_study(tmp_path, participants=600, n_species=60, n_pathways=0)
    with pytest.raises(UserInputError):
        simulate_study(tmp_path, participants=20, n_species=60, n_pathways=10)
