"""Every input route gives the same results: MetaPhlAn TSV, a store made by ``ingest``,
a wide Parquet table; other MetaPhlAn ranks; other transforms against their definitions."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from reference_model import fit_one, read_layer

from scalable_assoc.cli import main
from scalable_assoc.engine.run import run_study
from scalable_assoc.io import ingest
from scalable_assoc.io.store import open_store
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_plan

SPECIES_ONLY = """
name: inputs
data:
  metadata: {metadata}
  layers:
    species: {layer}
preprocess: {{min_prevalence: 0.05, transform: clr, pseudocount: half_min}}
exposures:
  MDD: {{cases: "MDD == 1", controls: "no_disorder == 1"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi]
min_cases: 5
"""


def _run(tmp_path, client, name: str, layer: str, study: SimulatedStudy, **options) -> pd.DataFrame:
    folder = tmp_path / name
    folder.mkdir()
    plan = write_plan(folder, SPECIES_ONLY.format(metadata=study.out_dir / "metadata.tsv", layer=layer))
    return run_study(plan, folder / "out", client=client, allow_outside_paths=True, **options).results


def test_ingested_store_and_parquet_equal_the_metaphlan_table(tmp_path, client, small_study: SimulatedStudy, capsys) -> None:
    species = small_study.out_dir / "species.tsv"
    from_table = _run(tmp_path, client, "table", str(species), small_study)

    store = tmp_path / "species.zarr"
    assert main(["ingest", str(species), "--out", str(store), "--chunk-features", "9"]) == 0
    assert "9 features per chunk" in capsys.readouterr().out
    opened = open_store(store)
    assert opened.chunk_features == 9 and opened.n_samples == small_study.n_participants
    from_store = _run(tmp_path, client, "store", str(store), small_study)

    wide = read_layer(species)
    wide.index.name = "sample_id"
    parquet = tmp_path / "species.parquet"
    wide.reset_index().to_parquet(parquet)
    from_parquet = _run(tmp_path, client, "parquet", str(parquet), small_study)

    columns = ["feature", "n", "n_cases", "n_controls", "status"]
    for other in (from_store, from_parquet):
        pd.testing.assert_frame_equal(other[columns], from_table[columns])
        for statistic in ("beta", "se", "p", "q"):
            np.testing.assert_allclose(other[statistic].to_numpy(float), from_table[statistic].to_numpy(float), rtol=1e-10)


def test_genus_rank_sums_its_species(tmp_path, client, small_study: SimulatedStudy) -> None:
    results = _run(tmp_path, client, "genus", f"{{path: {small_study.out_dir / 'species.tsv'}, rank: genus}}", small_study)
    assert len(results) and results["feature"].str.startswith("g__").all()


@pytest.mark.parametrize("transform", ["log", "tss", "ast", "none"])
def test_other_transforms_equal_their_definition(tmp_path, client, small_study: SimulatedStudy, transform: str) -> None:
    folder = tmp_path / transform
    folder.mkdir()
    plan = folder / "plan.yaml"
    text = SPECIES_ONLY.format(metadata=small_study.out_dir / "metadata.tsv", layer=small_study.out_dir / "gbm.tsv")
    # The transforms under test, not the carrier rule (few MDD cases: small presence x case cells): min_carriers 0.
    plan.write_text(
        text.replace("transform: clr, pseudocount: half_min", f"transform: {transform}, pseudocount: 0.5") + "min_carriers: 0\n"
    )
    results = run_study(plan, folder / "out", client=client, allow_outside_paths=True).results
    layer = read_layer(small_study.out_dir / "gbm.tsv")
    kept = layer.loc[:, (layer > 0).sum() / layer.notna().sum() >= 0.05]
    proportions = kept.div(kept.sum(axis=1, skipna=True), axis=0)
    expected = {"log": np.log(kept + 0.5), "tss": proportions, "ast": np.arcsin(np.sqrt(proportions)), "none": kept}[transform]
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str}).set_index("sample_id")
    data = metadata.join(expected, how="inner")
    data = data[(data["MDD"] == 1) | (data["no_disorder"] == 1)].assign(exposure_value=lambda d: (d["MDD"] == 1).astype(float))
    for feature in list(expected.columns[:4]):
        reference = fit_one(data, feature, "exposure_value", ["age", "sex", "bmi"], ["sex"])
        row = results[results["feature"] == feature].iloc[0]
        for statistic in ("beta", "se", "p"):
            assert row[statistic] == pytest.approx(reference[statistic], rel=1e-8), (transform, feature, statistic)


def test_rank_deficient_design_gets_a_status_naming_the_covariates(tmp_path, client, small_study: SimulatedStudy) -> None:
    metadata = pd.read_csv(small_study.out_dir / "metadata.tsv", sep="\t", dtype={"sample_id": str})
    metadata["bmi_doubled"] = 2 * metadata["bmi"]
    folder = tmp_path / "collinear"
    folder.mkdir()
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    plan = folder / "plan.yaml"
    text = SPECIES_ONLY.format(metadata=folder / "metadata.tsv", layer=small_study.out_dir / "gbm.tsv")
    plan.write_text(text.replace("base: [age, sex, bmi]", "base: [age, sex, bmi]\n  doubled: [base, bmi_doubled]"))
    results = run_study(plan, folder / "out", client=client, allow_outside_paths=True).results
    collinear = results[results["adjustment"] == "doubled"]
    assert len(collinear) and collinear["p"].isna().all() and collinear["q"].isna().all()
    status = collinear["status"].iloc[0]
    assert status.startswith("rank-deficient design") and "'bmi_doubled'" in status and "'bmi'" in status
    base = results.loc[results["adjustment"] == "base", "status"]
    assert (base == "ok").sum() > len(base) // 2 and not base.str.startswith("rank-deficient").any()  # a few rest on too few carriers


def test_store_written_block_by_block_equals_the_whole_table_store(tmp_path) -> None:
    """write_store_blocks (one chunk in memory: streaming writers, the benchmark's large stores) = write_store."""
    from scalable_assoc.io.store import read_block, write_store, write_store_blocks
    from scalable_assoc.io.tables import AbundanceTable

    rng = np.random.default_rng(5)
    values = np.where(rng.random((40, 23)) < 0.3, 0.0, rng.gamma(1.0, 1.0, (40, 23)))
    values[3, 4] = np.nan
    table = AbundanceTable(tuple(f"S{i}" for i in range(40)), tuple(f"F{j}" for j in range(23)), values, tmp_path / "table.tsv")
    whole = write_store(tmp_path / "whole.zarr", table, "abc", chunk_features=5)
    calls = []

    def block(start: int, stop: int) -> np.ndarray:
        calls.append((start, stop))
        return values[:, start:stop]

    streamed = write_store_blocks(tmp_path / "streamed.zarr", table.sample_ids, table.feature_ids, block, str(table.source), "abc", 5)
    assert calls == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    for field in ("sample_ids", "feature_ids", "chunk_features", "source_sha256"):
        assert getattr(streamed, field) == getattr(whole, field)
    np.testing.assert_array_equal(read_block(streamed.path, 0, 23), read_block(whole.path, 0, 23))
    for start, stop in whole.block_bounds():
        expected, actual = whole.stored_feature_summary(start, stop), streamed.stored_feature_summary(start, stop)
        assert expected is not None and actual is not None
        np.testing.assert_array_equal(actual.nonzero, expected.nonzero)
        np.testing.assert_array_equal(actual.min_positive, expected.min_positive)


def test_metaphlan_and_parquet_are_ingested_a_block_at_a_time(tmp_path, small_study: SimulatedStudy) -> None:
    """Streaming readers (row chunks of MetaPhlAn, column blocks of Parquet) give the values a plain pandas read gives."""
    from scalable_assoc.errors import DataError
    from scalable_assoc.io.store import read_block, write_table_stream
    from scalable_assoc.io.tables import stream_metaphlan, stream_parquet

    species = small_study.out_dir / "species.tsv"
    pathways = read_layer(small_study.out_dir / "pathways.tsv")
    pathways.to_parquet(tmp_path / "pathways.parquet")
    for name, expected, stream in [
        ("species", read_layer(species), stream_metaphlan(species, "species", rows_per_read=7)),  # many reads, few species rows each
        ("pathways", pathways, stream_parquet(tmp_path / "pathways.parquet")),
    ]:
        store = write_table_stream(tmp_path / f"{name}.zarr", stream, "x", chunk_features=9)
        assert list(store.feature_ids) == [str(c) for c in expected.columns]
        assert list(store.sample_ids) == [str(i) for i in expected.index]
        np.testing.assert_array_equal(read_block(store.path, 0, store.n_features), expected.to_numpy(dtype=np.float64))

    # A bad cell late in the file: the error names it, and no store is left behind.
    lines = species.read_text().splitlines()
    row = max(i for i, line in enumerate(lines) if "|s__" in line)
    cells = lines[row].split("\t")
    cells[3] = "-2"
    lines[row] = "\t".join(cells)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"negative value\(s\); the first is -2"):
        write_table_stream(tmp_path / "bad.zarr", stream_metaphlan(bad, "species", rows_per_read=7), "x", chunk_features=9)
    assert not (tmp_path / "bad.zarr").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad.zarr")]


def _leftovers(folder) -> list[str]:
    """Temporary files and folders (dot names: half-written stores, a wide table's rows) left in ``folder``."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("in_memory_bytes", [0, None], ids=["through a temporary file", "in memory (a small table)"])
def test_wide_tsv_and_gzipped_csv_are_ingested_a_block_at_a_time(
    tmp_path, monkeypatch, small_study: SimulatedStudy, in_memory_bytes
) -> None:
    """Row batches go through a temporary file (or a buffer laid out as it, for a small table) and come back as feature
    blocks: the store holds the table's values and IDs."""
    import gzip

    from scalable_assoc.io import wide
    from scalable_assoc.io.ingest import ingest_table
    from scalable_assoc.io.store import read_block, write_table_stream
    from scalable_assoc.io.tables import stream_wide

    if in_memory_bytes is not None:
        monkeypatch.setattr(wide, "WIDE_IN_MEMORY_BYTES", in_memory_bytes)

    tsv = small_study.out_dir / "pathways.tsv"
    expected = read_layer(tsv)
    assert expected.isna().to_numpy().any()  # missing cells travel through the temporary file as NaN
    csv_gz = tmp_path / "pathways.csv.gz"
    csv_gz.write_bytes(gzip.compress(expected.to_csv().encode()))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for name, table in [("tsv", tsv), ("csv_gz", csv_gz)]:
        # 600 samples in 10 batches of 64 rows; 40 features in 6 blocks of 7 (the last narrower).
        store = write_table_stream(tmp_path / f"{name}.zarr", stream_wide(table, rows_per_read=64, scratch=scratch), "x", chunk_features=7)
        assert store.chunk_features == 7 and len(store.block_bounds()) == 6
        assert list(store.sample_ids) == [str(i) for i in expected.index]
        assert list(store.feature_ids) == [str(c) for c in expected.columns]
        np.testing.assert_array_equal(read_block(store.path, 0, store.n_features), expected.to_numpy(dtype=np.float64))
        assert _leftovers(scratch) == []

    # The temporary file exists while blocks are read, and goes when they are abandoned half-way.
    blocks = stream_wide(csv_gz, rows_per_read=50, scratch=scratch).blocks(9)
    np.testing.assert_array_equal(next(blocks), expected.to_numpy(dtype=np.float64)[:, :9])
    assert len(_leftovers(scratch)) == (0 if in_memory_bytes is None else 1)
    assert all(name.endswith(".rows.tmp") for name in _leftovers(scratch))
    blocks.close()
    assert _leftovers(scratch) == []

    # The default route (ingest: format detected, scratch next to the store) gives the same store.
    ingested = ingest_table(csv_gz, tmp_path / "ingested" / "pathways.zarr", chunk_features=7)
    np.testing.assert_array_equal(read_block(ingested.path, 0, ingested.n_features), expected.to_numpy(dtype=np.float64))
    assert _leftovers(tmp_path / "ingested") == []

    # A table of one block (every feature) is put together in memory: the same values and smallest value, no file.
    for width in (40, 1000):
        stream = stream_wide(tsv, rows_per_read=64, scratch=scratch)
        blocks = list(stream.blocks(width))
        assert len(blocks) == 1 and _leftovers(scratch) == []
        np.testing.assert_array_equal(blocks[0], expected.to_numpy(dtype=np.float64))
        values = expected.to_numpy(dtype=np.float64)
        assert stream.smallest_positive is not None and stream.smallest_positive.value == values[values > 0].min()


@pytest.mark.parametrize("in_memory_bytes", [0, None], ids=["through a temporary file", "in memory (a small table)"])
def test_error_in_a_late_row_batch_of_a_wide_table_leaves_no_store_and_no_temporary_files(tmp_path, monkeypatch, in_memory_bytes) -> None:
    """A bad cell, a repeated sample ID or a failed write far into a wide table: the specific message, then nothing left behind."""
    from scalable_assoc.errors import DataError
    from scalable_assoc.io import store as store_module
    from scalable_assoc.io import wide

    if in_memory_bytes is not None:
        monkeypatch.setattr(wide, "WIDE_IN_MEMORY_BYTES", in_memory_bytes)
    from scalable_assoc.io.ingest import ingest_table
    from scalable_assoc.io.tables import stream_wide

    rng = np.random.default_rng(3)
    n_samples, features = 10_000, [f"PWY-{j}" for j in range(5)]
    values = np.where(rng.random((n_samples, len(features))) < 0.3, 0.0, rng.gamma(1.0, 1.0, (n_samples, len(features))))
    lines = ["sample_id\t" + "\t".join(features)] + [f"S{i:05d}\t" + "\t".join(f"{v:.6g}" for v in row) for i, row in enumerate(values)]

    def write(name: str, changed: dict[int, str]) -> Path:
        path = tmp_path / name
        path.write_text("\n".join(changed.get(number, line) for number, line in enumerate(lines)) + "\n")
        return path

    def with_cell(number: int, column: int, value: str) -> str:
        cells = lines[number].split("\t")
        cells[column] = value
        return "\t".join(cells)

    def refused(table: Path, match: str) -> None:
        out = tmp_path / "out"
        with pytest.raises(DataError, match=match):
            store_module.write_table_stream(out / "layer.zarr", stream_wide(table, rows_per_read=500, scratch=out), "x", chunk_features=2)
        assert not (out / "layer.zarr").exists() and _leftovers(out) == []
        with pytest.raises(DataError, match=match):
            ingest_table(table, out / "ingested.zarr", chunk_features=2)  # the default route: format detected, default batches
        assert not (out / "ingested.zarr").exists() and _leftovers(out) == []
        with pytest.raises(DataError, match=match):
            ingest_table(table, out / "one_block.zarr")  # every feature in one block: in memory whatever the table's size
        assert not (out / "one_block.zarr").exists() and _leftovers(out) == []

    # Row 9,000 (line 9,001) is in the 19th of 20 batches, after 18 went to the temporary file.
    non_numeric = write("non_numeric.tsv", {9001: with_cell(9001, 1, "abc")})
    refused(non_numeric, r"non_numeric\.tsv: 1 non-numeric value\(s\); the first is 'abc' for sample 'S09000', feature 'PWY-0'")
    negative = write("negative.tsv", {9501: with_cell(9501, 3, "-0.5")})
    refused(negative, r"negative\.tsv: 1 negative value\(s\); the first is -0\.5 for sample 'S09500', feature 'PWY-2'")
    # A sample ID of the first batch repeated in the last one.
    repeated = write("repeated.tsv", {9801: lines[11]})
    refused(repeated, r"repeated\.tsv: duplicate sample IDs \(1 repeated\), for example: S00010")
    ragged = write("ragged.tsv", {9901: lines[9901].rsplit("\t", 1)[0]})
    refused(ragged, r"ragged\.tsv: line 9902 \(sample row\) has 5 fields but the header has 6")

    # A failure in the store writer, outside the table reader, half-way: the reader's temporary file goes too.
    calls = []

    def failing_statistics(block: np.ndarray, *args: object) -> object:
        calls.append(block.shape)
        if len(calls) == 2:
            raise OSError("disk full")
        return statistics(block, *args)

    statistics = store_module.block_statistics
    monkeypatch.setattr(store_module, "block_statistics", failing_statistics)
    good = write("good.tsv", {})
    with pytest.raises(OSError, match="disk full") as failure:
        store_module.write_table_stream(
            tmp_path / "out" / "good.zarr", stream_wide(good, rows_per_read=500, scratch=tmp_path / "out"), "x", chunk_features=2
        )
    # Checked while the traceback (and so the half-read stream) is still alive: removal must not wait for garbage collection.
    assert failure.traceback and len(calls) == 2
    assert not (tmp_path / "out" / "good.zarr").exists() and _leftovers(tmp_path / "out") == []


def test_tsv_outputs_read_back_exactly_in_pandas_and_r(tmp_path) -> None:
    """Full-precision numbers, NA for missing, TRUE/FALSE booleans (logical in R), quoted text only where needed."""
    import shutil
    import subprocess

    from scalable_assoc.io.atomic import write_tsv

    frame = pd.DataFrame(
        {
            "feature": ["s__A", None, "s__C"],
            "beta": [0.1 + 0.2, np.nan, -1e-300],
            "n": pd.array([10, None, 3], dtype="Int64"),
            "significant": [True, False, True],
        }
    )
    write_tsv(tmp_path / "out.tsv", frame)
    back = pd.read_csv(tmp_path / "out.tsv", sep="\t")
    assert back["beta"].iloc[0] == 0.1 + 0.2 and back["beta"].iloc[2] == -1e-300 and np.isnan(back["beta"].iloc[1])
    assert back["significant"].dtype == bool and back["significant"].tolist() == [True, False, True]
    assert back["feature"].isna().tolist() == [False, True, False]
    write_tsv(tmp_path / "tab.tsv", frame.assign(feature=["a\tb", "c", "d"]))
    assert pd.read_csv(tmp_path / "tab.tsv", sep="\t")["feature"].tolist() == ["a\tb", "c", "d"]
    if shutil.which("Rscript"):
        script = f'x <- read.delim("{tmp_path / "out.tsv"}"); cat(class(x$significant), class(x$beta), sum(is.na(x$n)))'
        printed = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True).stdout
        assert printed == "logical numeric 1"


