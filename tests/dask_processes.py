"""Real ``dask scheduler`` / ``dask worker`` processes for tests, each in its own session so a test can kill one with its children."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from distributed import Client, LocalCluster


def dask_command(*args: str) -> list[str]:
    """The ``dask`` command of this interpreter's environment."""
    script = Path(sys.executable).parent / "dask"
    return [str(script), *args] if script.is_file() else [sys.executable, "-m", "dask", *args]


def stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started here and the processes it started (its own session); SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


class DaskProcesses:
    """A scheduler and worker processes on loopback (plain tcp), their logs in ``folder``; a context manager that stops them all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.processes: list[subprocess.Popen] = []
        self._logs: list = []
        self._count = 0

    def __enter__(self) -> DaskProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for process in reversed(self.processes):
            stop(process)
        for log in self._logs:
            log.close()

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        self._count += 1
        log = (self.folder / f"{self._count:02d}-{name}.log").open("wb")
        self._logs.append(log)
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.folder)
        self.processes.append(process)
        return process

    def scheduler(self) -> tuple[subprocess.Popen, str]:
        """Start a scheduler; returns it and its address once it listens."""
        scheduler_file = self.folder / f"scheduler-{self._count + 1}.json"
        process = self._start(
            "scheduler",
            dask_command("scheduler", "--host", "127.0.0.1", "--port", "0", "--scheduler-file", str(scheduler_file), "--no-dashboard"),
        )
        deadline = time.monotonic() + 60
        while not scheduler_file.is_file():
            assert process.poll() is None, "the scheduler ended at start"
            assert time.monotonic() < deadline, "the scheduler did not write its scheduler file in 60 s"
            time.sleep(0.1)
        self.scheduler_file = scheduler_file
        with Client(scheduler_file=str(scheduler_file), timeout="60s") as probe:
            return process, str(probe.scheduler.address)

    def workers(self, count: int) -> subprocess.Popen:
        """Start ``count`` single-threaded worker processes on the last scheduler; waits until they joined.

        One ``dask worker`` command with its nannies.
        """
        with Client(scheduler_file=str(self.scheduler_file), timeout="60s") as probe:
            before = probe.scheduler_info(n_workers=0)["n_workers"]
            process = self._start(
                "workers",
                dask_command(
                    "worker", "--scheduler-file", str(self.scheduler_file), "--nworkers", str(count), "--nthreads", "1", "--no-dashboard"
                ),
            )
            probe.wait_for_workers(before + count, timeout=60)
        return process


@contextmanager
def own_local_cluster(workers: int = 2, quiet: int = logging.CRITICAL) -> Iterator[Client]:
    """A client of a cluster of its own (worker processes, one thread each, on loopback), for a test that kills or counts workers.

    ``quiet``: the level below which the cluster's log messages are dropped (worker deaths are expected).
    """
    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            silence_logs=quiet,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client
