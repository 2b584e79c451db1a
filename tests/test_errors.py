"""Bad input: a one-paragraph message naming the file, plan key or column; exit 2; no traceback; no results.

The contract (README "Exit status"): every bad input ends the run before any
result is written, with a message on stderr that says what is wrong and where.
Most cases call :func:`scalable_assoc.cli.main` in-process, because they fail
before a Dask cluster starts; a few run the real command in a subprocess to
prove the exit status and the absence of a traceback end to end. The runs that
must succeed (``intersect``, missing cells) restrict the plan to one small
analysis so that a cluster with one worker finishes in a few seconds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import error_lines

from scalable_assoc.cli import main
from scalable_assoc.io.store import open_store
from scalable_assoc.simulate import simulate_study

#: Files a failed run must not leave behind (they would look like a finished study).
RESULT_FILES = ("results.parquet", "manifest.json")
ERROR_PREFIX = "scalable-assoc run: error: "
#: One small analysis for the runs that must succeed: few chunks, one design.
SMALL_ANALYSIS = "analyses: [{exposures: [MDD], adjustments: [base], layers: [pathways]}]\n"


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------
@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A fresh 300-participant study folder (files written in ~0.1 s) whose plan allows 3 cases."""
    simulated = simulate_study(tmp_path / "study", participants=300, n_species=50, n_pathways=10)
    # 300 participants give 5 dysthymia / GAD cases: below the default minimum of 10.
    with simulated.plan_path.open("a") as plan:
        plan.write("min_cases: 3\n")
    return simulated.out_dir


def replace(path: Path, old: str, new: str) -> None:
    """Replace the first ``old`` in a text file, failing loudly if it is not there (a stale test)."""
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def append(path: Path, text: str) -> None:
    """Append text to a file."""
    with path.open("a") as handle:
        handle.write(text)


def set_cell(path: Path, row_contains: str, column: int, value: str) -> tuple[str, str]:
    """Overwrite one tab-separated cell in the first line containing ``row_contains``.

    Returns (row ID, column header) of the cell, as the error message should name them.
    """
    lines = path.read_text().splitlines()
    header = next(line for line in lines if not line.startswith("#mpa")).split("\t")
    index = next(i for i, line in enumerate(lines) if row_contains in line and not line.startswith(("#", "sample_id", "clade_name")))
    cells = lines[index].split("\t")
    cells[column] = value
    lines[index] = "\t".join(cells)
    path.write_text("\n".join(lines) + "\n")
    return cells[0].rsplit("|", 1)[-1], header[column]


def assert_no_results(out: Path) -> None:
    """A failed run leaves nothing that looks like a finished study."""
    for name in RESULT_FILES:
        assert not (out / name).exists(), f"a failed run left {out / name}"


def fails(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str, plan: Path | None = None) -> str:
    """Run ``scalable-assoc run`` in-process; assert exit 2, one error paragraph, no results; return the message."""
    out = folder / "out"
    code = main(["run", str(plan or folder / "plan.yaml"), "--out", str(out), "--workers", "1", *extra])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    # Nothing but the message: these inputs are refused before any work (or cluster) starts, or, for a
    # value met while converting a table, with no more than the progress of the tables and of the layers
    # converted before it (see error_lines).
    lines = error_lines(err)
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), err
    assert_no_results(out)
    return lines[0][len(ERROR_PREFIX) :]


def succeeds(folder: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Run ``scalable-assoc run`` in-process on a one-worker cluster; assert exit 0 and results; return stderr."""
    out = folder / "out"
    code = main(["run", str(folder / "plan.yaml"), "--out", str(out), "--workers", "1", *extra])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "Traceback" not in err
    assert (out / "results.parquet").is_file() and (out / "manifest.json").is_file()
    return err


def run_command(*args: str) -> subprocess.CompletedProcess[str]:
    """The real command in a fresh interpreter, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "scalable_assoc.cli", *args], capture_output=True, text=True, timeout=120, check=False)


def command_fails(plan: Path, out: Path) -> str:
    """Run the real command in a subprocess; assert exit 2, no traceback, no results; return the message."""
    finished = run_command("run", str(plan), "--out", str(out), "--workers", "1")
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    lines = error_lines(finished.stderr)
    assert len(lines) == 1 and lines[0].startswith(ERROR_PREFIX), finished.stderr
    assert_no_results(out)
    return lines[0][len(ERROR_PREFIX) :]


