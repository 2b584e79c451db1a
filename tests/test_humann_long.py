"""HUMAnN merged tables and long (sample, feature, value) tables: read as streams, stored as every other table, and refused clearly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines
from reference_model import read_layer

from scalable_assoc.cli import main
from scalable_assoc.errors import DataError, PlanError
from scalable_assoc.io.ingest import ingest_table, layer_store
from scalable_assoc.io.store import open_store, read_block
from scalable_assoc.io.tables import detect_format, stream_abundance_table
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.simulate import simulate_study
from scalable_assoc.testing import logged_messages, write_plan

HUMANN = Path(__file__).parent / "data" / "humann"
PATHWAYS = HUMANN / "pathabundance_joined.tsv"


def _values(store) -> np.ndarray:
    return read_block(store.path, 0, store.n_features)


def _same_store(a, b) -> None:
    """The same IDs and bit-identical values (NaN where NaN)."""
    assert a.sample_ids == b.sample_ids and a.feature_ids == b.feature_ids
    x, y = _values(a), _values(b)
    assert x.dtype == y.dtype == np.float64
    np.testing.assert_array_equal(x.view(np.int64), y.view(np.int64))


# --------------------------------------------------------------------------------------
# HUMAnN
# --------------------------------------------------------------------------------------
def test_humann_pathways_community_rows_by_default_species_rows_when_stratified(tmp_path: Path) -> None:
    assert detect_format(PATHWAYS) == "humann"
    assert detect_format(HUMANN / "demo_genefamilies_head40.tsv") == "humann"
    with logged_messages() as messages:
        community = stream_abundance_table(PATHWAYS)
    # Suffixes go, so the IDs match metadata IDs; the mapping is kept and logged with examples.
    assert community.sample_ids == ("HUMAnN_test", "demo")
    assert community.renamed_samples == (("HUMAnN_test_Abundance", "HUMAnN_test"), ("demo_Abundance", "demo"))
    assert any("HUMAnN_test_Abundance -> HUMAnN_test" in m for m in messages)
    assert all("|" not in f for f in community.feature_ids) and len(community.feature_ids) == 27
    assert "PWY-7208: superpathway of pyrimidine nucleobases salvage" in community.feature_ids
    assert not any(f.startswith(("UNMAPPED", "UNINTEGRATED")) for f in community.feature_ids)
    assert len(community.notes) == 1 and "8 HUMAnN row(s) left out (UNINTEGRATED, UNMAPPED" in community.notes[0]

    stratified = stream_abundance_table(PATHWAYS, stratified=True)
    assert stratified.feature_ids and all("|g__" in f for f in stratified.feature_ids)
    assert not any(f.startswith("UNINTEGRATED") for f in stratified.feature_ids)

    # Values as written: a row's cells, in sample order (0 where humann_join_tables filled one in).
    values = np.hstack(list(community.blocks(5)))
    row = community.feature_ids.index("PWY-7208: superpathway of pyrimidine nucleobases salvage")
    np.testing.assert_array_equal(values[:, row], [2.4101467, 3.1634460239])

    genes = stream_abundance_table(HUMANN / "demo_genefamilies_head40.tsv")
    assert genes.sample_ids == ("demo",) and genes.renamed_samples == (("demo_Abundance-RPKs", "demo"),)
    joined = stream_abundance_table(HUMANN / "multi_sample_genefamilies.tsv", "humann", stratified=True)
    assert joined.sample_ids == ("sample1", "sample2") and joined.renamed_samples == () and joined.notes == ()


def test_humann_store_equals_the_same_values_as_a_wide_table_and_keeps_its_notes(tmp_path: Path) -> None:
    for stratified in (False, True):
        stream = stream_abundance_table(PATHWAYS, stratified=stratified)
        values = np.hstack(list(stream.blocks(4)))
        wide = tmp_path / f"wide-{stratified}.tsv"
        pd.DataFrame(values, index=pd.Index(stream.sample_ids, name="sample_id"), columns=stream.feature_ids).to_csv(
            wide, sep="\t", float_format="%.17g"
        )
        humann = ingest_table(PATHWAYS, tmp_path / f"humann-{stratified}.zarr", chunk_features=4, stratified=stratified)
        _same_store(humann, ingest_table(wide, tmp_path / f"wide-{stratified}.zarr", chunk_features=4))
        reopened = open_store(humann.path)
        assert reopened.notes == stream.notes and reopened.renamed_samples == stream.renamed_samples
        assert humann == reopened  # the store the writer returns is the one read back
        assert humann.notes and humann.renamed_samples
        # The manifest's layer entry: checked on a real run in test_run_on_a_humann_layer_records_its_notes_and_renamed_samples.


def test_humann_refusals(tmp_path: Path) -> None:
    both = tmp_path / "both.tsv"
    both.write_text("# Pathway\tS1_Abundance\tS1_Coverage\nPWY-1: x\t1\t0.5\n")
    with pytest.raises(DataError, match=r"duplicate sample \(after removing HUMAnN's suffixes such as _Abundance\) IDs.*S1"):
        stream_abundance_table(both)
    bad = tmp_path / "bad.tsv"
    bad.write_text("# Gene Family\tS1_Abundance-RPKs\tS2_Abundance-RPKs\nUNMAPPED\t1\t2\nUniRef90_A\t1\t-3\n")
    with pytest.raises(DataError, match=r"negative value\(s\); the first is -3.0 for feature 'UniRef90_A', sample 'S2'"):
        list(stream_abundance_table(bad).blocks(3))
    with pytest.raises(DataError, match=r"'stratified' applies to a HUMAnN table .* format 'wide'"):
        stream_abundance_table(_wide(tmp_path), stratified=True)


def _wide(tmp_path: Path) -> Path:
    path = tmp_path / "wide.tsv"
    path.write_text("sample_id\ta\tb\nS1\t1\t2\nS2\t3\t4\n")
    return path


# --------------------------------------------------------------------------------------
# Long tables
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def species(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A simulated MetaPhlAn species table and its values as a samples x species frame."""
    study = simulate_study(tmp_path_factory.mktemp("long"), participants=120, n_species=50, n_pathways=5, missing_abundance_fraction=0.01)
    return study.out_dir / "species.tsv", read_layer(study.out_dir / "species.tsv")


