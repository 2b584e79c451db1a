"""The engine: the only package that imports dask/distributed. Cluster, graph, progress, resume, manifest.

``run_study`` and ``RunSummary`` are imported from their modules when first
used: a worker process that unpickles one of the engine's small modules (the
cluster's worker plugin, a task function) imports that module, not the whole
engine with pandas, zarr and scipy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"RunSummary": "scalable_assoc.engine.outputs", "run_study": "scalable_assoc.engine.run"}

__all__ = ["RunSummary", "run_study"]

if TYPE_CHECKING:
    from scalable_assoc.engine.outputs import RunSummary as RunSummary
    from scalable_assoc.engine.run import run_study as run_study


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