# --------------------------------------------------------------------------------------
# 1. Sample IDs of abundance tables and metadata that do not match
# --------------------------------------------------------------------------------------
def drop_last_metadata_rows(folder: Path, n: int) -> None:
    """Remove the last ``n`` participants from metadata.tsv (they stay in every abundance table)."""
    path = folder / "metadata.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-n]) + "\n")


def test_sample_mismatch_says_how_many_and_names_them(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drop_last_metadata_rows(study, 7)
    # Refused after the tables were converted into OUT/.scalable_assoc: the folder exists, results do not.
    message = fails(study, capsys)
    assert (study / "out" / ".scalable_assoc").is_dir()
    assert "sample IDs do not match" in message
    assert "7 sample(s)" in message and "species.tsv" in message
    assert "LL000294, LL000295, LL000296" in message  # the first few, by name
    assert "sample_mismatch: intersect" in message and "--intersect-samples" in message  # and the way out


def test_sample_mismatch_intersect_in_plan_runs_with_a_warning(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    drop_last_metadata_rows(study, 7)
    replace(study / "plan.yaml", "data:\n", "data:\n  sample_mismatch: intersect\n")
    append(study / "plan.yaml", SMALL_ANALYSIS)
    err = succeeds(study, capsys)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warnings and "293 shared samples" in warnings[0] and "LL000294" in warnings[0], err
    manifest = json.loads((study / "out" / "manifest.json").read_text())
    assert manifest["layers"]["pathways"]["samples"] == 293


def test_intersect_samples_flag_runs_with_a_warning(study: Path) -> None:
    """Subprocess: the real command exits 0 with the flag, and says what it dropped."""
    drop_last_metadata_rows(study, 7)
    append(study / "plan.yaml", SMALL_ANALYSIS)
    out = study / "out"
    finished = run_command("run", str(study / "plan.yaml"), "--out", str(out), "--workers", "1", "--intersect-samples")
    assert finished.returncode == 0, finished.stderr
    assert "Traceback" not in finished.stderr
    assert any(line.startswith("warning:") and "293 shared samples" in line for line in finished.stderr.splitlines()), finished.stderr
    assert (out / "results.parquet").is_file()


# --------------------------------------------------------------------------------------
# 2. Duplicate sample and feature IDs
# --------------------------------------------------------------------------------------
def test_duplicate_sample_in_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study / "metadata.tsv"
    append(path, path.read_text().splitlines()[3] + "\n")
    message = fails(study, capsys)
    assert "metadata.tsv" in message and "duplicate sample IDs" in message and "LL000003" in message


def test_duplicate_sample_in_wide_table(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study / "pathways.tsv"
    append(path, path.read_text().splitlines()[3] + "\n")
    message = fails(study, capsys)
    assert "pathways.tsv" in message and "duplicate sample IDs" in message and "LL000003" in message


def test_duplicate_feature_column_in_wide_table(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pandas would read the second 'MGB001' as 'MGB001.1', a new feature; the header must be checked as written.
    path = study / "gbm.tsv"
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    path.write_text("".join("\t".join(cells + [cells[1]]) + "\n" for cells in lines))
    message = fails(study, capsys)
    assert "gbm.tsv" in message and "duplicate feature IDs" in message and "MGB001" in message


def test_duplicate_species_row_in_metaphlan_table(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study / "species.tsv"
    species_row = next(line for line in path.read_text().splitlines() if "|s__" in line)
    append(path, species_row + "\n")
    message = fails(study, capsys)
    species = species_row.split("\t")[0].rsplit("|", 1)[-1]
    assert "species.tsv" in message and "duplicate feature IDs" in message and species in message


def test_duplicate_sample_column_in_metaphlan_table(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Otherwise read as a new sample 'LL000001.1' and reported as a puzzling sample mismatch.
    path = study / "species.tsv"
    lines = path.read_text().splitlines()
    path.write_text("".join((line if line.startswith("#") else line + "\t" + line.split("\t")[1]) + "\n" for line in lines))
    message = fails(study, capsys)
    assert "species.tsv" in message and "duplicate sample IDs" in message and "LL000001" in message


# --------------------------------------------------------------------------------------
# 3. Invalid abundance values; empty cells and NA are missing values
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "problem"), [("-1", "negative"), ("abc", "non-numeric"), ("inf", "infinite")])
def test_invalid_value_in_wide_table(study: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str) -> None:
    sample, feature = set_cell(study / "pathways.tsv", "LL000005", 3, value)
    message = fails(study, capsys)
    assert "pathways.tsv" in message and f"{problem} value" in message
    assert f"sample '{sample}'" in message and f"feature '{feature}'" in message
    assert "np.float64" not in message  # the value as written, not a numpy repr


@pytest.mark.parametrize(("value", "problem"), [("-1", "negative"), ("abc", "non-numeric"), ("inf", "infinite")])
def test_invalid_value_in_metaphlan_table(study: Path, capsys: pytest.CaptureFixture[str], value: str, problem: str) -> None:
    species, sample = set_cell(study / "species.tsv", "|s__", 3, value)
    message = fails(study, capsys)
    assert "species.tsv" in message and f"{problem} value" in message
    assert f"feature '{species}'" in message and f"sample '{sample}'" in message


def test_a_separator_at_the_end_of_every_row_is_refused(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One field more in every row than in the header, the last one empty: not R's header without a row-name column."""
    path = study / "pathways.tsv"
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([header, *(row + "\t" for row in rows)]) + "\n")
    message = fails(study, capsys)
    assert "pathways.tsv" in message and "Remove the trailing separators" in message


def test_a_header_without_the_row_name_column_is_read_as_r_writes_it(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """R's write.table leaves the row names' column out of the header: every row one field longer, read by position."""
    path = study / "gbm.tsv"
    before = pd.read_csv(path, sep="\t", index_col=0)
    header, *rows = path.read_text().splitlines()
    path.write_text("\n".join([header.split("\t", 1)[1], *rows]) + "\n")
    succeeds(study, capsys)
    stored = open_store(next((study / "out" / ".scalable_assoc" / "stores").glob("gbm*.zarr")))
    assert list(stored.feature_ids) == list(before.columns)


def test_of_two_bad_tables_the_first_in_plan_order_is_named(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Tables of different files are converted two at a time; the error is still the one a plan-order pass meets first."""
    set_cell(study / "gbm.tsv", "LL000010", 5, "-0.5")
    set_cell(study / "species.tsv", "|s__", 3, "abc")
    message = fails(study, capsys)
    assert "species.tsv" in message and "non-numeric value" in message and "gbm.tsv" not in message


def test_negative_value_exits_2_in_a_subprocess(study: Path) -> None:
    sample, feature = set_cell(study / "gbm.tsv", "LL000010", 5, "-0.5")
    message = command_fails(study / "plan.yaml", study / "out")
    assert "gbm.tsv" in message and "negative" in message and "-0.5" in message
    assert f"sample '{sample}'" in message and f"feature '{feature}'" in message


def test_empty_cell_and_na_are_missing_values(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metadata = pd.read_csv(study / "metadata.tsv", sep="\t", dtype={"sample_id": str})
    in_model = metadata[(metadata["no_disorder"] == 1) & metadata[["age", "sex", "bmi", "bristol_stool", "read_depth"]].notna().all(axis=1)]
    first, second = in_model["sample_id"].iloc[:2]
    # Column 2 is a common pathway (it survives the 5% prevalence filter).
    _, feature = set_cell(study / "pathways.tsv", first, 2, "")
    set_cell(study / "pathways.tsv", second, 2, "NA")
    set_cell(study / "species.tsv", "|s__", 4, "NA")
    # Missing values under test, not the carrier rule (few MDD cases: small presence x case cells).
    append(study / "plan.yaml", SMALL_ANALYSIS + "min_carriers: 0\n")
    succeeds(study, capsys)
    results = pd.read_parquet(study / "out" / "results.parquet")
    row = results[results["feature"] == feature].iloc[0]
    assert row["status"] == "ok"
    # Both participants are left out for that feature only.
    assert row["n"] == results["n"].max() - 2


# --------------------------------------------------------------------------------------
# 4. Plan keys, columns, layers and sets that do not exist; non-numeric covariates
# --------------------------------------------------------------------------------------
def test_unknown_top_level_key(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "preprocess:", "preproces:")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "unknown key 'preproces'" in message and "Did you mean 'preprocess'?" in message


def test_unknown_nested_key(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "alpha: 0.05", "alpah: 0.05")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "unknown key 'fdr.alpah'" in message and "Did you mean 'alpha'?" in message


def test_cluster_robust_standard_errors_need_a_cluster_column(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append(study / "plan.yaml", "lm: {se: cluster}\n")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "'lm.se'" in message and "cluster: <metadata column>" in message


def test_ols_option_keys_and_values_are_checked(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = study / "plan.yaml"
    text = plan.read_text() + "cluster: family_id\nmodels: [lm, lm_nonzero]\n"
    cases = {
        "lm: {se: cluster, refrence: normal}\n": ["unknown key 'lm.refrence'", "Did you mean 'reference'?"],
        "lm_nonzero: {se: robust}\n": ["'lm_nonzero.se'", "classical, cluster", "'robust'"],
        "lm: {se: cluster, reference: z}\n": ["'lm.reference'", "t, normal"],
        "lm: {reference: normal}\n": ["'lm.reference'", "cluster-robust standard errors only"],
    }
    for extra, expected in cases.items():
        plan.write_text(text + extra)
        message = fails(study, capsys)
        assert all(part in message for part in expected), (extra, message)
    plan.write_text(text.replace("models: [lm, lm_nonzero]", "models: [lm]") + "lm_nonzero: {se: cluster}\n")
    message = fails(study, capsys)
    assert "'lm_nonzero'" in message and "no layer fits" in message


def test_adjustment_column_not_in_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "base: [age, sex, bmi,", "base: [age, sex, bmii,")
    message = fails(study, capsys)
    # Blamed on the set that lists it, not on the sets built on it first.
    assert "'adjustments.base'" in message and "'bmii'" in message and "metadata.tsv" in message
    assert "Did you mean 'bmi'?" in message


def test_query_column_not_in_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", '{cases: "MDD == 1"', '{cases: "MDDD == 1"')
    message = fails(study, capsys)
    assert "'exposures.MDD.cases'" in message and "'MDDD'" in message and "metadata.tsv" in message
    assert "Did you mean 'MDD'?" in message


def test_exposure_column_not_in_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "exposures:\n", "exposures:\n  neuro: {column: neuroticsm}\n")
    message = fails(study, capsys)
    assert "'exposures.neuro.column'" in message and "'neuroticsm'" in message and "metadata.tsv" in message
    assert "Did you mean 'neuroticism'?" in message


def test_unknown_layer_in_analyses(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append(study / "plan.yaml", "analyses: [{layers: [nope]}]\n")
    message = fails(study, capsys)
    assert "'analyses[0].layers'" in message and "'nope'" in message and "species, pathways, gbm" in message


def test_unknown_adjustment_set_in_analyses(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    append(study / "plan.yaml", "analyses: [{exposures: [MDD], adjustments: [bse]}]\n")
    message = fails(study, capsys)
    assert "'analyses[0].adjustments'" in message and "'bse'" in message and "base, ssri" in message


def test_non_numeric_covariate_not_declared_categorical(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "categorical: [sex]", "categorical: []")
    message = fails(study, capsys)
    assert "covariate 'sex'" in message and "metadata.tsv" in message and "not numeric" in message
    assert "'female'" in message and "covariates.categorical" in message


def test_reference_level_of_a_column_not_declared_categorical(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "categorical: [sex]", "categorical: [sex]\n  reference: {sex: male, bristol_stool: 4}")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "'covariates.reference.bristol_stool'" in message
    assert "not listed in covariates.categorical" in message and "(listed: sex)" in message


def test_reference_level_not_in_the_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "categorical: [sex]", "categorical: [sex]\n  reference: {sex: Female}")
    message = fails(study, capsys)
    assert "'covariates.reference.sex'" in message and "'Female'" in message and "column 'sex'" in message and "metadata.tsv" in message
    assert "levels found: 'female', 'male'" in message and "Did you mean 'female'?" in message


# --------------------------------------------------------------------------------------
# 5-6. Exposures without (enough) cases
# --------------------------------------------------------------------------------------
def test_query_that_selects_no_cases(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", '{cases: "MDD == 1"', '{cases: "MDD == 7"')
    message = fails(study, capsys)
    assert "'exposures.MDD.cases'" in message and "'MDD == 7'" in message and "selects no participants" in message
    assert "metadata.tsv" in message


def test_fewer_cases_than_min_cases(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    replace(study / "plan.yaml", "min_cases: 3", "min_cases: 6")  # dysthymia has 5 cases
    message = fails(study, capsys)
    assert "exposure 'dysthymia'" in message and "only 5 cases" in message and "min_cases = 6" in message


# --------------------------------------------------------------------------------------
# 7. YAML syntax error
# --------------------------------------------------------------------------------------
def test_yaml_syntax_error_gives_the_line(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = study / "plan.yaml"
    lines = plan.read_text().splitlines()
    line = next(i for i, text in enumerate(lines) if text.startswith("name:")) + 1
    replace(plan, "name: lifelines-internalizing", "name: lifelines: internalizing")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "YAML syntax error" in message and f"line {line}," in message


def test_yaml_repeated_key_is_refused(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Plain YAML keeps the last of two 'MDD:' silently, dropping an exposure.
    replace(study / "plan.yaml", "  AnyDep:", "  MDD:")
    message = fails(study, capsys)
    assert "plan.yaml" in message and "key 'MDD' appears twice" in message and "line" in message


# --------------------------------------------------------------------------------------
# 8. Missing files
# --------------------------------------------------------------------------------------
def test_missing_metadata_file(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (study / "metadata.tsv").unlink()
    message = fails(study, capsys)
    assert "metadata file" in message and "metadata.tsv" in message and "does not exist" in message and "data.metadata" in message


def test_missing_layer_file(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (study / "gbm.tsv").unlink()
    message = fails(study, capsys)
    assert "layer 'gbm'" in message and "'data.layers.gbm'" in message and "gbm.tsv" in message and "does not exist" in message


def test_missing_plan_file_exits_2_in_a_subprocess(tmp_path: Path) -> None:
    message = command_fails(tmp_path / "no-such-plan.yaml", tmp_path / "out")
    assert "no-such-plan.yaml" in message and "does not exist" in message
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# Tables that read "fine" but mean something else
# --------------------------------------------------------------------------------------
def test_wide_table_without_sample_id_column(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Saved without its ID column: the first pathway's values would become sample IDs.
    path = study / "pathways.tsv"
    path.write_text("".join("\t".join(line.split("\t")[1:]) + "\n" for line in path.read_text().splitlines()))
    message = fails(study, capsys)
    assert "pathways.tsv" in message and "not sample IDs" in message and "first column" in message


def test_short_line_in_wide_table(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # pandas pads a short line with missing values: a truncated row would silently lose data.
    path = study / "pathways.tsv"
    lines = path.read_text().splitlines()
    lines[7] = "\t".join(lines[7].split("\t")[:-2])
    path.write_text("\n".join(lines) + "\n")
    message = fails(study, capsys)
    # The line number and field counts, not the line's text (the file need not be a table: README "What a plan can do").
    assert "pathways.tsv" in message and "line 8 (sample row) has 9 fields but the header has 11" in message and "LL000007" not in message


def test_short_line_in_metadata(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = study / "metadata.tsv"
    lines = path.read_text().splitlines()
    lines[4] = "\t".join(lines[4].split("\t")[:-1])
    path.write_text("\n".join(lines) + "\n")
    message = fails(study, capsys)
    assert "metadata.tsv" in message and "line 5 (participant row) has" in message and "LL000004" not in message


def test_covariate_without_any_value(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Every participant would leave every model: a results table of statuses and nothing else.
    path = study / "metadata.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0] + "\tdiet"] + [line + "\t" for line in lines[1:]]) + "\n")
    replace(study / "plan.yaml", "read_depth]", "read_depth, diet]")
    message = fails(study, capsys)
    assert "covariate 'diet'" in message and "no values" in message and "metadata.tsv" in message


def test_compressed_tables_still_read(study: Path) -> None:
    """The raw-header checks look inside .gz files the way pandas does (no false duplicates, right format)."""
    import gzip

    from scalable_assoc.io.metadata import load_metadata
    from scalable_assoc.io.tables import read_abundance_table

    for name in ("metadata.tsv", "species.tsv", "pathways.tsv"):
        (study / f"{name}.gz").write_bytes(gzip.compress((study / name).read_bytes()))
    assert load_metadata(study / "metadata.tsv.gz", "sample_id").shape[0] == 300
    species = read_abundance_table(study / "species.tsv.gz")
    assert len(species.sample_ids) == 300 and species.feature_ids[0].startswith("s__")
    pathways = read_abundance_table(study / "pathways.tsv.gz")
    assert pathways.values.shape == (300, 10)


def test_failed_rerun_does_not_leave_earlier_results(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Results of an earlier run into the same folder would look like the answer of the failed one."""
    append(study / "plan.yaml", SMALL_ANALYSIS)
    succeeds(study, capsys)
    drop_last_metadata_rows(study, 7)
    fails(study, capsys)  # asserts no results.parquet / manifest.json
    assert not (study / "out" / "all_results.tsv").exists()


@pytest.mark.parametrize(("column", "value"), [(3, "inf"), (3, "-Infinity"), (3, "1e308")])
def test_infinite_or_huge_covariate_exits_2_naming_it(study: Path, capsys: pytest.CaptureFixture[str], column: int, value: str) -> None:
    """bmi (column 3) = inf used to reach the QR as 'covariates must be finite' with a traceback."""
    participant, header = set_cell(study / "metadata.tsv", "LL000002", column, value)
    message = fails(study, capsys)
    assert f"column '{header}'" in message and participant in message and "out-of-range" in message


def test_infinite_or_huge_numeric_exposure_exits_2(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An inf exposure ended in a LinAlgError; 1e308 ran to exit 0 with overflow warnings and wrong statuses."""
    replace(study / "plan.yaml", "exposures:\n", "exposures:\n  neuro: {column: neuroticism}\n")
    for value in ("inf", "1e308"):
        participant, header = set_cell(study / "metadata.tsv", "LL000003", 21, value)
        assert header == "neuroticism"
        message = fails(study, capsys)
        assert "exposure 'neuro'" in message and participant in message and "neuroticism" in message


def test_ingest_onto_an_existing_destination_exits_2_before_converting(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """It used to convert the whole table, then end in an OSError traceback renaming onto the store."""
    store = study / "gbm.zarr"
    assert main(["ingest", str(study / "gbm.tsv"), "--out", str(store)]) == 0
    capsys.readouterr()
    before = sorted(p.name for p in study.iterdir())
    for destination in (store, study / "metadata.tsv"):
        assert main(["ingest", str(study / "gbm.tsv"), "--out", str(destination)]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"--out {destination} already exists" in err
    assert sorted(p.name for p in study.iterdir()) == before, "no temporary store left behind"


def test_a_layer_mixing_percent_and_fractions_is_warned_about_naming_samples(study: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Half the samples in percent, half in fractions used to pass silently (betas moved by up to 0.85 under log)."""
    table = pd.read_csv(study / "pathways.tsv", sep="\t", index_col=0)
    assert np.allclose(table.sum(axis=1), 1.0)  # pathways are fractions
    scaled = table.index[::2][:20]
    table.loc[scaled] *= 100
    table.to_csv(study / "pathways.tsv", sep="\t")
    replace(study / "plan.yaml", "name: lifelines-internalizing", "name: lifelines-internalizing\n" + SMALL_ANALYSIS.rstrip())
    err = succeeds(study, capsys)
    warning = next(line for line in err.splitlines() if "mixes scales" in line)
    assert "layer 'pathways'" in warning and "20 samples sum to about 100 (percent)" in warning and str(scaled[0]) in warning
    assert sum("mixes scales" in line for line in err.splitlines()) == 1  # the species table (all percent) is not named
    manifest = json.loads((study / "out" / "manifest.json").read_text())
    assert any("layer 'pathways'" in w and "mixes scales" in w for w in manifest["warnings"])
