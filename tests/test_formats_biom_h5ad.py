"""BIOM (HDF5 and JSON) and AnnData .h5ad tables: files written by biom-format and anndata themselves give the store
the MetaPhlAn table of the same data gives, bit for bit; bad files are refused naming the file (exit 2).

biom-format is a dependency of the package; anndata is not (it caps pandas below 3, see io/h5ad_table.py), so the
tests that write .h5ad files with anndata are skipped without it, and committed fixtures written by anndata
(tests/data/h5ad, with the script that wrote them) are read in every environment.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines
from table_files import store_content, write_biom

from scalable_assoc.cli import main
from scalable_assoc.errors import DataError
from scalable_assoc.io.ingest import ingest_table
from scalable_assoc.io.tables import detect_format, read_abundance_table, stream_abundance_table
from scalable_assoc.simulate import simulate_study

DATA = Path(__file__).parent / "data"
#: The values of tests/data/h5ad/*.h5ad (tests/data/h5ad/make_fixtures.py).
H5AD_VALUES = np.array([[0.0, 1.5, 0.0, 2.0], [3.25, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0], [7.0, 0.5, 1.0, 0.0], [0.0, 2.0, 4.0, 8.0]])


@pytest.fixture(scope="module")
def metaphlan(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A simulated MetaPhlAn merged table (clades x samples), values rounded to 6 decimals and written back.

    biom-format's JSON writer keeps 6 decimals (``%f``), so the shared values are ones that text holds exactly.
    """
    study = simulate_study(tmp_path_factory.mktemp("biom_study"), participants=120, n_species=50, n_pathways=10, seed=5)
    path = study.out_dir / "species.tsv"
    comment = path.read_text().splitlines()[0]
    frame = pd.read_csv(path, sep="\t", skiprows=1, index_col=0).round(6)
    with path.open("w") as handle:
        handle.write(comment + "\n")
        frame.to_csv(handle, sep="\t")
    frame.attrs["path"] = path
    return frame


def _write_biom(frame: pd.DataFrame, path: Path, hdf5: bool, taxonomy: bool = True) -> Path:
    lineages = [clade.split("|") for clade in frame.index] if taxonomy else None
    return write_biom(path, frame.to_numpy(), list(frame.index), list(frame.columns), lineages, hdf5)


def _assert_same_store(a: Path, b: Path) -> None:
    first, second = store_content(a), store_content(b)
    assert first.keys() == second.keys()
    for key, value in first.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(second[key], value, err_msg=key, strict=True)
        else:
            assert second[key] == value, key


def _species_wide(frame: pd.DataFrame) -> pd.DataFrame:
    """The species rows of a MetaPhlAn table as samples x species, named by their last level (as the MetaPhlAn reader names them)."""
    species = frame.loc[[c for c in frame.index if c.rsplit("|", 1)[-1].startswith("s__")]]
    return species.set_axis([c.rsplit("|", 1)[-1] for c in species.index], axis=0).T


def test_biom_hdf5_and_json_give_the_metaphlan_store_bit_for_bit(tmp_path: Path, metaphlan: pd.DataFrame) -> None:
    source = metaphlan.attrs["path"]
    hdf5 = _write_biom(metaphlan, tmp_path / "species.biom", hdf5=True)
    text = _write_biom(metaphlan, tmp_path / "species_json.biom", hdf5=False)
    assert detect_format(hdf5) == detect_format(text) == "biom"
    for rank in ("species", "genus"):
        expected = ingest_table(source, tmp_path / f"metaphlan-{rank}.zarr", rank=rank, chunk_features=9).path
        for path in (hdf5, text):
            store = ingest_table(path, tmp_path / f"{path.stem}-{rank}.zarr", rank=rank, chunk_features=9)
            assert store.feature_ids[0].startswith(rank[0] + "__")
            _assert_same_store(expected, store.path)


def test_biom_hdf5_streams_blocks_without_biom_format_loading_it(tmp_path: Path, metaphlan: pd.DataFrame, monkeypatch) -> None:
    """An HDF5 BIOM is read a block of observations at a time with h5py; biom-format's whole-table load gives the same blocks."""
    import biom

    path = _write_biom(metaphlan, tmp_path / "species.biom", hdf5=True)
    whole = stream_abundance_table(path, rank="genus")
    expected = [block.copy() for block in whole.blocks(4)]

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole table was loaded")

    monkeypatch.setattr(biom.Table, "from_hdf5", refuse)
    monkeypatch.setattr("scalable_assoc.io.biom_table._load", refuse)
    streamed = stream_abundance_table(path, rank="genus")
    assert streamed.feature_ids == whole.feature_ids and streamed.sample_ids == whole.sample_ids
    for got, want in zip(streamed.blocks(4), expected, strict=True):
        np.testing.assert_array_equal(got, want, strict=True)
    monkeypatch.undo()

    monkeypatch.setattr("scalable_assoc.io.biom_table._hdf5_layout", lambda path: None)  # biom-format reads it whole instead
    loaded = stream_abundance_table(path, rank="genus")
    assert loaded.feature_ids == whole.feature_ids
    for got, want in zip(loaded.blocks(4), expected, strict=True):
        np.testing.assert_array_equal(got, want, strict=True)


