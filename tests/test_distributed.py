"""Results do not depend on how the work is cut up or where it runs.

The same plan gives the same ``results.parquet`` (strings and integers identical,
floats equal to a relative 1e-12, beta and t on the scale of their standard error:
see ``scalable_assoc.testing.results_differences``) whatever the feature chunk size, the
number of analyses per task, the number of workers, whether an analysis runs in a
batch or alone, whether the cluster is a LocalCluster or separate ``dask scheduler``
/ ``dask worker`` processes, whether a worker is killed in the middle of a run, and
whether another run of the same plan shares the cluster.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from dask_processes import DaskProcesses, own_local_cluster
from distributed import Client, LocalCluster

from scalable_assoc.engine.run import run_study
from scalable_assoc.simulate import SimulatedStudy
from scalable_assoc.testing import write_study_plan


@pytest.fixture(scope="module")
def reference(small_study: SimulatedStudy, client: Client, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small study run once on the session cluster with the store's default chunking."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_study(small_study.plan_path, out, client=client)
    assert summary.chunks_reused == 0
    status = summary.results["status"]
    # Rows of the small study's rare exposures (a handful of cases) rest on small presence x case cells (min_carriers).
    assert ((status == "ok") | status.str.contains("min_carriers")).mean() > 0.9 and (status == "ok").mean() > 0.5, (
        "the reference run estimates most rows"
    )
    return out


# --------------------------------------------------------------------------------------
# 1. Chunk size and worker count
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_features", [7, 64])
def test_results_do_not_depend_on_chunk_size(
    reference: Path, small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal, chunk_features: int
) -> None:
    summary = run_study(small_study.plan_path, tmp_path, client=client, chunk_features=chunk_features)
    default_chunks = json.loads((reference / "manifest.json").read_text())["chunks_total"]
    if chunk_features == 7:
        assert summary.chunks_total > default_chunks, "chunks of 7 features cut every layer into several blocks"
    assert_results_equal(reference, tmp_path)


def test_results_do_not_depend_on_worker_count(reference: Path, small_study: SimulatedStudy, tmp_path: Path, assert_results_equal) -> None:
    with (
        own_local_cluster(workers=1, quiet=logging.ERROR) as one_worker,
    ):
        summary = run_study(small_study.plan_path, tmp_path, client=one_worker, chunk_features=7)
        assert summary.manifest["dask"]["workers"] == 1
    assert_results_equal(reference, tmp_path)


# --------------------------------------------------------------------------------------
# 2. Batches of analyses
# --------------------------------------------------------------------------------------
SINGLE_ANALYSES = [
    {"exposures": ["MDD"], "adjustments": ["ptd"]},
    {"exposures": ["ssri"], "adjustments": ["ssri"]},  # the exposure is also in the adjustment set
    {"exposures": ["dysthymia"], "adjustments": ["gi"]},  # few cases, the most adjusted set
    {"exposures": ["AnyAnx"], "adjustments": ["base"], "layers": ["pathways"]},
]


@pytest.mark.parametrize("selection", SINGLE_ANALYSES, ids=lambda s: "-".join(s["exposures"] + s["adjustments"] + s.get("layers", [])))
def test_analysis_alone_equals_analysis_in_batch(
    reference: Path, small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal, selection: dict
) -> None:
    plan = write_study_plan(tmp_path, small_study, filename="single.yaml", analyses=[selection])
    summary = run_study(plan, tmp_path / "out", client=client, allow_outside_paths=True)
    alone = pq.read_table(tmp_path / "out" / "results.parquet").to_pandas()
    batch = pq.read_table(reference / "results.parquet").to_pandas()
    layers = selection.get("layers", sorted(batch["layer"].unique()))
    wanted = (
        batch["exposure"].isin(selection["exposures"]) & batch["adjustment"].isin(selection["adjustments"]) & batch["layer"].isin(layers)
    )
    expected = batch[wanted].reset_index(drop=True)
    assert len(expected) > 0
    assert set(alone["analysis_id"]) == set(expected["analysis_id"])
    assert summary.manifest["chunks_total"] == len(layers) * 1, "one block per layer, one analysis"
    # The FDR families are layer x exposure x adjustment in both runs, so q must agree too.
    assert_results_equal(expected, alone)


def test_analyses_per_task_does_not_change_results(
    reference: Path, small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal
) -> None:
    summary = run_study(small_study.plan_path, tmp_path, client=client, analyses_per_task=1)
    # Analyses sharing a design stay in one task, so with one analysis per task there is
    # one task per distinct design of each layer (one block per layer by default).
    assert summary.chunks_total == summary.manifest["designs"] > json.loads((reference / "manifest.json").read_text())["chunks_total"]
    assert_results_equal(reference, tmp_path)


def test_a_shared_block_is_freed_once_its_fits_are_done(
    reference: Path, small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal
) -> None:
    """Blocks read by several chunks are tasks of their own; the workers hold a few at a time, not every block of the run."""

    def blocks_in_memory(dask_scheduler) -> int:  # noqa: ANN001 (distributed passes its Scheduler)
        return sum(1 for key, state in dask_scheduler.tasks.items() if str(key).startswith("model-block") and state.state == "memory")

    held: list[int] = []

    def count(done: int, total: int) -> None:
        held.append(client.run_on_scheduler(blocks_in_memory))

    # Blocks of 7 features and 2 analyses per task: several chunks read each of some 20 blocks.
    summary = run_study(small_study.plan_path, tmp_path, client=client, chunk_features=7, analyses_per_task=2, on_chunk_done=count)
    assert summary.chunks_total > 60 and len(held) == summary.chunks_total
    # A few at a time (the views of the blocks being fitted and of the next); holding every block of the run was 23.
    assert max(held) <= 10, f"blocks held at once: {held}"
    assert_results_equal(reference, tmp_path)


# --------------------------------------------------------------------------------------
# 3. A cluster of separate dask scheduler / dask worker processes
# --------------------------------------------------------------------------------------
@pytest.fixture
def external_cluster(tmp_path: Path):
    """``dask scheduler`` and two ``dask worker`` processes; yields the scheduler address."""
    with DaskProcesses(tmp_path / "cluster") as processes:
        _, address = processes.scheduler()
        processes.workers(2)
        yield address


def test_cli_on_external_cluster(
    external_cluster: str, small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal
) -> None:
    assert external_cluster.startswith("tcp://127.0.0.1:")
    out = tmp_path / "external"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "scalable_assoc.cli",
            "run",
            str(small_study.plan_path),
            "--out",
            str(out),
            "--scheduler",
            external_cluster,
            "--chunk-features",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dask"]["scheduler"] == external_cluster
    assert manifest["dask"]["workers"] == 2
    local = tmp_path / "session"
    run_study(small_study.plan_path, local, client=client, chunk_features=7)
    assert_results_equal(local, out)


# --------------------------------------------------------------------------------------
# 4. A worker killed in the middle of a run
# --------------------------------------------------------------------------------------
def test_killed_worker_gives_identical_results(small_study: SimulatedStudy, client: Client, tmp_path: Path, assert_results_equal) -> None:
    uninterrupted = tmp_path / "uninterrupted"
    run_study(small_study.plan_path, uninterrupted, client=client, chunk_features=4)

    killed: dict[str, int] = {}
    with (
        own_local_cluster() as own,
    ):
        pids = own.run(os.getpid)  # worker address -> pid, learned before the run
        victim_address, victim_pid = sorted(pids.items())[0]

        def kill_one_worker(done: int, total: int) -> None:
            if not killed and done >= 5:
                assert done < total
                os.kill(victim_pid, signal.SIGKILL)
                killed.update(done=done, total=total, pid=victim_pid)

        try:
            summary = run_study(
                small_study.plan_path, tmp_path / "interrupted", client=own, chunk_features=4, on_chunk_done=kill_one_worker
            )
        except Exception as error:
            # Say what the scheduler lost with the worker: data that has a task can be
            # recomputed elsewhere, scattered data cannot.
            removals = [event for _, event in own.get_events(victim_address) if event.get("action") == "remove-worker"]
            lost = sorted({str(key) for event in removals for key in event.get("lost-scattered-tasks", ())})
            kinds = sorted({key.rsplit("-", 1)[0] for key in lost})
            pytest.fail(
                f"the run failed after one worker was killed at chunk {killed.get('done')}/{killed.get('total')}: {error!r}; "
                f"{len(lost)} scattered object(s) lost with the worker ({', '.join(kinds) or 'none reported'}), "
                f"e.g. {lost[:2]}"
            )
        assert killed, "the worker was killed during the run"
        assert killed["done"] < summary.chunks_total
        own.wait_for_workers(2, timeout=60)
        assert victim_pid not in own.run(os.getpid).values(), "the killed worker process is gone (the nanny started a new one)"
    assert_results_equal(uninterrupted, tmp_path / "interrupted")


# --------------------------------------------------------------------------------------
# 5. Two runs of one plan at the same time on one cluster (two users, two folders)
# --------------------------------------------------------------------------------------
def test_two_runs_of_one_plan_share_a_cluster(
    reference: Path, small_study: SimulatedStudy, dask_cluster: LocalCluster, tmp_path: Path, assert_results_equal
) -> None:
    """Run A is held after its first chunk while run B, another client, runs the same plan to another folder.

    Each run must write its own chunk files: the shared cluster may share work
    that does not depend on the output folder (blocks, designs), not the tasks
    that write into a folder.
    """
    b_finished = threading.Event()
    outcome: dict[str, object] = {}

    def hold_a(done: int, total: int) -> None:
        b_finished.wait(timeout=120)

    def run(name: str, hook) -> None:
        try:
            with Client(dask_cluster.scheduler_address) as own:
                outcome[name] = run_study(small_study.plan_path, tmp_path / name, client=own, chunk_features=7, on_chunk_done=hook)
        except Exception as error:  # reported below, with the other run's outcome
            outcome[name] = error
        finally:
            if name == "B":
                b_finished.set()

    first = threading.Thread(target=run, args=("A", hold_a))
    first.start()
    deadline = time.monotonic() + 120
    while not list((tmp_path / "A" / ".scalable_assoc" / "chunks").glob("*.parquet.sha256")):
        assert first.is_alive() and time.monotonic() < deadline, f"run A made no chunk: {outcome}"
        time.sleep(0.01)
    run("B", None)
    first.join(timeout=180)
    failures = {name: repr(value) for name, value in outcome.items() if isinstance(value, Exception)}
    for name, value in outcome.items():
        missing = (value.filename or (value.args[-1] if value.args else None)) if isinstance(value, FileNotFoundError) else None
        if isinstance(missing, str):
            other = tmp_path / ("A" if name == "B" else "B") / ".scalable_assoc" / "chunks" / Path(missing).name
            failures[name] += f" (that chunk file was written into the other run's folder instead: {other.is_file()})"
    assert not failures, f"concurrent runs of one plan into two folders failed: {failures}"
    assert_results_equal(tmp_path / "A", tmp_path / "B")
    assert_results_equal(reference, tmp_path / "B")
