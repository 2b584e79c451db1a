"""Shared fixtures: a real 2-process Dask cluster and small simulated studies.

The cluster is started once per session (worker processes, not threads) and
every end-to-end test connects to it, so the suite exercises real task
serialisation and transfer at the cost of one start-up.
"""

from __future__ import annotations

import logging
import re

import pytest
from distributed import Client, LocalCluster

from scalable_assoc import testing
from scalable_assoc.simulate import SimulatedStudy, simulate_study


@pytest.fixture(scope="session")
def dask_cluster() -> LocalCluster:
    # Loopback only and no dashboard (its HTTP server on a free loopback port); plain tcp://, so tests can connect by address.
    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
        scheduler_kwargs={"dashboard": False},
        silence_logs=logging.ERROR,
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


# Comparing two results.parquet files (used by test_distributed.py, test_resume.py and
# others): scalable_assoc.testing.results_differences says how.
@pytest.fixture(scope="session")
def assert_results_equal():
    """``assert_results_equal(expected, actual)``: results tables identical (floats to relative 1e-12)."""
    return testing.assert_results_equal


#: Lines that may come before a refusal met in a table: converting the tables, and the work on layers whose tables
#: were converted before it (a run sends each layer to the cluster as soon as its table is ready).
PROGRESS_BEFORE_REFUSAL = re.compile(
    r"\s*converting \S+: \d+/\d+ feature blocks \(\d+%\)"
    r"|\s*layer '[^']+': per-sample sums"
    r"|\s*filtering \(.*\): \d+/\d+ blocks"
    r"|first task result [\d.]+s after the command started$"
)


def error_lines(stderr: str) -> list[str]:
    """The lines of ``stderr`` but the progress that may come before a refusal (:data:`PROGRESS_BEFORE_REFUSAL`)."""
    return [line for line in stderr.strip().splitlines() if not PROGRESS_BEFORE_REFUSAL.match(line)]
