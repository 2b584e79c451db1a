"""Shared fixtures: a real 2-process Dask cluster and small simulated studies.

The cluster is started once per session (worker processes, not threads) and
every end-to-end test connects to it, so the suite exercises real task
serialisation and transfer at the cost of one start-up.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from scalable_assoc.simulate import SimulatedStudy, simulate_study


@pytest.fixture(scope="session")
def dask_cluster() -> LocalCluster:
    # Loopback only and no dashboard (its HTTP server on a free loopback port); plain tcp://, so tests can connect by address.
    cluster = LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0", scheduler_kwargs={"dashboard": False}, silence_logs=logging.ERROR
    )
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def client(dask_cluster: LocalCluster) -> Client:
    with Client(dask_cluster) as dask_client:
        yield dask_client


@pytest.fixture(scope="session")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    """600 participants, all three layers, missing covariates and abundance cells."""
    study = simulate_study(
        tmp_path_factory.mktemp("small_study"), participants=600, seed=11, n_species=60, n_pathways=40, missing_abundance_fraction=0.002
    )
    # 600 participants give ~6 dysthymia cases; allow them (the default minimum is 10).
    with study.plan_path.open("a") as plan:
        plan.write("min_cases: 5\n")
    return study


def write_plan(folder: Path, text: str) -> Path:
    """Write a plan file into ``folder`` and return its path."""
    path = folder / "plan.yaml"
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------
# Comparing two results.parquet files (used by test_distributed.py and test_resume.py).
# --------------------------------------------------------------------------------------
RESULTS_RELATIVE_TOLERANCE = 1e-12


def results_differences(expected, actual, relative: float = RESULTS_RELATIVE_TOLERANCE) -> list[str]:
    """Differences between two results tables (pyarrow tables, pandas frames or paths).

    Strings and integers (nulls included) must be identical; floats must have the
    same nulls / NaNs and be equal to a relative ``relative`` (or exactly; ``relative=0``
    asks for bit-identical tables).

    ``beta`` and ``t`` are compared on the scale of their own precision: a slope is
    only known to the rounding of the sums it comes from, about 1e-16 of its standard
    error, so a beta of 1e-4 standard errors (t = 1e-4) that moves in its last bits
    when a block holds other features (the CLR sample sums and the BLAS kernels then
    group the same arithmetic differently) changes by ~5e-12 of itself.
    Their tolerance is therefore ``relative * max(|value|, se)`` for ``beta`` and
    ``relative * max(|t|, 1)`` for ``t``: still a relative 1e-12 for every estimate
    larger than its standard error. ``se``, ``p`` and ``q`` are plain relative.
    Returns a list of human-readable differences, empty when the tables agree.
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    def as_table(value) -> pa.Table:
        if isinstance(value, pa.Table):
            return value
        if isinstance(value, pd.DataFrame):
            return pa.Table.from_pandas(value, preserve_index=False)
        path = Path(value)
        return pq.read_table(path / "results.parquet" if path.is_dir() else path)

    left, right = as_table(expected), as_table(actual)
    problems: list[str] = []
    if left.column_names != right.column_names:
        return [f"columns differ: {left.column_names} != {right.column_names}"]
    if left.num_rows != right.num_rows:
        return [f"row counts differ: {left.num_rows} != {right.num_rows}"]
    for name in left.column_names:
        a, b = left.column(name).combine_chunks(), right.column(name).combine_chunks()
        if a.type != b.type:
            problems.append(f"{name}: types differ ({a.type} != {b.type})")
            continue
        if pa.types.is_floating(a.type):
            a_null = a.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
            b_null = b.is_null(nan_is_null=True).to_numpy(zero_copy_only=False)
            if not np.array_equal(a_null, b_null):
                problems.append(f"{name}: missing values differ in {int((a_null != b_null).sum())} rows (first row {int(np.argmax(a_null != b_null))})")
                continue
            x = a.to_numpy(zero_copy_only=False).astype(np.float64)[~a_null]
            y = b.to_numpy(zero_copy_only=False).astype(np.float64)[~b_null]
            scale = np.maximum(np.abs(x), np.abs(y))
            if name == "beta" and "se" in left.column_names:
                se = left.column("se").combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64)[~a_null]
                scale = np.fmax(scale, se)
            elif name == "t":
                scale = np.maximum(scale, 1.0)
            bad = (x != y) & ~(np.abs(x - y) <= relative * scale)
            if bad.any():
                worst = int(np.argmax(np.where(bad, np.abs(x - y) / np.where(scale > 0, scale, 1.0), 0.0)))
                problems.append(
                    f"{name}: {int(bad.sum())} values differ beyond relative {relative:g} "
                    f"(worst: {x[worst]!r} vs {y[worst]!r})"
                )
        elif not a.equals(b):
            diff = np.flatnonzero(~pc.fill_null(pc.equal(a, b), False).to_numpy(zero_copy_only=False) | (a.is_null().to_numpy(zero_copy_only=False) != b.is_null().to_numpy(zero_copy_only=False)))
            first = int(diff[0]) if diff.size else -1
            problems.append(f"{name}: {diff.size} values differ (first row {first}: {a[first] if first >= 0 else ''} vs {b[first] if first >= 0 else ''})")
    return problems


@pytest.fixture(scope="session")
def assert_results_equal():
    """``assert_results_equal(expected, actual)``: results tables identical (floats to relative 1e-12)."""

    def check(expected, actual, relative: float = RESULTS_RELATIVE_TOLERANCE) -> None:
        problems = results_differences(expected, actual, relative)
        assert not problems, "results differ:\n  " + "\n  ".join(problems)

    return check
