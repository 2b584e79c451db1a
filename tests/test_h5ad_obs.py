"""An .h5ad file's ``obs`` as the metadata table (``data.metadata: file.h5ad``).

``tests/data/h5ad/with_obs.h5ad`` was written by anndata itself (``make_fixtures.py``) with one obs column per
encoding a metadata column can have: integers, floats with NaN, categoricals of strings and of integers with a
missing value, nullable integers and booleans, nullable strings. Read as metadata it must equal the same values
written as a TSV, and a run with it must give the run with the TSV.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import DataError
from scalable_assoc.io.metadata import load_metadata
from scalable_assoc.testing import write_plan

FIXTURES = Path(__file__).parent / "data" / "h5ad"

PLAN = """
name: obs
data:
  metadata: {metadata}
  layers:
    counts: with_obs.h5ad
preprocess: {{min_prevalence: 0.0, transform: log, pseudocount: 1}}
exposures:
  bmi: {{column: bmi}}
  MDD: {{cases: "MDD == 1", controls: "MDD == 0"}}
  north: {{cases: "site == 'north'", controls: "site != 'north'"}}
covariates: {{categorical: [batch]}}
adjustments:
  base: [age]
  batch: [age, batch]
min_cases: 1
min_carriers: 0
"""


@pytest.fixture(scope="module")
def written():
    source = (FIXTURES / "make_fixtures.py").read_text()
    namespace: dict = {}
    exec(compile(source.replace("import anndata\n", ""), "make_fixtures.py", "exec"), namespace)  # the constants only
    return namespace


def _as_tsv(written: dict, path: Path) -> Path:
    frame = pd.DataFrame(written["OBS"], index=pd.Index(written["SAMPLES"], name="sample_id"))
    frame.to_csv(path, sep="\t", na_rep="NA")
    return path


def test_obs_reads_as_the_same_table_written_as_tsv(tmp_path: Path, written: dict) -> None:
    from_obs = load_metadata(FIXTURES / "with_obs.h5ad", "sample_id")
    from_tsv = load_metadata(_as_tsv(written, tmp_path / "metadata.tsv"), "sample_id")
    assert list(from_obs.columns) == list(written["OBS"]) and list(from_obs.index) == written["SAMPLES"]
    for column in from_tsv.columns:
        obs, tsv = from_obs[column], from_tsv[column]
        assert (obs.isna() == tsv.isna()).all(), column
        kept = ~tsv.isna()
        if pd.api.types.is_numeric_dtype(tsv):
            np.testing.assert_array_equal(obs[kept].astype(float).to_numpy(), tsv[kept].astype(float).to_numpy(), err_msg=column)
        else:
            assert list(obs[kept].astype(str)) == list(tsv[kept].astype(str)), column


def test_a_run_with_obs_metadata_equals_the_run_with_the_tsv(tmp_path: Path, written: dict, client) -> None:
    results = {}
    for name in ("obs", "tsv"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(FIXTURES / "with_obs.h5ad", folder / "with_obs.h5ad")
        metadata = "with_obs.h5ad" if name == "obs" else _as_tsv(written, folder / "metadata.tsv").name
        plan = write_plan(folder, PLAN.format(metadata=metadata))
        results[name] = run_study(plan, folder / "out", client=client).results
    obs, tsv = results["obs"], results["tsv"]
    assert set(obs["exposure"]) == {"bmi", "MDD", "north"} and (obs["status"] == "ok").any()
    pd.testing.assert_frame_equal(obs, tsv)


def test_obs_column_named_like_the_id_column_or_of_another_encoding(tmp_path: Path) -> None:
    path = tmp_path / "obs.h5ad"
    shutil.copy(FIXTURES / "with_obs.h5ad", path)
    with pytest.raises(DataError, match=r"obs has a column 'age' beside obs_names, which are the sample IDs"):
        load_metadata(path, "age")
    with h5py.File(path, "r+") as handle:
        handle["obs/bmi"].attrs["encoding-type"] = "awkward-array"
    with pytest.raises(DataError, match=rf"{path}: obs column 'bmi' \(encoding 'awkward-array'\) cannot be read as a metadata column"):
        load_metadata(path, "sample_id")