def test_a_run_on_the_biom_layer_gives_the_results_of_the_metaphlan_layer(tmp_path: Path, metaphlan: pd.DataFrame, client) -> None:
    """The whole route (plan ``format: auto``, conversion into the run's cache, fits): identical results, not only stores."""
    from scalable_assoc.engine.run import run_study
    from scalable_assoc.testing import write_plan

    source = metaphlan.attrs["path"]
    biom_file = _write_biom(metaphlan, tmp_path / "species.biom", hdf5=True)
    results = []
    for name, layer in [("metaphlan", source), ("biom", biom_file)]:
        folder = tmp_path / name
        folder.mkdir()
        plan = write_plan(
            folder,
            f"""
name: formats
data:
  metadata: {source.parent / "metadata.tsv"}
  layers:
    species: {layer}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  score: {{column: age}}
adjustments:
  base: [bmi]
min_cases: 3
""",
        )
        results.append(run_study(plan, folder / "out", client=client, allow_outside_paths=True).results)
    assert len(results[0]) > 10
    pd.testing.assert_frame_equal(results[1], results[0])


def test_h5ad_written_by_anndata_gives_the_metaphlan_store_bit_for_bit(tmp_path: Path, metaphlan: pd.DataFrame, monkeypatch) -> None:
    anndata = pytest.importorskip("anndata")
    import scipy.sparse as sp

    monkeypatch.setattr("scalable_assoc.io.h5ad_table.WIDE_BATCH_CELLS", 200)  # several row batches of a CSR X
    anndata.settings.allow_write_nullable_strings = True  # pandas 3's default string index
    expected = ingest_table(metaphlan.attrs["path"], tmp_path / "metaphlan.zarr", chunk_features=9).path
    wide = _species_wide(metaphlan)
    for layout, matrix in [("dense", wide.to_numpy()), ("csr", sp.csr_matrix(wide.to_numpy())), ("csc", sp.csc_matrix(wide.to_numpy()))]:
        path = tmp_path / f"species_{layout}.h5ad"
        anndata.AnnData(matrix, obs=pd.DataFrame(index=wide.index), var=pd.DataFrame(index=wide.columns)).write_h5ad(path)
        assert detect_format(path) == "h5ad"
        store = ingest_table(path, tmp_path / f"{layout}.zarr", chunk_features=9)
        _assert_same_store(expected, store.path)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # the CSR route's temporary file is gone


@pytest.mark.parametrize("layout", ["dense", "csr", "csc"])
def test_committed_h5ad_fixtures_written_by_anndata(layout: str, monkeypatch) -> None:
    monkeypatch.setattr("scalable_assoc.io.h5ad_table.WIDE_BATCH_CELLS", 8)  # two samples per row batch
    stream = stream_abundance_table(DATA / "h5ad" / f"counts_{layout}.h5ad")
    assert stream.sample_ids == ("S1", "S2", "S3", "S4", "S5")
    assert stream.feature_ids == ("s__Alpha", "s__Beta", "s__Gamma", "s__Delta")
    blocks = list(stream.blocks(3))
    assert [b.shape for b in blocks] == [(5, 3), (5, 1)] and all(b.dtype == np.float64 for b in blocks)
    np.testing.assert_array_equal(np.hstack(blocks), H5AD_VALUES)


