"""``inspect_table`` and ``scalable-assoc inspect``: every format, compared with the table read whole by pandas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

import scalable_assoc
from scalable_assoc.cli import main
from scalable_assoc.errors import DataError
from scalable_assoc.io.inspect import classify_scale, inspect_table
from scalable_assoc.io.store import open_store

DATA = Path(__file__).parent / "data"
QUANTILES = {"min": 0.0, "25%": 0.25, "50%": 0.5, "75%": 0.75, "max": 1.0}


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("inspect") / "study"
    scalable_assoc.simulate_study(folder, participants=200, n_species=50, n_pathways=20, seed=1)
    return folder


def _species_frame(path: Path) -> pd.DataFrame:
    """The species rows of a MetaPhlAn table, read whole: features x samples."""
    table = pd.read_csv(path, sep="\t", skiprows=1, index_col=0)  # line 1: the '#mpa_...' database line
    last = table.index.str.rsplit("|", n=1).str[-1]
    return table[last.str.startswith("s__")]


def _prevalence_quantiles(values: np.ndarray) -> dict[str, float]:
    """values: samples x features, no missing values."""
    prevalence = (values > 0).mean(axis=0)
    return {name: float(np.quantile(prevalence, q)) for name, q in QUANTILES.items()}


def test_metaphlan_table_is_percent_with_clades_counted_per_rank(study: Path) -> None:
    path = study / "species.tsv"
    summary = inspect_table(path)
    assert (summary.format, summary.scale, summary.rank) == ("metaphlan", "percent", "species")
    whole = pd.read_csv(path, sep="\t", skiprows=1, index_col=0)
    ends = pd.Series(whole.index.str.rsplit("|", n=1).str[-1])
    expected = {rank: int(ends.str.startswith(prefix).sum()) for rank, prefix in scalable_assoc.plan.spec.RANK_PREFIXES.items()}
    assert summary.features_per_rank == {rank: count for rank, count in expected.items() if count}
    species = _species_frame(path)
    assert (summary.n_samples, summary.n_features) == (species.shape[1], species.shape[0]) == (200, 50)
    assert summary.prevalence == pytest.approx(_prevalence_quantiles(species.to_numpy().T))
    assert summary.value_max == pytest.approx(species.to_numpy().max())
    assert summary.sample_totals["median"] == pytest.approx(float(np.median(species.sum(axis=0))))
    assert summary.n_missing == 0
    assert summary.feature_examples == tuple(species.index.str.rsplit("|", n=1).str[-1][:3])
    entry = yaml.safe_load(summary.plan_snippet)
    assert entry == {"species": {"path": str(path), "format": "metaphlan", "rank": "species"}}

    genus = inspect_table(path, rank="genus")
    assert genus.n_features == summary.features_per_rank["genus"] and genus.rank == "genus"
    assert yaml.safe_load(genus.plan_snippet)["species"]["rank"] == "genus"


def test_counts_fraction_parquet_and_long_tables(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    counts = pd.DataFrame(
        rng.poisson(3.0, size=(30, 12)),
        index=pd.Index([f"S{i}" for i in range(30)], name="sample_id"),
        columns=[f"f{j}" for j in range(12)],
    )
    counts.to_csv(tmp_path / "counts.tsv", sep="\t")
    summary = inspect_table(tmp_path / "counts.tsv")
    assert (summary.format, summary.scale, summary.n_samples, summary.n_features) == ("wide", "counts", 30, 12)
    assert summary.prevalence == pytest.approx(_prevalence_quantiles(counts.to_numpy()))
    assert summary.value_min == counts.to_numpy().min() and summary.value_max == counts.to_numpy().max()

    fractions = counts.div(counts.sum(axis=1), axis=0)
    fractions.iloc[0, 0] = np.nan
    fractions.to_csv(tmp_path / "fractions.csv")
    summary = inspect_table(tmp_path / "fractions.csv")
    assert (summary.scale, summary.n_missing) == ("fraction", 1)

    fractions.to_parquet(tmp_path / "fractions.parquet")
    parquet = inspect_table(tmp_path / "fractions.parquet")
    assert (parquet.format, parquet.scale, parquet.n_missing) == ("parquet", "fraction", 1)
    assert parquet.prevalence == summary.prevalence

    long = counts.stack().rename("value").reset_index().rename(columns={"level_1": "feature"})
    long = long[long["value"] > 0]
    long.to_csv(tmp_path / "long.tsv", sep="\t", index=False)
    summary = inspect_table(tmp_path / "long.tsv")
    assert (summary.format, summary.scale, summary.n_missing) == ("long", "counts", 0)
    assert summary.prevalence == pytest.approx(_prevalence_quantiles(counts.to_numpy()))
    as_missing = inspect_table(tmp_path / "long.tsv", missing="na")
    assert as_missing.n_missing == int((counts.to_numpy() == 0).sum())
    assert yaml.safe_load(as_missing.plan_snippet)["long"]["missing"] == "na"


def test_committed_humann_biom_and_h5ad_fixtures() -> None:
    humann = inspect_table(DATA / "humann" / "pathabundance_joined.tsv")
    names = pd.read_csv(DATA / "humann" / "pathabundance_joined.tsv", sep="\t", usecols=[0], quoting=3).iloc[:, 0].astype(str)
    special = names.str.split("|").str[0].str.split(":").str[0].str.strip().isin(["UNMAPPED", "UNINTEGRATED", "UNGROUPED"])
    stratified = names.str.contains("|", regex=False)
    assert humann.format == "humann"
    assert humann.features_per_rank == {"community": int((~special & ~stratified).sum()), "stratified": int((~special & stratified).sum())}
    assert humann.n_features == humann.features_per_rank["community"] and humann.sample_examples == ("HUMAnN_test", "demo")
    assert humann.notes and "UNMAPPED" in humann.notes[0]
    assert yaml.safe_load(humann.plan_snippet)["pathabundance_joined"]["stratified"] is False
    per_species = inspect_table(DATA / "humann" / "pathabundance_joined.tsv", stratified=True)
    assert per_species.n_features == humann.features_per_rank["stratified"]

    for name in ("test.biom", "test_json.biom"):
        biom = inspect_table(DATA / "biom" / name)
        # 5 Greengenes OTUs: four end at a genus, one at a species (tests/data/biom/README.md)
        assert (biom.format, biom.scale, biom.n_samples, biom.n_features) == ("biom", "counts", 6, 1)
        assert biom.features_per_rank == {"genus": 4, "species": 1}

    dense = inspect_table(DATA / "h5ad" / "counts_dense.h5ad")
    for name in ("counts_csr.h5ad", "counts_csc.h5ad"):
        other = inspect_table(DATA / "h5ad" / name)
        assert (other.format, other.n_samples, other.n_features) == ("h5ad", 5, 4)
        assert (other.prevalence, other.sample_totals, other.scale) == (dense.prevalence, dense.sample_totals, dense.scale)


def test_a_store_made_by_ingest_reads_as_its_table(study: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "species.zarr"
    assert main(["ingest", str(study / "species.tsv"), "--out", str(store)]) == 0
    capsys.readouterr()
    table, stored = inspect_table(study / "species.tsv"), inspect_table(store)
    assert (stored.format, stored.rank, stored.features_per_rank) == ("zarr", None, {})
    for key in ("n_samples", "n_features", "n_missing", "prevalence", "value_min", "value_max", "scale", "feature_examples"):
        assert getattr(stored, key) == getattr(table, key), key
    assert stored.sample_totals == pytest.approx(table.sample_totals)
    assert yaml.safe_load(stored.plan_snippet) == {"species": {"path": str(store), "format": "zarr"}}
    # A store written before the stored summaries existed: the same from its chunks.
    older = tmp_path / "older.zarr"
    shutil.copytree(store, older)
    for name in ("feature_nonzero", "feature_observed", "feature_min_positive", "sample_totals"):
        shutil.rmtree(older / name)
    assert open_store(older).stored_feature_summary(0, 1) is None
    again = inspect_table(older)
    assert (again.prevalence, again.n_missing, again.scale) == (stored.prevalence, stored.n_missing, stored.scale)
    assert again.sample_totals == pytest.approx(stored.sample_totals)


def test_cli_text_and_json(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study / "species.tsv"
    assert main(["inspect", str(path)]) == 0
    text = capsys.readouterr().out
    assert "200 samples x 50 features at rank species" in text and "scale: percent" in text and "format: metaphlan" in text
    assert main(["inspect", str(path), "--rank", "genus", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["format"] == "metaphlan" and parsed["rank"] == "genus" and parsed["scale"] == "percent"
    assert parsed["n_features"] == parsed["features_per_rank"]["genus"] and isinstance(parsed["sample_examples"], list)


def test_bad_input_exits_2_naming_the_file(tmp_path: Path, study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nothing.tsv"
    assert main(["inspect", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    assert main(["inspect", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err
    assert main(["inspect", str(study / "species.tsv"), "--format", "humann"]) == 2
    assert "species.tsv" in capsys.readouterr().err
    assert main(["inspect", str(study / "species.tsv"), "--rank", "strain"]) == 2
    assert "species.tsv" in capsys.readouterr().err
    transformed = tmp_path / "clr.tsv"
    pd.DataFrame({"sample_id": ["a", "b"], "f1": [-0.5, 0.5]}).to_csv(transformed, sep="\t", index=False)
    assert main(["inspect", str(transformed)]) == 2
    err = capsys.readouterr().err
    assert str(transformed) in err and "already transformed" in err
    with pytest.raises(DataError, match="not a table format"):
        inspect_table(study / "species.tsv", format="excel")


def test_scale_rules() -> None:
    assert classify_scale(-1.0, False, np.array([0.0]))[0] == "transformed/other"
    assert classify_scale(0.0, True, np.array([100.0, 100.0]))[0] == "counts"
    assert classify_scale(0.0, False, np.array([99.99, 80.0, 100.0]))[0] == "percent"
    assert classify_scale(0.0, False, np.array([1.0, 0.9]))[0] == "fraction"
    assert classify_scale(0.0, False, np.array([1e6, 1e6]))[0] == "transformed/other"
    assert classify_scale(None, True, np.zeros(0))[0] == "transformed/other"
