"""What a local cluster's workers import: neither pandas nor zarr, nor the client's preparation, before or during a run's tasks.

The workers are forked from a server that imports the task functions
(:data:`~scalable_assoc.engine.worker_server.WORKER_PRELOAD`) as a cold run
begins, beside the client's own work on a 2-core machine. pandas (0.2 s of CPU
to import) and zarr (0.1 s) came in with the client's preparation module and
the store writer; ``pyarrow.array`` imports pandas at its first call, so the
partial result tables are built without it (:mod:`scalable_assoc.results.arrow_arrays`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import study_plan, write_plan

_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}

#: Modules no worker loads for a run's tasks (the client's, or the store writer's).
_CLIENT_ONLY = ("pandas", "zarr", "scalable_assoc.engine.prepare", "scalable_assoc.io.metadata", "scalable_assoc.io.ingest")

#: Defines ``client_only()``: which of :data:`_CLIENT_ONLY` this process has loaded.
_FIND = f"import sys\ndef client_only():\n    return sorted(name for name in {_CLIENT_ONLY!r} if name in sys.modules)\n"


def _last_json_line(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=_ENV)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_worker_servers_imports_leave_out_pandas_and_zarr() -> None:
    """The fork server's preload, as :func:`~scalable_assoc.engine.worker_server.worker_start_method` lists it."""
    code = (
        f"{_FIND}import json\n"
        "import scalable_assoc.engine.server_preload, distributed\n"
        "from scalable_assoc.engine.worker_server import WORKER_HTTP, WORKER_PRELOAD\n"
        "import importlib\n"
        "for name in (WORKER_HTTP, *WORKER_PRELOAD): importlib.import_module(name)\n"
        "print(json.dumps(client_only()))"
    )
    assert _last_json_line(code) == []


def _on_a_forked_worker_after(run_arguments: str, then: str = "") -> list:
    """``[client_only() on the worker, whether it loaded engine.diversity_tasks]`` after ``run_study(run_arguments)``
    (and the statement ``then``, which may use ``client``) on a local cluster of one worker forked from the server."""
    code = (
        f"{_FIND}import json\n"
        "from scalable_assoc import run_study\n"
        "from scalable_assoc.engine.cluster import WORKER_PRELOAD, local_cluster\n"
        "cluster, client = local_cluster(1, preload=WORKER_PRELOAD)\n"
        "try:\n"
        f"    run_study({run_arguments}, client=client)\n"
        f"    {then}\n"
        "    [found] = client.run(client_only).values()\n"
        "    [diversity] = client.run(lambda: 'scalable_assoc.engine.diversity_tasks' in sys.modules).values()\n"
        "finally:\n"
        "    client.close()\n"
        "    cluster.close()\n"
        "print(json.dumps([found, diversity]))"
    )
    found = _last_json_line(code)
    assert isinstance(found, list)
    return found


def test_workers_load_neither_pandas_nor_zarr_through_a_run(small_study: SimulatedStudy, tmp_path: Path) -> None:
    """A run's tasks with covariate rows (blocks read, fitted, their tables written), on a worker forked from the server."""
    found = _on_a_forked_worker_after(f"{str(small_study.plan_path)!r}, {str(tmp_path / 'out')!r}, covariate_rows=True")
    assert found == [[], False], "a worker imported pandas, zarr or the client's preparation for a run's tasks"
    assert (tmp_path / "out" / "results.parquet").exists()


def test_a_diversity_plans_tasks_load_neither_pandas_nor_zarr(small_study: SimulatedStudy, tmp_path: Path) -> None:
    """Alpha diversity's sums and every PERMANOVA step run functions of ``engine.diversity_tasks``, not of the client's modules."""
    diversity = {"alpha": ["shannon", "richness"], "beta": {"distances": ["aitchison", "bray_curtis"], "permutations": 19, "seed": 3}}
    plan = write_plan(tmp_path, study_plan(small_study, layers=["species"], diversity=diversity))
    found = _on_a_forked_worker_after(f"{str(plan)!r}, {str(tmp_path / 'out')!r}, allow_outside_paths=True")
    assert found == [[], True], "a diversity task imported pandas, zarr or the client's preparation"
    assert (tmp_path / "out" / "permanova.parquet").exists()


def test_the_sufficient_statistics_tasks_load_neither_pandas_nor_zarr(small_study: SimulatedStudy, tmp_path: Path) -> None:
    """``sumstats --sufficient``'s cross-products run a function of ``engine.tasks`` (named by ``engine.task_refs``),
    not one of the client's export module, which would bring its imports (the run, pandas) to every worker."""
    out = str(tmp_path / "out")
    export = (
        "from scalable_assoc.engine.sufficient import sufficient_statistics; "
        f"assert sufficient_statistics({out!r}, client=client).num_rows > 0"
    )
    found = _on_a_forked_worker_after(f"{str(small_study.plan_path)!r}, {out!r}", export)
    assert found[0] == [], "a sufficient-statistics task imported pandas, zarr or the client's preparation"