def test_stream_run_to_its_end_after_the_last_block(tmp_path) -> None:
    """After the last block the stream is read to its end (its last checks run): a block too many is refused."""
    from scalable_assoc.io.store import write_table_stream
    from scalable_assoc.io.table_values import TableStream

    values = np.arange(12.0).reshape(3, 4)
    ended = []

    def blocks(width: int, extra: bool):
        for start in range(0, 4, width):
            yield values[:, start : start + width]
        if extra:
            yield values[:, :1]
        ended.append(width)

    def stream(extra: bool) -> TableStream:
        return TableStream(("a", "b", "c"), ("f1", "f2", "f3", "f4"), lambda width: blocks(width, extra), tmp_path / "t.tsv")

    store = write_table_stream(tmp_path / "ok.zarr", stream(False), "x", chunk_features=2)
    assert ended == [2] and store.n_features == 4
    with pytest.raises(ValueError, match="more than its 4 features"):
        write_table_stream(tmp_path / "extra.zarr", stream(True), "x", chunk_features=2)
    assert not (tmp_path / "extra.zarr").exists()


def test_a_cold_cache_reads_the_table_beside_its_checksum(tmp_path, monkeypatch, small_study: SimulatedStudy) -> None:
    """No converted store of the layer: the reader's first pass runs while another thread takes the checksum. A store
    there: the checksum first, and a store still valid is reused without reading the table. The same store either way."""
    table, cache = small_study.out_dir / "species.tsv", tmp_path / "cache"
    hashed_in, first_passes = [], []
    checksum, stream = ingest.file_checksum, ingest.stream_abundance_table
    monkeypatch.setattr(ingest, "file_checksum", lambda path: hashed_in.append(threading.current_thread().name) or checksum(path))
    monkeypatch.setattr(ingest, "stream_abundance_table", lambda *a, **k: first_passes.append(1) or stream(*a, **k))
    cold, cold_sum = ingest.layer_store(table, "auto", "species", cache, "species", None)
    assert hashed_in[0].startswith("scalable-assoc-checksum") and len(first_passes) == 1
    warm, warm_sum = ingest.layer_store(table, "auto", "species", cache, "species", None)
    assert hashed_in[-1] == threading.current_thread().name and len(first_passes) == 1  # reused: the table is not read
    assert (warm.path, warm_sum) == (cold.path, cold_sum) == (cold.path, checksum(table))

    def failing_first_pass() -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):  # raised once the checksum is done
        ingest.checksum_beside(table, failing_first_pass)


@pytest.mark.parametrize("layer", ["gut brain: modules", "[species]*", ".hidden", "../up"])
def test_a_layers_store_is_a_plain_file_of_the_cache_whatever_its_name(tmp_path, small_study: SimulatedStudy, layer: str) -> None:
    """The plan refuses names that could leave the output folder; any name from Python still labels a file inside the
    cache, and a second call finds and reuses it (glob characters in the name are not a pattern)."""
    table, cache = small_study.out_dir / "species.tsv", tmp_path / "cache"
    cold, _ = ingest.layer_store(table, "auto", "species", cache, layer, None)
    assert cold.path.parent == cache and not cold.path.name.startswith(".") and "/" not in cold.path.name
    warm, _ = ingest.layer_store(table, "auto", "species", cache, layer, None)
    assert warm.path == cold.path and [p.name for p in tmp_path.iterdir()] == ["cache"]
