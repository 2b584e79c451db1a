"""Round trips: one abundance matrix written in every supported table format gives bit-identical stores and identical results.

The matrix is a simulated MetaPhlAn table's species rows, rounded to 6 decimals (biom-format's JSON writer keeps 6,
``%f``), so every format holds exactly the same float64 values. Feature names are the species level
(``s__Genus_species``): MetaPhlAn and BIOM name features by their last lineage level, and the other formats
(HUMAnN rows, wide and Parquet columns, long rows, h5ad ``var_names``) are written with the same names, so the
stores compare as they are. The HUMAnN table also holds what a real one holds besides its community rows
(``UNMAPPED``, ``UNINTEGRATED``, per-species rows), which the reader leaves out.

The .h5ad file is written with h5py in AnnData's on-disk layout (:func:`write_h5ad`), as anndata is not a dependency
(io/h5ad_table.py says why; tests/data/h5ad holds files written by anndata itself).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from table_files import store_content, write_biom

from scalable_assoc.io.ingest import ingest_table
from scalable_assoc.io.tables import detect_format
from scalable_assoc.simulate import simulate_study

#: Every format of the round trip: file name -> the format detected from it (``format: auto`` everywhere).
FILES = {
    "metaphlan.tsv": "metaphlan",
    "wide.tsv": "wide",
    "wide.parquet": "parquet",
    "humann.tsv": "humann",
    "hdf5.biom": "biom",
    "json.biom": "biom",
    "dense.h5ad": "h5ad",
    "long.parquet": "long",
    "long.tsv": "long",
}


def write_h5ad(
    path: Path, values: np.ndarray, samples: list[str], features: list[str], layers: dict[str, np.ndarray] | None = None
) -> Path:
    """A dense AnnData .h5ad file written with h5py in anndata's on-disk layout (encoding-type attributes, anndata >= 0.8).

    ``values`` is ``X`` (samples x features); ``layers`` adds ``layers/<name>`` datasets; ``values=None`` leaves ``X`` out.
    """
    import h5py

    strings = h5py.string_dtype()

    def encode(node: h5py.HLObject, kind: str, version: str = "0.2.0") -> None:
        node.attrs["encoding-type"], node.attrs["encoding-version"] = kind, version

    with h5py.File(path, "w") as handle:
        encode(handle, "anndata", "0.1.0")
        for axis, names in (("obs", samples), ("var", features)):
            frame = handle.create_group(axis)
            encode(frame, "dataframe")
            frame.attrs["_index"] = "_index"
            frame.attrs["column-order"] = np.array([], dtype=strings)
            encode(frame.create_dataset("_index", data=np.array(names, dtype=object), dtype=strings), "string-array")
        if values is not None:
            encode(handle.create_dataset("X", data=values), "array")
        group = handle.create_group("layers")
        encode(group, "dict", "0.1.0")
        for name, layer in (layers or {}).items():
            encode(group.create_dataset(name, data=layer), "array")
        for name in ("obsm", "varm", "obsp", "varp", "uns"):
            encode(handle.create_group(name), "dict", "0.1.0")
    return path


def write_formats(folder: Path, clades: pd.DataFrame) -> dict[str, Path]:
    """``clades`` (a MetaPhlAn table: lineages x samples) written as every format of :data:`FILES`, in ``folder``."""

    species = clades.loc[[c for c in clades.index if c.rsplit("|", 1)[-1].startswith("s__")]]
    species = species.set_axis([c.rsplit("|", 1)[-1] for c in species.index], axis=0)
    wide = species.T.rename_axis("sample_id")  # samples x species
    samples, features = list(wide.index), list(wide.columns)
    paths = {name: folder / name for name in FILES}

    with paths["metaphlan.tsv"].open("w") as handle:
        handle.write("#mpa_vJun23_CHOCOPhlAnSGB_202403\n")
        clades.rename_axis("clade_name").to_csv(handle, sep="\t")
    wide.to_csv(paths["wide.tsv"], sep="\t")
    wide.to_parquet(paths["wide.parquet"])

    humann = species.set_axis([f"{s}_Abundance" for s in samples], axis=1)
    stratified = humann.set_axis([f"{f}|g__Genus.s__Species" for f in humann.index], axis=0)  # per-species rows: left out
    special = pd.DataFrame(1.0, index=["UNMAPPED", "UNINTEGRATED", "UNINTEGRATED|g__Genus.s__Species"], columns=humann.columns)
    pd.concat([special, humann, stratified]).rename_axis("# Pathway").to_csv(paths["humann.tsv"], sep="\t")

    lineages = [c.split("|") for c in clades.index]
    for name, hdf5 in (("hdf5.biom", True), ("json.biom", False)):
        write_biom(paths[name], clades.to_numpy(), list(clades.index), list(clades.columns), lineages, hdf5)

    write_h5ad(paths["dense.h5ad"], wide.to_numpy(), samples, features)

    # Long (feature by feature): IDs come in order of first appearance, so every pair of the first feature and of the
    # first sample is listed (the store's order is the matrix's); other zeros are left out (a pair not listed is a zero).
    long = wide.reset_index().melt(id_vars="sample_id", var_name="feature", value_name="value")
    long = long[(long["value"] != 0) | (long["feature"] == features[0]) | (long["sample_id"] == samples[0])]
    long.to_parquet(paths["long.parquet"], index=False)
    long.to_csv(paths["long.tsv"], sep="\t", index=False)
    return paths


@pytest.fixture(scope="module")
def tables(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    study = simulate_study(tmp_path_factory.mktemp("round_trip_study"), participants=300, n_species=50, n_pathways=20, seed=2)
    clades = pd.read_csv(study.out_dir / "species.tsv", sep="\t", skiprows=1, index_col=0).round(6)
    paths = write_formats(study.out_dir, clades)
    paths["metadata"] = study.out_dir / "metadata.tsv"
    return paths


def test_every_format_gives_the_same_store_bit_for_bit(tables: dict[str, Path], tmp_path: Path) -> None:
    stores = {}
    for name, fmt in FILES.items():
        assert detect_format(tables[name]) == fmt, name
        stores[name] = store_content(ingest_table(tables[name], tmp_path / f"{name}.zarr", chunk_features=7).path)
    expected = stores["metaphlan.tsv"]
    assert len(expected["feature_ids"]) > 20 and len(expected["sample_ids"]) == 300  # type: ignore[arg-type]
    for name, content in stores.items():
        assert content.keys() == expected.keys(), name
        for key, value in expected.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(content[key], value, err_msg=f"{name}: {key}", strict=True)
            else:
                assert content[key] == value, f"{name}: {key}"


def test_a_run_gives_identical_results_for_every_format(tables: dict[str, Path], tmp_path: Path, client) -> None:
    """One run with every format as a layer: each layer's rows (FDR is per layer) are identical, not only close."""
    from scalable_assoc.engine.run import run_study
    from scalable_assoc.testing import write_plan

    layers = "\n".join(f"    {name.replace('.', '_')}: {tables[name]}" for name in FILES)
    plan = write_plan(
        tmp_path,
        f"""
name: round_trip
data:
  metadata: {tables["metadata"]}
  layers:
{layers}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  score: {{column: age}}
adjustments:
  base: [bmi]
min_cases: 3
""",
    )
    results = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True).results
    # The layer's name and the analysis id (a hash that includes the layer's name) differ by layer; every other column is compared.
    by_layer = {
        layer: rows.drop(columns=["layer", "analysis_id"]).reset_index(drop=True) for layer, rows in results.groupby("layer", sort=False)
    }
    assert set(by_layer) == {name.replace(".", "_") for name in FILES}
    expected = by_layer["metaphlan_tsv"]
    assert len(expected) > 20 and expected["p"].notna().sum() > 20
    for layer, rows in by_layer.items():
        pd.testing.assert_frame_equal(rows, expected, obj=layer)
