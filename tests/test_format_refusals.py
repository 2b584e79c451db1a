"""Bad input in every table format: exit 2 with one message naming the file and the row/column (and sample), nothing written.

The issue's cases: a stratified HUMAnN table read as unstratified by mistake, duplicated features, negative or
non-numeric values, an h5ad without the expected layer (plan key ``h5ad_layer``), a BIOM table without taxonomy
when ``rank`` is given. "By mistake", for a stratified table, is any of:

- a HUMAnN table holding only per-species rows (``humann_split_stratified_table``'s ``_stratified`` file) read with
  the default ``stratified: false``: without the check it would give no feature at all; the converse (only
  community rows, ``stratified: true``) likewise;
- a HUMAnN table read as a wide or MetaPhlAn table (``format: wide``/``metaphlan`` written by hand): its pathways
  would become samples (wide) or nothing would match (MetaPhlAn);
- a HUMAnN table converted to another format (wide, Parquet, long, h5ad, BIOM without taxonomy) keeping both the
  community rows and their per-species rows: each abundance would enter the analysis twice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import error_lines
from table_files import write_biom
from test_format_round_trips import write_h5ad

from scalable_assoc.cli import main
from scalable_assoc.errors import PlanError
from scalable_assoc.io.tables import stream_abundance_table
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.testing import write_plan

SAMPLES = ["S1", "S2", "S3"]
FEATURES = ["s__Alpha", "s__Beta"]
#: samples x features, the values every small table below holds unless a test changes one.
VALUES = np.array([[1.0, 0.0], [0.5, 2.0], [0.0, 3.25]])


def refused(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """``scalable-assoc ingest``: exit 2, one error line naming the file, no store written; return the message."""
    out = tmp_path / "refused.zarr"
    code = main(["ingest", str(table), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in error_lines(err) if line.startswith("scalable-assoc ingest: error: ")]  # INFO lines may come first
    assert len(lines) == 1 and str(table) in lines[0], err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".refused")]
    return lines[0].split(" error: ", 1)[1]


def wide_frame(values: object = None) -> pd.DataFrame:
    return pd.DataFrame(VALUES if values is None else values, index=pd.Index(SAMPLES, name="sample_id"), columns=FEATURES)


def write_humann(path: Path, rows: dict[str, list[object]] | list[tuple[str, list[object]]]) -> Path:
    header = "\t".join(["# Pathway", *(f"{s}_Abundance" for s in SAMPLES)])
    pairs = rows.items() if isinstance(rows, dict) else rows
    path.write_text("\n".join([header, *("\t".join([name, *map(str, cells)]) for name, cells in pairs)]) + "\n")
    return path


def write_metaphlan(path: Path, rows: dict[str, list[object]]) -> Path:
    header = "\t".join(["clade_name", *SAMPLES])
    lines = ["#mpa_vJun23", header, *("\t".join([name, *map(str, cells)]) for name, cells in rows.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_test_biom(path: Path, values: np.ndarray, observations: list[str], taxonomy: bool, hdf5: bool = True) -> Path:
    # With taxonomy the features are the lineages' last levels: the observations get IDs of their own (OTU_1, ...).
    lineages = [["k__Bacteria", name] for name in observations] if taxonomy else None
    ids = [f"OTU_{i + 1}" for i in range(len(observations))] if taxonomy else observations
    return write_biom(path, values.T, ids, SAMPLES, lineages, hdf5)


STRATIFIED_ROWS = {"PWY-1: a|g__A.s__A_x": [1.0, 2.0, 0.0], "PWY-1: a|unclassified": [0.5, 0.0, 1.0], "PWY-2: b|g__B.s__B_y": [0, 1, 1]}


# --------------------------------------------------------------------------------------
# A stratified table read as unstratified by mistake
# --------------------------------------------------------------------------------------
def test_humann_table_of_only_per_species_rows_read_unstratified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_humann(tmp_path / "pathabundance_stratified.tsv", {"UNMAPPED": [1, 1, 1], **STRATIFIED_ROWS})
    message = refused(path, tmp_path, capsys)
    assert "only per-species (stratified) rows" in message and "set 'stratified: true'" in message
    assert "'PWY-1: a|g__A.s__A_x', on line 3" in message
    assert main(["ingest", str(path), "--out", str(tmp_path / "ok.zarr"), "--stratified"]) == 0


def test_humann_table_of_only_community_rows_read_stratified(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_humann(tmp_path / "pathabundance_unstratified.tsv", {"PWY-1: a": [1, 2, 0], "PWY-2: b": [0, 1, 1]})
    message = refused(path, tmp_path, capsys, "--stratified")
    assert "only community rows" in message and "'PWY-1: a', on line 2" in message and "drop 'stratified: true'" in message


@pytest.mark.parametrize("fmt", ["wide", "metaphlan"])
def test_humann_table_read_as_another_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    path = write_humann(tmp_path / "pathabundance.tsv", {"PWY-1: a": [1, 2, 0], **STRATIFIED_ROWS})
    message = refused(path, tmp_path, capsys, "--format", fmt)
    assert f"this is a HUMAnN table (its first header cell, row 1 column 1, is '# Pathway'), not a {fmt} table" in message


def _community_and_stratified(folder: Path, kind: str) -> Path:
    """A HUMAnN table's community row and its per-species rows as features of another format."""
    names = ["PWY-1: a", "PWY-1: a|g__A.s__A_x", "PWY-1: a|unclassified"]
    frame = pd.DataFrame([[1.5, 1.0, 0.5], [2.0, 2.0, 0.0], [1.0, 0.0, 1.0]], index=pd.Index(SAMPLES, name="sample_id"), columns=names)
    if kind == "wide":
        frame.to_csv(folder / "wide.tsv", sep="\t")
        return folder / "wide.tsv"
    if kind == "parquet":
        frame.to_parquet(folder / "wide.parquet")
        return folder / "wide.parquet"
    if kind == "long":
        long = frame.reset_index().melt(id_vars="sample_id", var_name="feature", value_name="value")
        long.to_csv(folder / "long.tsv", sep="\t", index=False)
        return folder / "long.tsv"
    if kind == "h5ad":
        return write_h5ad(folder / "table.h5ad", frame.to_numpy(), SAMPLES, names)
    return write_test_biom(folder / "table.biom", frame.to_numpy(), names, taxonomy=False)