def _melt(frame: pd.DataFrame, names=("sample_id", "feature", "value")) -> pd.DataFrame:
    """Sample-major long rows (samples, then features, in the wide table's order) with most zero pairs dropped."""
    long = frame.rename_axis(index="s", columns="f").stack(future_stack=True).reset_index()
    long.columns = list(names)
    zero = long[names[2]].to_numpy() == 0
    # Keep a few zeros (a long table may list them) but drop the rest; NaN cells stay listed (an unknown value).
    # The first sample lists all its pairs, so features first appear in the wide table's order (the reader's order).
    drop = zero & (np.arange(len(long)) % 7 != 0) & (np.arange(len(long)) >= frame.shape[1])
    return long[~drop].reset_index(drop=True)


def test_long_table_gives_the_store_of_the_wide_table(tmp_path: Path, species: tuple[Path, pd.DataFrame]) -> None:
    table, frame = species
    assert (frame.to_numpy() == 0).any()
    reference = ingest_table(table, tmp_path / "metaphlan.zarr", chunk_features=8)
    long = _melt(frame)
    long.to_parquet(tmp_path / "long.parquet", index=False)
    long.to_csv(tmp_path / "long.tsv", sep="\t", index=False, float_format="%.17g")
    long.to_csv(tmp_path / "long.csv.gz", index=False, float_format="%.17g")
    for name in ("long.parquet", "long.tsv", "long.csv.gz"):
        assert detect_format(tmp_path / name) == "long"
        _same_store(reference, ingest_table(tmp_path / name, tmp_path / f"{name}.zarr", chunk_features=8))

    # missing: na -> the dropped pairs are unknown, the listed ones keep their values.
    unknown = _values(ingest_table(tmp_path / "long.parquet", tmp_path / "na.zarr", chunk_features=8, missing="na"))
    listed = np.zeros(frame.shape, dtype=bool)
    listed[frame.index.get_indexer(long["sample_id"]), frame.columns.get_indexer(long["feature"])] = True
    expected = np.where(listed, frame.to_numpy(dtype=np.float64), np.nan)
    np.testing.assert_array_equal(unknown, expected)
    assert np.isnan(unknown).sum() > frame.isna().to_numpy().sum()

    # Other column names, in another order, with an extra column.
    custom = _melt(frame, ("participant", "taxon", "relab"))
    custom.insert(0, "batch", 1)
    custom[["relab", "batch", "taxon", "participant"]].to_parquet(tmp_path / "custom.parquet", index=False)
    assert detect_format(tmp_path / "custom.parquet") == "parquet"
    store = ingest_table(
        tmp_path / "custom.parquet", tmp_path / "custom.zarr", "long", chunk_features=8, columns=("participant", "taxon", "relab")
    )
    _same_store(reference, store)


