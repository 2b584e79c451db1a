"""scalable_assoc: microbiome feature x phenotype association studies at biobank scale.

Thousands of per-feature regressions are computed as a few matrix operations per
block of features, fanned out as Dask tasks over a feature-chunked Zarr store.

The library API (the ``scalable-assoc`` command calls the same functions)::

    simulate_study, simulate_cohorts    a Lifelines-shaped cohort (or several) with known truth
    load_plan                           read and check a plan file
    inspect_table                       what a table or store holds (format, ranks, prevalence, scale) and its plan entry
    ingest_table                        an abundance table as a feature-chunked Zarr store
    run_study                           every analysis of a plan, on a Dask cluster
    read_status                         how the run in an output folder stands
    write_report                        a finished run's figures and self-contained HTML report
    export_sumstats                     a run's summary statistics under disclosure control
    open_cohorts, read_mapping          cohorts' exported files, and a feature mapping, for combining
    meta_analyse, pool_cohorts          combine cohorts: meta-analysis, or an exact pooled lm
    write_key_pair                      an Ed25519 key pair to sign exports
    benchmark_methods                   compare transforms x models x adjustment on simulated scenarios

Importing the package is cheap: each name is imported from its module when it
is first used. Messages go to the ``scalable_assoc`` loggers (standard
:mod:`logging`); configure a handler to see progress.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:
    __version__ = version("scalable_assoc")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

#: Public name -> the module that defines it.
_EXPORTS = {
    "simulate_study": "scalable_assoc.simulate",
    "simulate_cohorts": "scalable_assoc.simulate",
    "SimulatedStudy": "scalable_assoc.simulate",
    "SimulatedCohorts": "scalable_assoc.simulate",
    "load_plan": "scalable_assoc.plan.schema",
    "Plan": "scalable_assoc.plan.schema",
    "ingest_table": "scalable_assoc.io.ingest",
    "inspect_table": "scalable_assoc.io.inspect",
    "TableInspection": "scalable_assoc.io.inspect",
    "run_study": "scalable_assoc.engine.run",
    "RunSummary": "scalable_assoc.engine.outputs",
    "read_status": "scalable_assoc.io.runstate",
    "RunStatus": "scalable_assoc.io.runstate",
    "write_report": "scalable_assoc.report.html",
    "export_sumstats": "scalable_assoc.engine.export",
    "DisclosureRules": "scalable_assoc.results.disclosure",
    "open_cohorts": "scalable_assoc.results.cohort_files",
    "read_mapping": "scalable_assoc.results.harmonise",
    "meta_analyse": "scalable_assoc.results.consortium",
    "pool_cohorts": "scalable_assoc.results.consortium",
    "CombinedSummary": "scalable_assoc.results.consortium",
    "write_key_pair": "scalable_assoc.results.signing",
    "benchmark_methods": "scalable_assoc.engine.methods_benchmark",
    "MethodsBenchmark": "scalable_assoc.engine.methods_benchmark",
    "UserInputError": "scalable_assoc.errors",
    "PlanError": "scalable_assoc.errors",
    "DataError": "scalable_assoc.errors",
    "ClusterFailure": "scalable_assoc.errors",
    "FolderInUse": "scalable_assoc.io.runstate",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from scalable_assoc.engine.export import export_sumstats as export_sumstats
    from scalable_assoc.engine.methods_benchmark import MethodsBenchmark as MethodsBenchmark
    from scalable_assoc.engine.methods_benchmark import benchmark_methods as benchmark_methods
    from scalable_assoc.engine.outputs import RunSummary as RunSummary
    from scalable_assoc.engine.run import run_study as run_study
    from scalable_assoc.errors import ClusterFailure as ClusterFailure
    from scalable_assoc.errors import DataError as DataError
    from scalable_assoc.errors import PlanError as PlanError
    from scalable_assoc.errors import UserInputError as UserInputError
    from scalable_assoc.io.ingest import ingest_table as ingest_table
    from scalable_assoc.io.inspect import TableInspection as TableInspection
    from scalable_assoc.io.inspect import inspect_table as inspect_table
    from scalable_assoc.io.runstate import FolderInUse as FolderInUse
    from scalable_assoc.io.runstate import RunStatus as RunStatus
    from scalable_assoc.io.runstate import read_status as read_status
    from scalable_assoc.plan.schema import Plan as Plan
    from scalable_assoc.plan.schema import load_plan as load_plan
    from scalable_assoc.report.html import write_report as write_report
    from scalable_assoc.results.cohort_files import open_cohorts as open_cohorts
    from scalable_assoc.results.consortium import CombinedSummary as CombinedSummary
    from scalable_assoc.results.consortium import meta_analyse as meta_analyse
    from scalable_assoc.results.consortium import pool_cohorts as pool_cohorts
    from scalable_assoc.results.disclosure import DisclosureRules as DisclosureRules
    from scalable_assoc.results.harmonise import read_mapping as read_mapping
    from scalable_assoc.results.signing import write_key_pair as write_key_pair
    from scalable_assoc.simulate import SimulatedCohorts as SimulatedCohorts
    from scalable_assoc.simulate import SimulatedStudy as SimulatedStudy
    from scalable_assoc.simulate import simulate_cohorts as simulate_cohorts
    from scalable_assoc.simulate import simulate_study as simulate_study


def __getattr__(name: str) -> Any:
    """Import a public name from its module on first use (so ``import scalable_assoc`` does not start Dask)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scalable_assoc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