@pytest.mark.parametrize("kind", ["wide", "parquet", "long", "h5ad", "biom"])
def test_community_and_per_species_rows_as_features_of_another_format(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str):
    message = refused(_community_and_stratified(tmp_path, kind), tmp_path, capsys)
    assert "feature 'PWY-1: a|g__A.s__A_x' (feature column/row 2) is a HUMAnN per-species (stratified) row" in message
    assert "counted twice" in message


def test_per_species_rows_alone_are_features_of_any_format(tmp_path: Path) -> None:
    """Only per-species rows (no community total beside them) count nothing twice: read as they are."""
    frame = pd.DataFrame([[1.0, 0.5], [2.0, 0.0], [0.0, 1.0]], index=pd.Index(SAMPLES, name="sample_id"), columns=list(STRATIFIED_ROWS)[:2])
    frame.to_csv(tmp_path / "wide.tsv", sep="\t")
    assert stream_abundance_table(tmp_path / "wide.tsv").feature_ids == tuple(frame.columns)


# --------------------------------------------------------------------------------------
# Duplicated features, negative and non-numeric values: every format
# --------------------------------------------------------------------------------------
def _table(folder: Path, kind: str, values: object = None, features: list[str] | None = None) -> Path:
    """The small table (:data:`VALUES`, or ``values`` as written, e.g. text) as format ``kind``."""
    features = features or FEATURES
    frame = pd.DataFrame(VALUES if values is None else values, index=pd.Index(SAMPLES, name="sample_id"), columns=features, dtype=object)
    if kind == "metaphlan":
        return write_metaphlan(folder / "mpa.tsv", {f"k__Bacteria|{f}": list(frame[f]) for f in [*dict.fromkeys(features)]})
    if kind == "humann":
        return write_humann(folder / "humann.tsv", [(f, list(frame.iloc[:, i])) for i, f in enumerate(features)])
    if kind == "wide":
        frame.to_csv(folder / "wide.tsv", sep="\t")
        return folder / "wide.tsv"
    if kind == "parquet":
        cells = [list(frame.iloc[:, i]) for i in range(len(features))]
        arrays = [pa.array(c if all(isinstance(v, float) for v in c) else [str(v) for v in c]) for c in cells]  # text: a string column
        table = pa.table([pa.array(SAMPLES), *arrays], ["sample_id", *features])
        pq.write_table(table, folder / "wide.parquet")
        return folder / "wide.parquet"
    if kind in ("long_tsv", "long_parquet"):
        long = frame.set_axis(range(len(features)), axis=1).reset_index().melt(id_vars="sample_id", var_name="i", value_name="value")
        long.insert(1, "feature", [features[i] for i in long.pop("i")])
        if kind == "long_tsv":
            long.to_csv(folder / "long.tsv", sep="\t", index=False)
            return folder / "long.tsv"
        text = any(isinstance(v, str) for v in long["value"])
        long["value"] = long["value"].astype(str) if text else long["value"].astype(float)
        pq.write_table(pa.Table.from_pandas(long, preserve_index=False), folder / "long.parquet")
        return folder / "long.parquet"
    if kind == "h5ad":
        return write_h5ad(folder / "table.h5ad", frame.to_numpy(dtype=float), SAMPLES, features)
    return write_test_biom(folder / f"{kind}.biom", frame.to_numpy(dtype=float), features, taxonomy=True, hdf5=kind == "biom_hdf5")