def test_long_table_refusals(tmp_path: Path) -> None:
    def written(text: str) -> Path:
        path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.tsv"
        path.write_text(text)
        return path

    duplicate = written("sample_id\tfeature\tvalue\nS1\ta\t1\nS2\ta\t2\nS1\tb\t3\nS1\ta\t4\n")
    with pytest.raises(DataError, match=rf"{duplicate}: 1 repeated \(sample, feature\) pair\(s\); the first is sample 'S1', feature 'a'"):
        stream_abundance_table(duplicate)
    with pytest.raises(DataError, match=r"1 non-numeric value\(s\) in column 'value'; the first is 'abc' for sample 'S2', feature 'a'"):
        stream_abundance_table(written("sample_id\tfeature\tvalue\nS1\ta\t1\nS2\ta\tabc\n"))
    with pytest.raises(DataError, match=r"1 negative value\(s\) in column 'value'; the first is -1.0 for sample 'S1', feature 'b'"):
        stream_abundance_table(written("sample_id\tfeature\tvalue\nS1\ta\t1\nS1\tb\t-1\n"))
    absent = written("sample\tfeature\tvalue\nS1\ta\t1\n")
    with pytest.raises(DataError, match=rf"{absent}: a long table needs the columns .* column 'sample_id' is not in it"):
        stream_abundance_table(absent, "long")
    with pytest.raises(DataError, match=r"1 sample ID\(s\) are empty"):
        stream_abundance_table(written("sample_id\tfeature\tvalue\nS1\ta\t1\n\tb\t2\n"), "long")
    # Empty and NA values are missing (NaN), as in every reader.
    stream = stream_abundance_table(written("sample_id\tfeature\tvalue\nS1\ta\t\nS2\ta\tNA\nS2\tb\t2\n"))
    np.testing.assert_array_equal(np.hstack(list(stream.blocks(1))), [[np.nan, 0.0], [np.nan, 2.0]])


