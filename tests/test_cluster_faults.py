"""A cluster that stops finishing a run: the run ends in bounded time with a message, and a rerun resumes to the same results.

Real processes throughout: ``dask scheduler`` and ``dask worker`` commands killed
with SIGKILL (their whole process group: a nanny and its worker), the run as the
``scalable-assoc`` command, and a worker that dies each time it starts one task.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import dask
import pytest
from dask_processes import DaskProcesses, own_local_cluster, stop
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin

from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import ClusterFailure
from scalable_assoc.simulate import SimulatedStudy, simulate_study

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> SimulatedStudy:
    """Large enough that a run on one worker is still fitting a few seconds after its first chunk."""
    return simulate_study(tmp_path_factory.mktemp("fault_study"), participants=1500, seed=5, n_species=150, n_pathways=150)


@pytest.fixture(scope="module")
def reference(study: SimulatedStudy, client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fault_reference") / "results"
    run_study(study.plan_path, out, client=client, chunk_features=4)
    return out


def _run_command(study: SimulatedStudy, out: Path, scheduler: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(study.plan_path),
        "--out",
        str(out),
        "--scheduler",
        scheduler,
        "--chunk-features",
        "4",
        "--top",
        "0",
        "--no-report",  # the report has its own tests; here it would only cost time
        *extra,
    ]


def _chunks_done(out: Path) -> int:
    try:
        return int(json.loads((out / ".scalable_assoc" / "status.json").read_text())["chunks_done"])
    except (OSError, ValueError, KeyError):
        return 0


def _start_and_wait_for_chunks(command: list[str], out: Path, log: Path) -> subprocess.Popen:
    """Start the run; return once it has finished a chunk (its status file says so) and is still running."""
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("wb"), text=True)
    deadline = time.monotonic() + 120
    while _chunks_done(out) == 0:
        assert process.poll() is None, f"the run ended before its first chunk:\n{log.read_text()}"
        assert time.monotonic() < deadline, f"no chunk after 120 s:\n{log.read_text()}"
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before the cluster could be broken; the study is too small for this machine"
    return process


def _status(out: Path) -> dict:
    completed = subprocess.run(
        [sys.executable, "-m", "scalable_assoc.cli", "status", str(out), "--json"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 1, completed.stdout + completed.stderr
    return json.loads(completed.stdout)


def _assert_resumed(completed: subprocess.CompletedProcess[str]) -> None:
    assert completed.returncode == 0, completed.stderr
    assert "already done, resuming" in completed.stderr, completed.stderr
    assert "Traceback" not in completed.stderr and " ERROR " not in completed.stderr, completed.stderr


def test_all_workers_lost_ends_the_run_within_its_timeout_and_a_rerun_resumes(
    study: SimulatedStudy, reference: Path, tmp_path: Path, assert_results_equal
) -> None:
    out = tmp_path / "results"
    with DaskProcesses(tmp_path / "cluster") as dask_processes:
        _, address = dask_processes.scheduler()
        workers = dask_processes.workers(1)
        run = _start_and_wait_for_chunks(_run_command(study, out, address, "--no-workers-timeout", "3"), out, tmp_path / "run.log")
        stop(workers, signal.SIGKILL)
        lost_at = time.monotonic()
        run.wait(timeout=60)
        ended_after = time.monotonic() - lost_at
        stderr = (tmp_path / "run.log").read_text()
        assert run.returncode == 1, stderr
        # 3 s without workers, noticed within a poll of a second, plus the shutdown.
        assert ended_after < 20, f"the run took {ended_after:.0f} s to end after its workers were lost"
        assert f"the Dask cluster at {address} has had no worker for 3 s" in stderr, stderr
        assert "rerun" in stderr or "resumes" in stderr
        assert "Traceback" not in stderr, stderr
        status = _status(out)
        assert status["state"] == "failed" and "no worker for 3 s" in status["error"]
        assert 0 < status["chunks_done"] < status["chunks_total"]

        dask_processes.workers(2)
        resumed = subprocess.run(_run_command(study, out, address), capture_output=True, text=True, timeout=300)
    _assert_resumed(resumed)
    assert_results_equal(reference, out)


def test_a_killed_scheduler_ends_the_run_with_a_message_and_a_rerun_on_a_new_one_resumes(
    study: SimulatedStudy, reference: Path, tmp_path: Path, assert_results_equal
) -> None:
    out = tmp_path / "results"
    with DaskProcesses(tmp_path / "cluster") as dask_processes:
        scheduler, address = dask_processes.scheduler()
        dask_processes.workers(2)
        run = _start_and_wait_for_chunks(_run_command(study, out, address), out, tmp_path / "run.log")
        stop(scheduler, signal.SIGKILL)
        lost_at = time.monotonic()
        run.wait(timeout=120)
        ended_after = time.monotonic() - lost_at
        stderr = (tmp_path / "run.log").read_text()
        assert run.returncode == 1, stderr
        assert ended_after < 60, f"the run took {ended_after:.0f} s to end after its scheduler was killed"
        assert f"lost the connection to the Dask scheduler at {address}" in stderr, stderr
        assert "Traceback" not in stderr, stderr
        assert _status(out)["state"] == "failed"

        _, new_address = dask_processes.scheduler()
        dask_processes.workers(2)
        resumed = subprocess.run(_run_command(study, out, new_address), capture_output=True, text=True, timeout=300)
    _assert_resumed(resumed)
    assert_results_equal(reference, out)


def test_a_task_that_kills_every_worker_running_it_is_named(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal
) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    run_study(small_study.plan_path, uninterrupted, client=client, chunk_features=4)
    marked = tmp_path / "deadly_task.txt"

    class DiesOnOneFitTask(WorkerPlugin):
        """Ends the worker process whenever it starts the first fit task it ever saw (as a crash in native code or the OOM killer would)."""

        def __init__(self, record: str) -> None:
            self.record = record

        def transition(self, key, start, finish, **kwargs) -> None:
            if finish != "executing" or not str(key).startswith("fit-"):
                return
            record = Path(self.record)
            if not record.exists():
                record.write_text(str(key))
            if record.read_text() == str(key):
                os._exit(1)

    out = tmp_path / "results"
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 1}),
        own_local_cluster() as own,
    ):
        own.register_plugin(DiesOnOneFitTask(str(marked)), name="dies-on-one-fit-task")
        with pytest.raises(ClusterFailure) as failure:
            run_study(small_study.plan_path, out, client=own, chunk_features=4)
    # The message names a chunk, its layer and feature range. Not always the deadly one: a task
    # queued on a worker when it dies counts that death too, so a neighbour can run out first;
    # that neighbour may even have written its sealed file just before its worker died unreported.
    message = str(failure.value)
    named = re.search(
        r"the task of chunk ([0-9a-f]{24}) \(layer '(\w+)', features (\d+)-(\d+), \d+ analyses\) ended every worker that ran it", message
    )
    assert named is not None, message
    deadly = marked.read_text().split("-")[1]  # fit-<chunk id>-<run token>
    chunks = out / ".scalable_assoc" / "chunks"
    assert not (chunks / f"{deadly}.parquet").exists()
    assert "rerun resumes" in message

    summary = run_study(small_study.plan_path, out, client=client, chunk_features=4)
    assert 0 < summary.chunks_reused < summary.chunks_total
    assert_results_equal(uninterrupted, out)


def test_sigterm_stops_a_run_cleanly_and_the_same_command_resumes(
    study: SimulatedStudy, reference: Path, tmp_path: Path, assert_results_equal
) -> None:
    """What systemd, SLURM (time limit) and Kubernetes send: the run ends as on Ctrl-C, with its own exit code."""
    out = tmp_path / "results"
    command = [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(study.plan_path),
        "--out",
        str(out),
        "--workers",
        "1",
        "--chunk-features",
        "4",
        "--top",
        "0",
        "--no-report",
    ]
    run = _start_and_wait_for_chunks(command, out, tmp_path / "run.log")
    run.send_signal(signal.SIGTERM)
    run.wait(timeout=60)
    stderr = (tmp_path / "run.log").read_text()
    assert run.returncode == 143, stderr
    assert "stopped (SIGTERM); run the same command again to resume" in stderr
    assert "Traceback" not in stderr and " ERROR " not in stderr, stderr
    assert not (out / ".scalable_assoc" / "lock.json").exists(), "the lock is released"
    status = subprocess.run(
        [sys.executable, "-m", "scalable_assoc.cli", "status", str(out), "--json"], capture_output=True, text=True, timeout=60
    )
    assert status.returncode == 130 and json.loads(status.stdout)["state"] == "interrupted"
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    _assert_resumed(resumed)
    assert_results_equal(reference, out)