ALL_KINDS = ["metaphlan", "humann", "wide", "parquet", "long_tsv", "long_parquet", "h5ad", "biom_hdf5", "biom_json"]


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_the_small_table_reads_in_every_format(tmp_path: Path, kind: str) -> None:
    stream = stream_abundance_table(_table(tmp_path, kind))
    assert stream.sample_ids == tuple(SAMPLES) and stream.feature_ids == tuple(FEATURES)
    np.testing.assert_array_equal(np.hstack(list(stream.blocks(1))), VALUES)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_duplicated_features(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    if kind == "metaphlan":  # two clades ending at the same species
        path = write_metaphlan(tmp_path / "mpa.tsv", {"k__Bacteria|s__Alpha": [1, 2, 3], "k__Archaea|s__Alpha": [0, 1, 0]})
    else:
        path = _table(tmp_path, kind, features=["s__Alpha", "s__Alpha"])
    message = refused(path, tmp_path, capsys)
    if kind.startswith("long"):  # a long table's features are distinct by construction: a repeated pair is what repeats
        assert "repeated (sample, feature) pair(s); the first is sample 'S1', feature 's__Alpha'" in message
    elif kind.startswith("biom"):
        assert "repeat a species name of another, for example: s__Alpha" in message
    else:
        assert "duplicate feature IDs (1 repeated), for example: s__Alpha" in message


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_negative_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    values = VALUES.copy()
    values[1, 1] = -2.0
    message = refused(_table(tmp_path, kind, values), tmp_path, capsys)
    assert re.search(r"1 negative value\(s\)( in column 'value')?; the first is -2\.0 for ", message), message
    assert "sample 'S2'" in message and "feature 's__Beta'" in message


#: Formats that hold numbers only (typed HDF5 datasets, BIOM's JSON parsed by biom-format): text is refused without a cell.
TYPED = {"h5ad": "holds |S5 values, not numbers", "biom_json": "cannot be read as a BIOM table"}


@pytest.mark.parametrize("kind", [k for k in ALL_KINDS if k != "biom_hdf5"])
def test_non_numeric_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str) -> None:
    values = VALUES.astype(object)
    values[1, 1] = "abc"
    if kind == "h5ad":
        import h5py

        path = write_h5ad(tmp_path / "table.h5ad", None, SAMPLES, FEATURES)
        with h5py.File(path, "r+") as handle:
            handle.create_dataset("X", data=values.astype("S5")).attrs["encoding-type"] = "array"
    elif kind == "biom_json":
        path = _table(tmp_path, kind)
        content = json.loads(path.read_text())
        content["data"][1][2] = "abc"
        path.write_text(json.dumps(content))
    else:
        path = _table(tmp_path, kind, values)
    message = refused(path, tmp_path, capsys)
    if kind in TYPED:
        assert TYPED[kind] in message
    else:
        assert re.search(r"1 non-numeric value\(s\)( in column 'value')?; the first is 'abc' for ", message), message
        assert "sample 'S2'" in message and "feature 's__Beta'" in message


