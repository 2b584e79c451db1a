"""The tasks as the client names them: keys, model views, and the worker functions they run, named without importing them.

The functions a task runs live in :mod:`scalable_assoc.engine.tasks`, beside
the numeric kernels they call (SciPy's linear algebra and special functions,
the models), which the workers import as they start
(:data:`~scalable_assoc.engine.worker_server.WORKER_PRELOAD`, the fork
server's preload). The client of a run only submits them: importing that
module there cost about 0.2 s of CPU on the way to the first task (SciPy 0.15 s,
the models), paid again by every worker's own import. Here each is a
:class:`WorkerFunction`, a module and a name that travel as two strings and
find the function in the process that calls it. The scheduler (in the client's
process for a local cluster) unpickles every task it is given and pickles it
again for a worker, so a function pickled by reference would import its module
in the client all the same.

Every name below but :class:`WorkerFunction` is the one a task runs or a key
it is given; :mod:`scalable_assoc.engine.tasks` has the functions themselves.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The module holding the functions the workers run for a run's tasks (with the kernels they call).
TASKS_MODULE = "scalable_assoc.engine.tasks"


@dataclass(frozen=True)
class WorkerFunction:
    """A task function named by ``module`` and ``name``: imported where it is called (a worker), never where it is submitted.

    Pickled as its two strings; a call imports ``module`` (already imported by a
    worker's preload: a dictionary lookup) and calls its ``name`` with the
    arguments given.
    """

    module: str
    name: str

    @property
    def __name__(self) -> str:  # what dask and distributed call a task's function in their messages
        return self.name

    def resolve(self) -> Callable[..., Any]:
        """The function itself (imports ``module`` if this process has not); ValueError unless ``module`` is :data:`TASKS_MODULE`."""
        # Checked where the module is imported: an unpickled reference is rebuilt without its constructor. Only our
        # client builds references, and only of the task functions; this says so rather than import what a reference names.
        if self.module != TASKS_MODULE:
            raise ValueError(f"a task names the function '{self.name}' of module '{self.module}', not of the task module {TASKS_MODULE}")
        function: Callable[..., Any] = getattr(importlib.import_module(self.module), self.name)
        return function

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.resolve()(*args, **kwargs)


def task_function(name: str) -> WorkerFunction:
    """The function ``name`` of :data:`TASKS_MODULE`, as the client submits it."""
    return WorkerFunction(TASKS_MODULE, name)


#: Prevalence counts and smallest positive value per feature of one block (``tasks.summarise_block``).
summarise_block = task_function("summarise_block")
#: Per-sample partial sums over one block's kept features (``tasks.sum_block``).
sum_block = task_function("sum_block")
#: One model view of one block and where its features are present (``tasks.model_block``).
model_block = task_function("model_block")
#: The fit task of a chunk whose block is a task of its own (``tasks.fit_chunk_task``).
fit_chunk_task = task_function("fit_chunk_task")
#: Fit tasks that read their block themselves, several chunks each (``tasks.read_and_fit_chunks``).
read_and_fit_chunks = task_function("read_and_fit_chunks")
#: Drops a worker's factorised designs (``tasks.forget_designs``, run by ``Client.run``).
forget_designs = task_function("forget_designs")
#: Centred cross-products of one design's ``lm`` analyses on one block (``tasks.sufficient_chunk``, ``sumstats --sufficient``).
sufficient_chunk = task_function("sufficient_chunk")

#: Which view of a block each model reads (see ``tasks.model_block``).
MODEL_VIEWS = {"lm": "transformed", "lmm": "transformed", "lm_nonzero": "nonzero", "prevalence": "presence"}

#: One chunk of ``tasks.read_and_fit_chunks``: ``(block_arguments, feature_ids, output, covariate_output)``, the
#: arguments of ``tasks.model_block``, the block's kept features and the files of ``tasks.fit_chunk``. A plain tuple:
#: Dask finds the futures among the block's arguments (sample positions, per-sample sums) inside tuples and lists.
SoloChunk = tuple[tuple[object, ...], tuple[str, ...], Path, Path | None]


def model_block_key(view: str, layer_token: str, block_index: int) -> str:
    """The Dask key of ``tasks.model_block`` for one view of one block: the run and the export share it."""
    return f"model-block-{view}-{layer_token}-{block_index}"


def hold(value: object) -> object:
    """A task that returns its argument: inputs placed this way are part of the graph,
    so the scheduler can recompute them on another worker if their holder dies
    (data placed with ``Client.scatter`` would be lost with it)."""
    return value
