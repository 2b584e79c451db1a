"""The methods benchmark end to end on a tiny grid: identical on 1 and 2 workers and after resume; null calibration.

One benchmark runs on its own 1-worker cluster; another, on the session's 2-worker
cluster, is interrupted after two replicates and resumed; the two must write the same
``methods_benchmark.parquet``. Its global-null scenario checks that every method's
p-values are uniform; a null scenario confounded by a drug checks that the test
catches a method that is not (the unadjusted ones).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from distributed import Client

from scalable_assoc.engine.methods_benchmark import MethodsBenchmark, benchmark_methods

pytestmark = pytest.mark.cluster

TINY = """\
defaults:
  participants: 300
  features: 40
  replicates: 2
  effects: {count: 8, size: 1.0}
scenarios:
  families: {families: {size: 3, icc: 0.2}}
  global_null: {global_null: true, replicates: 3}
  confounded_null: {global_null: true, drug: {odds_ratio: 8.0, features: 10, effect: 2.0}}
"""


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scenarios") / "tiny.yaml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory, scenario_file: Path) -> MethodsBenchmark:
    return benchmark_methods(tmp_path_factory.mktemp("one"), scenarios=scenario_file, workers=1)


def test_two_workers_after_an_interruption_give_the_same_table(
    tmp_path: Path, scenario_file: Path, client: Client, one_worker: MethodsBenchmark
) -> None:
    def stop_after_two(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    out = tmp_path / "two"
    with pytest.raises(KeyboardInterrupt):
        benchmark_methods(out, scenarios=scenario_file, client=client, on_progress=stop_after_two)
    finished = sorted(out.glob("replicates/*/r*/metrics.parquet"))
    assert 2 <= len(finished) < 7 and not (out / "methods_benchmark.parquet").exists()
    stamps = {path: path.stat().st_mtime_ns for path in finished}
    resumed = benchmark_methods(out, scenarios=scenario_file, client=client)
    assert resumed.replicates_reused == len(finished) and resumed.replicates_run == 7 - len(finished)
    assert {path: path.stat().st_mtime_ns for path in finished} == stamps  # finished replicates not recomputed
    expected = pd.read_parquet(one_worker.out_dir / "methods_benchmark.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(out / "methods_benchmark.parquet"), expected)
    pd.testing.assert_frame_equal(
        pd.read_parquet(out / "methods_summary.parquet"), pd.read_parquet(one_worker.out_dir / "methods_summary.parquet")
    )


def test_outputs(one_worker: MethodsBenchmark) -> None:
    out = one_worker.out_dir
    for name in ("methods_benchmark", "methods_summary", "null_calibration"):
        assert (out / f"{name}.parquet").exists() and (out / f"{name}.tsv").exists()
    assert (out / "power_vs_fdr.png").exists() and (out / "null_qq.png").exists() and (out / "manifest.json").exists()
    table = one_worker.per_replicate
    assert list(table.columns[:11]) == [
        "scenario",
        "replicate",
        "method",
        "layer",
        "model",
        "adjustment",
        "power",
        "fdr",
        "fdr_controlled",
        "auc",
        "sign_errors",
    ]
    methods = set(table["method"])
    for transform in ("clr", "log", "ast", "tss"):
        for adjustment in ("unadjusted", "adjusted"):
            assert {f"lm/{transform}/{adjustment}", f"lm_nonzero/{transform}/{adjustment}", f"joint/{transform}/{adjustment}"} <= methods
    assert {"prevalence/-/adjusted", "lmm/clr/adjusted"} <= methods
    assert set(table.loc[table["model"] == "lmm", "scenario"]) == {"families"}  # lmm only where there are families
    assert len(table[["scenario", "replicate"]].drop_duplicates()) == 7
    families = one_worker.summary[(one_worker.summary["scenario"] == "families") & (one_worker.summary["method"] == "lm/clr/adjusted")]
    assert families["power"].iloc[0] > 0.3  # 8 planted effects of log fold change 1 are found at 300 participants


def test_global_null_p_values_are_uniform_and_a_confounded_method_is_caught(one_worker: MethodsBenchmark) -> None:
    calibration = one_worker.null_calibration.set_index(["scenario", "method"])
    null = calibration.loc["global_null"]
    assert len(null) >= 26 and (null["n"] >= 100).all()
    bad = null[(null["binomial_p"] < 0.001) | (null["ks_p"] < 0.001)]
    assert bad.empty, bad
    confounded = calibration.loc["confounded_null"]
    # Unadjusted for the drug, its 10 features of 40 look associated with the disorder: not uniform, and the test says so.
    for transform in ("clr", "log"):
        assert confounded.loc[f"lm/{transform}/unadjusted", "binomial_p"] < 0.001
        assert confounded.loc[f"lm/{transform}/adjusted", "binomial_p"] > 0.001