# --------------------------------------------------------------------------------------
# h5ad_layer: a layer instead of X
# --------------------------------------------------------------------------------------
def test_h5ad_layer_is_read_instead_of_x(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_h5ad(tmp_path / "table.h5ad", VALUES * 0 + 9.0, SAMPLES, FEATURES, layers={"counts": VALUES})
    stream = stream_abundance_table(path, h5ad_layer="counts")
    np.testing.assert_array_equal(np.hstack(list(stream.blocks(2))), VALUES)
    assert main(["ingest", str(path), "--out", str(tmp_path / "counts.zarr"), "--h5ad-layer", "counts"]) == 0
    message = refused(path, tmp_path, capsys, "--h5ad-layer", "relab")
    assert "layer 'relab' (layers/relab) is missing; the layers present are: counts" in message


def test_h5ad_without_x(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_h5ad(tmp_path / "layers_only.h5ad", None, SAMPLES, FEATURES, layers={"counts": VALUES, "relab": VALUES / 10})
    message = refused(path, tmp_path, capsys)
    assert "X is missing; the layers present are: counts, relab; name one with the layer key 'h5ad_layer'" in message


def test_h5ad_layer_for_another_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _table(tmp_path, "wide")
    message = refused(path, tmp_path, capsys, "--h5ad-layer", "counts")
    assert "the layer key 'h5ad_layer' applies to an AnnData .h5ad file (format: h5ad)" in message


def _plan(folder: Path, layer: str) -> Path:
    (folder / "metadata.tsv").write_text("sample_id\tage\n" + "".join(f"{s}\t{40 + i}\n" for i, s in enumerate(SAMPLES)))
    return write_plan(
        folder,
        f"""
name: formats
data:
  metadata: metadata.tsv
  layers:
    species: {layer}
exposures:
  score: {{column: age}}
adjustments:
  none: []
""",
    )


def test_h5ad_layer_in_the_plan(tmp_path: Path) -> None:
    write_h5ad(tmp_path / "table.h5ad", VALUES, SAMPLES, FEATURES, layers={"counts": VALUES})
    plain = load_plan(_plan(tmp_path, "{path: table.h5ad}"))
    layered = load_plan(_plan(tmp_path, "{path: table.h5ad, h5ad_layer: counts}"))
    assert plain.layers[0].h5ad_layer is None and layered.layers[0].read_options() == {"h5ad_layer": "counts"}
    assert plain.rows_hash() != layered.rows_hash() and plain.content_hash() != layered.content_hash()
    assert load_plan(_plan(tmp_path, "{path: table.h5ad, format: h5ad, h5ad_layer: counts}")).layers[0].h5ad_layer == "counts"
    _table(tmp_path, "wide")
    for layer in ("{path: wide.tsv, h5ad_layer: counts}", "{path: table.h5ad, format: wide, h5ad_layer: counts}"):
        with pytest.raises(PlanError, match=r"data\.layers\.species\.h5ad_layer.*applies to AnnData \.h5ad files"):
            load_plan(_plan(tmp_path, layer))


def test_a_run_refuses_a_missing_h5ad_layer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_h5ad(tmp_path / "table.h5ad", VALUES, SAMPLES, FEATURES, layers={"counts": VALUES})
    plan = _plan(tmp_path, "{path: table.h5ad, h5ad_layer: relab}")
    code = main(["run", str(plan), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}: layer 'relab' (layers/relab) is missing; the layers present are: counts" in err
    assert not (tmp_path / "out" / "results.parquet").exists()


# --------------------------------------------------------------------------------------
# BIOM without taxonomy when rank is given
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("hdf5", [True, False])
def test_biom_without_taxonomy_and_a_given_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str], hdf5: bool) -> None:
    path = write_test_biom(tmp_path / "otus.biom", VALUES, ["OTU_1", "OTU_2"], taxonomy=False, hdf5=hdf5)
    message = refused(path, tmp_path, capsys, "--rank", "species")
    assert "has no taxonomy metadata" in message and "rank 'species' cannot be chosen; drop 'rank'" in message
    assert main(["ingest", str(path), "--out", str(tmp_path / "ok.zarr")]) == 0  # rank not given: the observation IDs


def test_a_run_refuses_a_rank_written_for_a_biom_table_without_taxonomy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_test_biom(tmp_path / "otus.biom", VALUES, ["OTU_1", "OTU_2"], taxonomy=False)
    plan = _plan(tmp_path, "{path: otus.biom, rank: genus}")
    code = main(["run", str(plan), "--out", str(tmp_path / "out"), "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"{path}: the BIOM table has no taxonomy metadata" in err and "rank 'genus' cannot be chosen" in err


def test_writing_the_default_rank_changes_no_hash(tmp_path: Path) -> None:
    """``rank_given`` says how a table is read, not what it holds: plans keep their hashes (and finished chunks)."""
    write_test_biom(tmp_path / "otus.biom", VALUES, ["OTU_1", "OTU_2"], taxonomy=True)
    implicit = load_plan(_plan(tmp_path, "otus.biom"))
    explicit = load_plan(_plan(tmp_path, "{path: otus.biom, rank: species}"))
    assert not implicit.layers[0].rank_given and explicit.layers[0].rank_given
    assert implicit.rows_hash() == explicit.rows_hash() and implicit.content_hash() == explicit.content_hash()
