"""What the client of a run imports: neither SciPy nor the model kernels, which only the workers run (in fresh processes).

The workers import the task functions and their kernels as they start (the fork
server's preload); the client names them (:mod:`scalable_assoc.engine.task_refs`)
and never imports them, neither before the first task nor when its scheduler
unpickles the tasks it is given.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scalable_assoc.engine import task_refs, tasks
from scalable_assoc.simulate import SimulatedStudy

_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}

#: Prints, as JSON, the modules of this process that only the workers should load.
_WORKERS_ONLY = (
    "import json, sys; "
    "print(json.dumps(sorted(name for name in sys.modules if name.split('.')[0] == 'scipy' "
    "or name.startswith('scalable_assoc.models') or name == 'scalable_assoc.engine.tasks')))"
)


def _workers_only_modules(code: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", f"{code}\n{_WORKERS_ONLY}"], capture_output=True, text=True, timeout=300, env=_ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_run_commands_imports_leave_out_scipy_and_the_kernels() -> None:
    assert _workers_only_modules("from scalable_assoc.cli import _import_run_modules; _import_run_modules()") == []


def test_a_whole_run_leaves_scipy_and_the_kernels_out_of_the_client(small_study: SimulatedStudy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code = f"from scalable_assoc import run_study; run_study({str(small_study.plan_path)!r}, {str(out)!r}, workers=1)"
    assert _workers_only_modules(code) == [], "the client (or its scheduler, unpickling the tasks) imported the workers' modules"
    assert (out / "results.parquet").exists()


def test_a_block_tasks_result_type_unpickles_without_the_kernels() -> None:
    """distributed sends the client the pickled type of each result it holds a future of (its key-in-memory report)."""
    result_type = pickle.dumps(tasks.ModelBlock)  # what tasks.model_block returns; the run holds futures of blocks
    assert _workers_only_modules(f"import pickle; pickle.loads(bytes.fromhex({result_type.hex()!r}))") == []


def test_every_task_reference_names_a_function_of_the_tasks_module() -> None:
    references = {name: value for name, value in vars(task_refs).items() if isinstance(value, task_refs.WorkerFunction)}
    assert {"model_block", "fit_chunk_task", "read_and_fit_chunks", "sum_block", "summarise_block", "forget_designs"} <= set(references)
    for name, reference in references.items():
        assert reference.module == tasks.__name__ and reference.name == name == reference.__name__
        assert reference.resolve() is getattr(tasks, name)
        assert pickle.loads(pickle.dumps(reference)) == reference


def test_a_task_reference_pickles_as_its_names_and_calls_its_function() -> None:
    reference = task_refs.WorkerFunction(tasks.__name__, "kept_columns")
    data = pickle.dumps(reference)
    assert b"kept_columns" in data and b"scalable_assoc.engine.tasks" in data
    assert pickle.loads(data) == reference
    block, kept = np.arange(12.0).reshape(3, 4), np.array([True, False, True, True])
    np.testing.assert_array_equal(reference(block, kept), tasks.kept_columns(block, kept))


def test_a_task_reference_to_another_module_is_refused_not_imported() -> None:
    for module, name in (("os", "system"), ("scalable_assoc.engine.run", "run_study"), ("not_a_module_at_all", "f")):
        reference = pickle.loads(pickle.dumps(task_refs.WorkerFunction(module, name)))  # as a worker receives it
        with pytest.raises(ValueError, match="not of the task module"):
            reference.resolve()
        with pytest.raises(ValueError, match="not of the task module"):
            reference()
    assert "not_a_module_at_all" not in sys.modules
