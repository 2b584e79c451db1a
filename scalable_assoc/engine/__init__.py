"""The engine: the only package that imports dask/distributed. Cluster, graph, progress, resume, manifest."""

from scalable_assoc.engine.run import RunSummary, run_study

__all__ = ["RunSummary", "run_study"]
