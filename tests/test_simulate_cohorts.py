"""Fast tests of scalable_assoc.simulate.simulate_cohorts (several biobanks, one truth)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import UserInputError
from scalable_assoc.io.tables import read_abundance_table
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.simulate import (
    COHORT_SPELLINGS,
    PLAN_YAML,
    SimulatedCohorts,
    simulate_cohorts,
    simulate_study,
)

SMALL = dict(cohorts=3, participants=900, n_species=120, n_pathways=40)
NAMES = ["cohort_1", "cohort_2", "cohort_3"]
FILES = ("metadata.tsv", "species.tsv", "pathways.tsv", "gbm.tsv", "truth.tsv", "plan.yaml", "features.tsv")
TRUTH_COLUMNS = [
    "cohort",
    "layer",
    "feature",
    "exposure",
    "effect",
    "presence_effect",
    "abundance_effect",
    "family_icc",
    "heterogeneous",
    "tau",
    "n_cohorts",
    "cohort_feature",
]


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> SimulatedCohorts:
    return simulate_cohorts(tmp_path_factory.mktemp("cohorts") / "consortium", seed=5, **SMALL)


@pytest.fixture(scope="module")
def truth(sim: SimulatedCohorts) -> pd.DataFrame:
    return pd.read_csv(sim.truth_path, sep="\t")


def species_rows(path: Path) -> list[str]:
    """Clade names of the ``s__`` rows of a merged table, as written."""
    with open(path, encoding="utf-8") as fh:
        fh.readline()
        fh.readline()
        clades = [line.split("\t", 1)[0] for line in fh]
    return [c for c in clades if c.rsplit("|", 1)[-1].startswith("s__")]


def species_name(clade: str) -> str:
    return clade.rsplit("|", 1)[-1]


# ---------------------------------------------------------------------------- layout
def test_folders_and_files(sim: SimulatedCohorts) -> None:
    assert list(sim.studies) == NAMES
    assert sim.truth_path == sim.out_dir / "truth.tsv" and sim.truth_path.is_file()
    assert sim.mapping_path == sim.out_dir / "feature_mapping.tsv" and sim.mapping_path.is_file()
    assert sim.spellings == dict(zip(NAMES, COHORT_SPELLINGS, strict=True))
    for name, study in sim.studies.items():
        assert study.out_dir == sim.out_dir / name
        for f in FILES:
            assert (study.out_dir / f).is_file(), (name, f)
        plan = yaml.safe_load(study.plan_path.read_text())
        reference = yaml.safe_load(PLAN_YAML)
        assert plan["name"] == f"lifelines-internalizing-{name}"
        assert {k: v for k, v in plan.items() if k not in ("name", "min_cases", "features")} == {
            k: v for k, v in reference.items() if k != "name"
        }
        assert plan["features"] == "features.tsv" and sim.feature_lists[name] == study.out_dir / "features.tsv"
        assert load_plan(study.plan_path).features == study.out_dir / "features.tsv"  # valid as written


def test_every_cohort_gets_the_same_feature_list(sim: SimulatedCohorts, truth: pd.DataFrame) -> None:
    """One shared list: canonical species plus the renamed spelling of each renamed species."""
    lists = [path.read_bytes() for path in sim.feature_lists.values()]
    assert all(content == lists[0] for content in lists)
    table = pd.read_csv(sim.feature_lists["cohort_1"], sep="\t")
    assert list(table.columns) == ["layer", "feature"] and not table.duplicated().any()
    assert set(table["layer"]) == {"species", "pathways", "gbm"}
    species = set(table.loc[table["layer"] == "species", "feature"])
    for old, canonical in sim.renamed.items():
        assert (old in species) == (canonical in species)
    dropped = {f for names in sim.dropped.values() for f in names}
    assert dropped and dropped <= species  # a cohort's missing species stay on the list
    shared = truth[truth["cohort"] == "shared"]
    assert set(table.loc[table["layer"] != "species", "feature"]) <= set(shared["feature"])


def test_sizes_differ_and_ids_do_not_collide(sim: SimulatedCohorts) -> None:
    assert sim.sizes == {"cohort_1": 900, "cohort_2": 450, "cohort_3": 300}
    seen: set[str] = set()
    families: set[str] = set()
    for name, study in sim.studies.items():
        meta = pd.read_csv(study.out_dir / "metadata.tsv", sep="\t", dtype=str)
        assert len(meta) == study.n_participants
        assert meta["sample_id"].str.startswith(f"C{name[-1]}S").all()
        assert not seen & set(meta["sample_id"])
        assert not families & set(meta["family_id"])
        seen |= set(meta["sample_id"])
        families |= set(meta["family_id"])


def test_too_small_or_single_cohort_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="at least 300"):
        simulate_cohorts(tmp_path / "a", cohorts=3, participants=600, n_species=60, n_pathways=5)
    with pytest.raises(UserInputError, match="at least 2"):
        simulate_cohorts(tmp_path / "b", cohorts=1, participants=600, n_species=60, n_pathways=5)


# ---------------------------------------------------------------------------- spellings
def test_species_spellings(sim: SimulatedCohorts) -> None:
    d = {name: s.out_dir / "species.tsv" for name, s in sim.studies.items()}
    first = species_rows(d["cohort_1"])
    assert all(c.startswith("k__") and "|g__" in c for c in first)
    canonical = {species_name(c) for c in first}

    # Cohort 2: MetaPhlAn 3 style, clade names only, same species minus the dropped ones.
    assert d["cohort_2"].read_text().startswith("#mpa_v30")
    second = species_rows(d["cohort_2"])
    assert all("|" not in c for c in second)
    assert set(second) == canonical - set(sim.dropped["cohort_2"])
    table = read_abundance_table(d["cohort_2"])  # format auto, rank species
    assert set(table.feature_ids) == set(second)
    np.testing.assert_allclose(table.values.sum(axis=1), 100.0, rtol=1e-4)

    # Cohort 3: lineages, a few genera renamed; the mapping names them back.
    mapping = pd.read_csv(sim.mapping_path, sep="\t", dtype=str)
    assert list(mapping.columns) == ["from", "to"]
    assert dict(zip(mapping["from"], mapping["to"], strict=True)) == sim.renamed
    assert "s__Bacteroides_vulgatus" in sim.renamed
    third = [species_name(c) for c in species_rows(d["cohort_3"])]
    renamed = [s for s in third if s not in canonical]
    assert sorted(renamed) == sorted(sim.renamed)
    assert set(sim.renamed.values()) <= canonical
    assert {sim.renamed.get(s, s) for s in third} == canonical - set(sim.dropped["cohort_3"])
    assert (
        "k__Bacteria|p__Bacteroidetes|c__Bacteroidia|o__Bacteroidales|f__Bacteroidaceae|"
        "g__Bacteroides|s__Bacteroides_vulgatus" in species_rows(d["cohort_3"])
    )


def test_dropped_species(sim: SimulatedCohorts, truth: pd.DataFrame) -> None:
    assert sim.dropped["cohort_1"] == ()
    dropped2, dropped3 = set(sim.dropped["cohort_2"]), set(sim.dropped["cohort_3"])
    assert len(dropped2) == len(dropped3) == 4 and not dropped2 & dropped3
    shared = truth[(truth["cohort"] == "shared") & (truth["layer"] == "species")]
    for name, lost in (("cohort_2", dropped2), ("cohort_3", dropped3)):
        own = pd.read_csv(sim.studies[name].out_dir / "truth.tsv", sep="\t")
        assert not lost & set(own["feature"])
        assert not lost & set(truth.loc[truth["cohort"] == name, "feature"])
        assert lost <= set(truth.loc[truth["cohort"] == "cohort_1", "feature"])
        assert (shared.loc[shared["feature"].isin(lost), "n_cohorts"] == 2).all()
    assert (shared.loc[~shared["feature"].isin(dropped2 | dropped3), "n_cohorts"] == 3).all()


# ---------------------------------------------------------------------------- truth
def test_truth_layout(sim: SimulatedCohorts, truth: pd.DataFrame) -> None:
    assert list(truth.columns) == TRUTH_COLUMNS
    assert list(truth["cohort"].unique()) == ["shared", *NAMES]
    shared = truth[truth["cohort"] == "shared"]
    assert (shared["feature"] == shared["cohort_feature"]).all()
    for name, study in sim.studies.items():
        own = pd.read_csv(study.out_dir / "truth.tsv", sep="\t")
        rows = truth[truth["cohort"] == name].reset_index(drop=True)
        pd.testing.assert_frame_equal(
            rows[["layer", "cohort_feature", "exposure", "effect", "presence_effect", "abundance_effect", "family_icc"]].rename(
                columns={"cohort_feature": "feature"}
            ),
            own,
            check_exact=True,
        )
        assert study.n_planted == int((own["effect"] != 0).sum())
    third = truth[truth["cohort"] == "cohort_3"]
    moved = third[third["feature"] != third["cohort_feature"]]
    assert set(moved["cohort_feature"]) == set(sim.renamed)
    assert (moved["feature"] == moved["cohort_feature"].map(sim.renamed)).all()


def test_shared_effects_and_heterogeneity(sim: SimulatedCohorts, truth: pd.DataFrame) -> None:
    keys = ["layer", "feature", "exposure"]
    wide = truth.pivot_table(index=keys, columns="cohort", values="effect")
    shared = truth[truth["cohort"] == "shared"].set_index(keys)
    planted = shared[(shared["effect"] != 0) & (shared["n_cohorts"] == 3)]
    homogeneous = planted[planted["heterogeneous"] == 0]
    heterogeneous = planted[planted["heterogeneous"] == 1]
    assert len(homogeneous) > 50 and len(heterogeneous) > 5
    assert sim.n_heterogeneous > 0
    # A homogeneous effect has the shared sign in every cohort: only the case mix
    # differs, which can leave a comorbidity-borne effect at 0 in a small cohort
    # (e.g. an MDD-term feature for GAD when no GAD case there has MDD).
    signs = np.sign(wide.loc[homogeneous.index, NAMES].to_numpy())
    expected = np.sign(homogeneous["effect"].to_numpy())[:, None]
    assert ((signs == expected) | (signs == 0)).all()
    assert (signs == expected).mean() > 0.95
    # Single-term homogeneous effects are identical everywhere, e.g. E. lenta with SSRIs.
    lenta = wide.loc[("species", "s__Eggerthella_lenta", "ssri"), ["shared", *NAMES]]
    assert (lenta == 0.9).all()
    # Heterogeneous effects differ between cohorts, by about tau.
    spread = wide.loc[heterogeneous.index, NAMES].std(axis=1)
    assert (spread > 0).all()
    assert (heterogeneous["tau"] > 0).all() and (homogeneous["tau"] == 0).all()
    assert 0.2 < float(np.median(spread / heterogeneous["tau"])) < 3.0
    # Nulls stay null everywhere.
    nulls = shared[(shared["effect"] == 0) & (shared["n_cohorts"] == 3)].index
    assert (wide.loc[nulls, NAMES] == 0).all().all()


def test_batch_shift(sim: SimulatedCohorts) -> None:
    """Module log abundances (not compositional) are shifted per cohort and feature."""
    means = {}
    for name in ("cohort_1", "cohort_2"):
        gbm = pd.read_csv(sim.studies[name].out_dir / "gbm.tsv", sep="\t", index_col=0)
        means[name] = np.log(gbm.where(gbm > 0)).median()
    shift = means["cohort_1"] - means["cohort_2"]
    assert 0.25 < float(shift.std()) < 1.0  # batch SD 0.5 per cohort -> ~0.7


# ---------------------------------------------------------------------------- reproducibility
def test_same_seed_same_bytes(sim: SimulatedCohorts, tmp_path: Path) -> None:
    again = simulate_cohorts(tmp_path / "again", seed=5, **SMALL)
    files = sorted(p.relative_to(sim.out_dir) for p in sim.out_dir.rglob("*") if p.is_file() and "results" not in p.parts)
    assert files == sorted(p.relative_to(again.out_dir) for p in again.out_dir.rglob("*") if p.is_file())
    for rel in files:
        assert (sim.out_dir / rel).read_bytes() == (again.out_dir / rel).read_bytes(), rel
    other = simulate_cohorts(tmp_path / "other", seed=6, **SMALL)
    assert (other.out_dir / "truth.tsv").read_bytes() != sim.truth_path.read_bytes()


def test_single_study_unchanged_by_cohort_code(tmp_path: Path) -> None:
    """simulate_study still writes the plain plan and LL / F ids."""
    study = simulate_study(tmp_path / "one", participants=300, n_species=60, n_pathways=5)
    assert study.plan_path.read_text() == PLAN_YAML
    meta = pd.read_csv(study.out_dir / "metadata.tsv", sep="\t", dtype=str)
    assert meta["sample_id"].iloc[0] == "LL000001" and meta["family_id"].iloc[0] == "F00001"


# ---------------------------------------------------------------------------- end to end
def test_clade_name_cohort_runs_end_to_end(sim: SimulatedCohorts, tmp_path: Path) -> None:
    study = sim.studies["cohort_2"]  # MetaPhlAn 3 clade names
    summary = run_study(study.plan_path, tmp_path / "results", workers=1)
    assert summary is not None
    results = pd.read_csv(tmp_path / "results" / "all_results.tsv", sep="\t")
    species = set(results.loc[results["layer"] == "species", "feature"])
    assert species and all(f.startswith("s__") and "|" not in f for f in species)
    assert species <= {species_name(c) for c in species_rows(study.out_dir / "species.tsv")}
    assert {"pathways", "gbm"} <= set(results["layer"])