def test_bad_long_layer_exits_2_naming_the_file_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = simulate_study(tmp_path / "study", participants=300, n_species=50, n_pathways=10)
    folder = study.out_dir
    long = _melt(read_layer(folder / "pathways.tsv").fillna(0.0), ("participant", "pathway", "abundance"))
    long.loc[5, "abundance"] = -2.0
    long.to_csv(folder / "pathways_long.tsv", sep="\t", index=False)
    plan = (
        (folder / "plan.yaml")
        .read_text()
        .replace(
            "    pathways: pathways.tsv\n",
            "    pathways: {path: pathways_long.tsv, format: long, columns: {sample: participant, feature: pathway, value: abundance}}\n",
        )
    )
    (folder / "plan.yaml").write_text(plan + "min_cases: 3\nanalyses: [{exposures: [MDD], adjustments: [base], layers: [pathways]}]\n")
    code = main(["run", str(folder / "plan.yaml"), "--out", str(folder / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert f"{folder / 'pathways_long.tsv'}: 1 negative value(s) in column 'abundance'; the first is -2.0" in lines[0]


# --------------------------------------------------------------------------------------
# Plan keys and the stores they select
# --------------------------------------------------------------------------------------
def _plan(folder: Path, layer: dict) -> Path:
    (folder / "m.tsv").write_text("sample_id\tx\nS1\t1\n")
    return write_plan(
        folder,
        {
            "data": {"metadata": "m.tsv", "layers": {"L": {"path": "t.tsv", **layer}}},
            "exposures": {"x": {"column": "x"}},
            "adjustments": {"none": []},
        },
    )


@pytest.mark.parametrize(
    ("layer", "key"),
    [
        ({"format": "wide", "stratified": True}, "data.layers.L.stratified"),
        ({"format": "humann", "missing": "na"}, "data.layers.L.missing"),
        ({"columns": {"sample": "s"}}, "data.layers.L.columns"),
        ({"format": "long", "columns": {"sample": "s", "sample_id": "x"}}, "data.layers.L.columns.sample_id"),
        ({"format": "long", "missing": "unknown"}, "data.layers.L.missing"),
        ({"format": "humann", "stratified": "yes"}, "data.layers.L.stratified"),
    ],
)
def test_reader_keys_are_refused_for_another_format(tmp_path: Path, layer: dict, key: str) -> None:
    with pytest.raises(PlanError, match=key.replace(".", r"\.")):
        load_plan(_plan(tmp_path, layer))


def test_reader_keys_change_rows_hash_and_the_cached_store(tmp_path: Path) -> None:
    default = load_plan(_plan(tmp_path, {}))
    assert default.layers[0].read_options() == {}
    hashes = {default.rows_hash()}
    contents = {default.content_hash()}
    for layer in (
        {"format": "humann", "stratified": True},
        {"format": "long", "missing": "na"},
        {"format": "long", "columns": {"value": "v"}},
    ):
        plan = load_plan(_plan(tmp_path, layer))
        hashes.add(plan.rows_hash())
        contents.add(plan.content_hash())
    assert len(hashes) == len(contents) == 4
    # Keys at their defaults leave the hashes as they were before the keys existed (chunks of earlier runs are reused).
    assert (
        load_plan(_plan(tmp_path, {"format": "long", "missing": "zero"})).rows_hash()
        == load_plan(_plan(tmp_path, {"format": "long"})).rows_hash()
    )
    # The converted store's cache name says how the table was read: stratified rows never reuse the community rows' store.
    community, _ = layer_store(PATHWAYS, "auto", "species", tmp_path / "cache", "L", None)
    per_species, _ = layer_store(PATHWAYS, "auto", "species", tmp_path / "cache", "L", None, stratified=True)
    assert community.path != per_species.path and community.feature_ids != per_species.feature_ids
    assert layer_store(PATHWAYS, "auto", "species", tmp_path / "cache", "L", None)[0].path == community.path


# --------------------------------------------------------------------------------------
# Sample-ID mismatches: the likely cause
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("layer_ids", "metadata_ids", "cause"),
    [
        (
            ["S1_Abundance", "S11_Abundance", "S2_Abundance"],
            ["S1", "S11", "S2"],
            r"the IDs of layer 'L' end in '_Abundance' .* \(e\.g\. 'S1_Abundance' vs 'S1'\)",
        ),
        (
            ["a", "b", "c"],
            ["a_profile", "b_profile", "c_profile"],
            r"the IDs of the metadata end in '_profile' .* \(e\.g\. 'a_profile' vs 'a'\)",
        ),
        (["a.kraken", "b.kraken"], ["a", "b"], r"the IDs of layer 'L' end in '\.kraken'"),
        (
            ["s1", "s2"],
            ["S1", "S2"],
            r"upper/lower case: 2 of the first 2 unmatched IDs of layer 'L' .* ignoring case \(e\.g\. 's1' vs 'S1'\)",
        ),
        (["007", "8"], ["7", "8"], r"leading zeros: .* \(e\.g\. '007' vs '7'\)"),
        (["S1 ", "S2"], ["S1", "S2"], r"white space around the IDs: .* \(e\.g\. 'S1 ' vs 'S1'\)"),
    ],
)
def test_sample_mismatch_names_the_likely_cause(layer_ids: list[str], metadata_ids: list[str], cause: str) -> None:
    from scalable_assoc.io.metadata import reconcile_samples

    metadata = pd.DataFrame({"x": range(len(metadata_ids))}, index=pd.Index(metadata_ids))
    with pytest.raises(DataError, match=r"sample IDs do not match: .*e\.g\. .*Likely cause: " + cause):
        reconcile_samples("L", Path("t.tsv"), tuple(layer_ids), metadata, Path("m.tsv"), False)


def test_sample_mismatch_without_a_pattern_names_no_cause() -> None:
    from scalable_assoc.io.metadata import reconcile_samples

    # Numeric IDs: '294' is not sample '29' with a suffix '4'.
    metadata = pd.DataFrame({"x": range(293)}, index=pd.Index([str(i) for i in range(1, 294)]))
    with pytest.raises(DataError) as refused:
        reconcile_samples("L", Path("t.tsv"), tuple(str(i) for i in range(1, 297)), metadata, Path("m.tsv"), False)
    assert "Likely cause" not in str(refused.value) and "294, 295, 296" in str(refused.value)


def test_run_on_a_humann_layer_records_its_notes_and_renamed_samples(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A study's pathways as HUMAnN writes them (features as rows, suffixed samples, UNMAPPED) run, and the manifest says what was done."""
    import json

    study = simulate_study(tmp_path / "study", participants=300, n_species=50, n_pathways=10)
    folder = study.out_dir
    pathways = read_layer(folder / "pathways.tsv").fillna(0.0)
    table = pathways.T
    table.columns = [f"{s}_Abundance" for s in table.columns]
    table.loc["UNMAPPED"] = 1.0
    table.index.name = "# Pathway"
    table.to_csv(folder / "pathabundance.tsv", sep="\t", float_format="%.17g")
    plan = (folder / "plan.yaml").read_text().replace("    pathways: pathways.tsv\n", "    pathways: pathabundance.tsv\n")
    (folder / "plan.yaml").write_text(plan + "min_cases: 3\nanalyses: [{exposures: [MDD], adjustments: [base], layers: [pathways]}]\n")
    code = main(["run", str(folder / "plan.yaml"), "--out", str(folder / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "HUMAnN sample column(s) renamed to match metadata IDs, e.g. LL000001_Abundance -> LL000001" in err
    entry = json.loads((folder / "out" / "manifest.json").read_text())["layers"]["pathways"]
    assert entry["notes"] == [
        "1 HUMAnN row(s) left out (UNMAPPED: reads or abundance HUMAnN could not assign to a gene family or pathway, not features)"
    ]
    assert len(entry["renamed_samples"]) == 300 and entry["renamed_samples"]["LL000001_Abundance"] == "LL000001"
    assert entry["features_total"] == pathways.shape[1]
