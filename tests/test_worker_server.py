"""The fork server started before distributed is imported, and the CLI's exit after a run (in fresh processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

from scalable_assoc.simulate import SimulatedStudy

_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}

_BEFORE_DISTRIBUTED = """
import json, sys
from scalable_assoc.engine.worker_server import WORKER_PRELOAD, start_worker_server, worker_environ
before = worker_environ()
started = start_worker_server(WORKER_PRELOAD)
imported = "distributed" in sys.modules
import distributed  # noqa: F401  # loads distributed's defaults into dask's configuration
after = worker_environ()  # the server's start set our values in this environment, as text
same = {k: str(v) for k, v in before.items()} == {k: str(v) for k, v in after.items()}
print(json.dumps({"same": same, "started": started, "imported": imported, "environ": before}))
"""


def test_the_worker_server_starts_without_distributed_and_with_its_settings() -> None:
    done = subprocess.run([sys.executable, "-c", _BEFORE_DISTRIBUTED], capture_output=True, text=True, timeout=120, env=_ENV, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["imported"] is False, "starting the server imported distributed in this process"
    assert seen["same"], "distributed's defaults (read from its distributed.yaml) are those it loads when imported"
    assert str(seen["environ"].get("OPENBLAS_NUM_THREADS")) == "1", "the server's BLAS runs one thread, as the nannies set it"


def test_a_run_from_the_command_line_exits_0_with_its_output_and_leaves_no_process(small_study: SimulatedStudy, tmp_path: Path) -> None:
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(small_study.plan_path),
        "--out",
        str(out),
        "--workers",
        "1",
        "--no-report",
    ]
    process = psutil.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_ENV)
    descendants: set[int] = set()
    while process.poll() is None:
        try:
            descendants |= {child.pid for child in process.children(recursive=True)}
        except psutil.NoSuchProcess:
            break
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert stdout.rstrip().splitlines()[-1].startswith("done in "), "every line of the report reached the pipe"
    assert json.loads((out / "manifest.json").read_text())["chunks_total"] > 0
    # The fork server and resource tracker end as their pipes close with the run's process: give them a moment.
    processes = []
    for pid in descendants:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(processes, timeout=10)
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], "a process of the run outlived it"


def test_the_server_preload_imports_the_workers_modules_and_leaves_the_collector_on() -> None:
    script = (
        "import gc, json, sys; import scalable_assoc.engine.server_preload; "
        "names = ['distributed', 'scalable_assoc.engine.tasks']; "
        "print(json.dumps([gc.isenabled(), gc.get_freeze_count() > 0, all(name in sys.modules for name in names)]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_ENV, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [True, True, True]


def test_the_server_makes_tornados_default_tls_context_its_workers_inherit() -> None:
    script = (
        "import json, threading; import scalable_assoc.engine.server_preload; import tornado.netutil; "
        "print(json.dumps([tornado.netutil._client_ssl_defaults.cache_info().currsize, threading.active_count()]))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=_ENV, check=True)
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [1, 1], "made once, and the server still has one thread to fork"