@pytest.mark.parametrize("name", ["test.biom", "test_json.biom"])
def test_biom_format_example_otu_table(name: str, caplog: pytest.LogCaptureFixture) -> None:
    """biom-format's own example (tests/data/biom/README.md): 5 OTUs with Greengenes taxonomies, one resolved to species."""
    path = DATA / "biom" / name
    table = read_abundance_table(path)
    assert table.feature_ids == ("s__Halanaerobiumsaccharolyticum",)
    assert table.sample_ids == tuple(f"Sample{i}" for i in range(1, 7))
    np.testing.assert_array_equal(table.values[:, 0], [2.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    # Two OTUs end at g__Escherichia: one genus, two observations; refused rather than summed silently.
    with pytest.raises(DataError, match=r"test(_json)?\.biom: 1 observation\(s\) repeat a genus name .*g__Escherichia.*collapsed"):
        read_abundance_table(path, rank="genus")
    with pytest.raises(DataError, match=r"no observation whose taxonomy ends at 't__' \(sgb\)"):
        read_abundance_table(path, rank="sgb")


def test_biom_without_taxonomy_uses_observation_ids(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    frame = pd.DataFrame([[1.0, 0.0], [0.0, 2.5]], index=["OTU_1", "OTU_2"], columns=["a", "b"])
    path = _write_biom(frame, tmp_path / "plain.biom", hdf5=True, taxonomy=False)
    with caplog.at_level(logging.INFO, logger="scalable_assoc.io.biom_table"):
        table = read_abundance_table(path, rank="genus")
    assert table.feature_ids == ("OTU_1", "OTU_2") and table.sample_ids == ("a", "b")
    np.testing.assert_array_equal(table.values, frame.to_numpy().T)
    assert "no taxonomy" in caplog.text and "rank 'genus' is ignored" in caplog.text


# --------------------------------------------------------------------------------------
# Bad files: DataError naming the file; exit 2 from the command
# --------------------------------------------------------------------------------------
def _refused(table: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> str:
    code = main(["ingest", str(table), "--out", str(tmp_path / "out.zarr")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in error_lines(err) if "error:" in line]  # an INFO line may say the table has no taxonomy
    assert len(lines) == 1 and str(table) in lines[0], err
    assert not (tmp_path / "out.zarr").exists()
    return lines[0]


def _small_biom(tmp_path: Path, name: str, values: list[list[float]] | None = None, hdf5: bool = True) -> Path:
    frame = pd.DataFrame(values or [[1.0, 0.0, 3.0], [0.0, 2.0, 1.0]], index=["OTU_1", "OTU_2"], columns=["a", "b", "c"])
    return _write_biom(frame, tmp_path / name, hdf5=hdf5, taxonomy=False)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x89HDF\r\n\x1a\n" + b"\0" * 64, r"cannot be read as a BIOM table \(HDF5\)"),
        (b'{"id": "x", "rows": [', r"cannot be read as a BIOM table \(JSON\)"),
        (b"#OTU ID\tSample1\nGG_OTU_1\t1.0\n", r"not a BIOM table: .* neither"),
        (b"", r"not a BIOM table"),
    ],
)
def test_corrupt_or_wrong_content_biom(tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, problem: str) -> None:
    path = tmp_path / "bad.biom"
    path.write_bytes(content)
    assert pytest.raises(DataError, read_abundance_table, path).match(problem)
    _refused(path, capsys, tmp_path)


def test_duplicate_ids_in_biom(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    path = _small_biom(tmp_path, "dup.biom")
    with h5py.File(path, "r+") as handle:
        handle["observation/ids"][1] = "OTU_1"
    assert "duplicate observation IDs (1 repeated), for example: OTU_1" in _refused(path, capsys, tmp_path)
    text = _small_biom(tmp_path, "dup_json.biom", hdf5=False)
    content = json.loads(text.read_text())
    content["columns"][2]["id"] = "a"
    text.write_text(json.dumps(content))
    assert "duplicate sample IDs (1 repeated), for example: a" in _refused(text, capsys, tmp_path)


@pytest.mark.parametrize("hdf5", [True, False])
def test_negative_value_in_biom(tmp_path: Path, capsys: pytest.CaptureFixture[str], hdf5: bool) -> None:
    path = _small_biom(tmp_path, "negative.biom", [[1.0, 0.0, 3.0], [0.0, -2.0, 1.0]], hdf5=hdf5)
    message = _refused(path, capsys, tmp_path)
    assert "1 negative value(s); the first is -2.0 for sample 'b', feature 'OTU_2'" in message


def test_bad_h5ad_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import h5py

    text = tmp_path / "text.h5ad"
    text.write_text("sample_id\tx\nA\t1\n")
    assert "cannot be read as an AnnData .h5ad file" in _refused(text, capsys, tmp_path)

    negative = tmp_path / "negative.h5ad"
    negative.write_bytes((DATA / "h5ad" / "counts_dense.h5ad").read_bytes())
    with h5py.File(negative, "r+") as handle:
        handle["X"][3, 2] = -1.0
    assert "1 negative value(s); the first is -1.0 for sample 'S4', feature 's__Gamma'" in _refused(negative, capsys, tmp_path)

    duplicate = tmp_path / "duplicate.h5ad"
    duplicate.write_bytes((DATA / "h5ad" / "counts_csr.h5ad").read_bytes())
    with h5py.File(duplicate, "r+") as handle:
        handle["var/_index"][3] = "s__Alpha"
    assert "duplicate feature IDs (1 repeated), for example: s__Alpha" in _refused(duplicate, capsys, tmp_path)

    no_x = tmp_path / "no_x.h5ad"
    no_x.write_bytes((DATA / "h5ad" / "counts_csc.h5ad").read_bytes())
    with h5py.File(no_x, "r+") as handle:
        del handle["X"]
    assert "X is missing" in _refused(no_x, capsys, tmp_path)
