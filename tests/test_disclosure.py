"""What leaves a cohort: the carrier rule of sumstats, and signed sidecars.

- Carriers: ``sumstats`` withholds (from the summary file and the cross-products
  alike) a row whose model has fewer than ``--min-cell-count`` participants with
  the feature, or a non-zero cell of present/absent x case/control below it,
  from the run's carrier counts and whatever the run's own ``min_carriers`` (the
  run here uses ``min_carriers: 0`` and reports every row with an estimate).
- Signatures: ``sumstats --sign-key`` signs the sidecar (HMAC-SHA256 with a
  shared secret, or Ed25519); ``meta`` / ``pool --verify-key`` refuse files whose
  signature is missing, made with another key, or no longer matches, as an
  attacker who edits a value and rewrites its checksum would leave it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from scalable_assoc.engine.run import run_study
from scalable_assoc.engine.sufficient import sufficient_statistics
from scalable_assoc.results.sumstats import DisclosureRules, read_run, sufficient_path, write_sumstats

CARRIER_REASON = "fewer than 3 participants with or without the feature (overall or among cases or controls)"


def _quiet(_message: str) -> None:
    pass


@pytest.fixture(scope="module")
def carriers_run(tmp_path_factory: pytest.TempPathFactory, client) -> Path:
    """60 participants (20 cases); features carried by 1, 2 and 3 controls, by 11 controls and one case, and a common one."""
    folder = tmp_path_factory.mktemp("carriers")
    rng = np.random.default_rng(21)
    n = 60
    case = (np.arange(n) % 3 == 0).astype(int)
    metadata = pd.DataFrame(
        {"sample_id": [f"P{i:02d}" for i in range(n)], "age": rng.normal(50, 8, n).round(1), "bmi": rng.normal(25, 3, n).round(1), "case": case}
    )
    controls, cases = np.flatnonzero(case == 0), np.flatnonzero(case == 1)
    layer = pd.DataFrame({"sample_id": metadata["sample_id"]})
    for carriers in (1, 2, 3):
        values = np.zeros(n)
        values[controls[:carriers]] = rng.uniform(1, 5, carriers)
        layer[f"carried_by_{carriers}"] = values
    one_case = np.zeros(n)
    one_case[np.concatenate([controls[:11], cases[:1]])] = rng.uniform(1, 5, 12)
    layer["one_carrying_case"] = one_case
    common = np.zeros(n)
    common[np.concatenate([controls[::2], cases[::2]])] = rng.uniform(1, 5, 30)
    layer["common"] = common
    metadata.to_csv(folder / "metadata.tsv", sep="\t", index=False)
    layer.to_csv(folder / "layer.tsv", sep="\t", index=False)
    (folder / "plan.yaml").write_text(
        """
data: {metadata: metadata.tsv, layers: {values: {path: layer.tsv, format: wide}}}
preprocess: {transform: log, pseudocount: 0.5}
exposures: {case: {column: case}, bmi: {column: bmi}}
adjustments: {base: [age]}
models: [lm]
min_cases: 5
min_carriers: 0
"""
    )
    run_study(folder / "plan.yaml", folder / "out", client=client, log=_quiet)
    return folder / "out"


@pytest.fixture(scope="module")
def cross_products(carriers_run: Path, client):
    return sufficient_statistics(carriers_run, client=client, log=_quiet)


def test_the_run_reports_every_carrier_count(carriers_run: Path) -> None:
    results = pd.read_parquet(carriers_run / "results.parquet").set_index(["exposure", "feature"])
    # min_carriers 0: the run itself estimates the single carrier's row (the hostile reviewer's export).
    assert results.loc[("case", "carried_by_1"), "status"] == "ok" and results.loc[("case", "carried_by_1"), "n_present"] == 1
    assert results.loc[("case", "one_carrying_case"), "n_present_cases"] == 1
    assert results.loc[("case", "common"), "n_present_cases"] == 10 and results.loc[("case", "common"), "n_present"] == 30
    assert results.loc[("bmi", "common"), ["n_present_cases"]].isna().all()


def test_carriers_1_2_3_are_withheld_withheld_exported(carriers_run: Path, cross_products, tmp_path: Path) -> None:
    sidecar = write_sumstats(read_run(carriers_run), "north", tmp_path / "north.parquet", DisclosureRules(), cross_products)
    summary = pd.read_parquet(tmp_path / "north.parquet")
    exported = set(zip(summary["exposure"], summary["feature"], strict=True))
    assert exported == {
        ("case", "carried_by_3"), ("case", "common"),  # three carrying controls: every non-zero cell at least 3
        ("bmi", "carried_by_3"), ("bmi", "one_carrying_case"), ("bmi", "common"),  # no case/control table for a continuous exposure
    }
    report = sidecar["withheld"]["summary"]
    # carried_by_1, carried_by_2 under both exposures, one_carrying_case under the binary one
    assert report["withheld_by_reason"] == {CARRIER_REASON: 5} and report["rows_withheld"] == 5 and report["rows_without_estimate"] == 0

    # The cross-products: the same rows withheld, keyed by analysis and feature; no single carrier's products leave.
    products = pq.read_table(sufficient_path(tmp_path / "north.parquet")).to_pandas()
    assert set(zip(products["exposure"], products["feature"], strict=True)) == exported
    assert "carried_by_1" not in set(products["feature"])
    assert sidecar["withheld"]["sufficient"]["withheld_by_reason"] == {CARRIER_REASON: 5}
    assert sidecar["withheld"]["sufficient"]["rows"] == 10

    # --min-cell-count 0 turns the rule off (the run's own rule was already off).
    loose = write_sumstats(read_run(carriers_run), "north", tmp_path / "loose.parquet", DisclosureRules(min_cell_count=0), cross_products)
    assert loose["withheld"]["summary"]["rows_withheld"] == 0 and len(pd.read_parquet(tmp_path / "loose.parquet")) == 10
    assert loose["withheld"]["sufficient"]["rows_exported"] == 10


def test_results_without_carrier_counts_are_withheld(carriers_run: Path, tmp_path: Path) -> None:
    """Results of an older version (no n_present_cases) cannot show a row is safe: withheld, saying why."""
    run = read_run(carriers_run)
    older = run.results.drop(columns=["n_present_cases"])
    sidecar = write_sumstats(type(run)(run.run_dir, run.manifest, run.plan, older, run.features), "north", tmp_path / "old.parquet", DisclosureRules())
    reasons = sidecar["withheld"]["summary"]["withheld_by_reason"]
    # binary rows lack their cell counts; continuous rows still have their margins
    assert reasons["carrier counts not recorded (results of an older version; run again)"] == 5
    assert set(pd.read_parquet(tmp_path / "old.parquet")["exposure"]) == {"bmi"}
