"""How a run hands its fit tasks to the scheduler (engine/run.py _FitSubmission).

The fits that read their own block go in one graph update per part of the study.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dask._expr
import pandas as pd
import pytest
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from scalable_assoc.engine.run import WORK_DIR, _SoloFits, chunks_per_task, run_study
from scalable_assoc.engine.tasks import read_and_fit_chunks
from scalable_assoc.simulate import SimulatedStudy

PLUGIN = "count-fit-updates"


class FitUpdates(SchedulerPlugin):
    """Records, per graph update the scheduler receives, the fit task keys it holds."""

    def __init__(self) -> None:
        self.updates: list[list[str]] = []

    def update_graph(self, scheduler: Any, *, tasks: list[Any], **kwargs: Any) -> None:
        fits = [str(key) for key in tasks if str(key).startswith("fit-")]
        if fits:
            self.updates.append(fits)


def test_fits_that_read_their_own_block_reach_the_scheduler_in_one_update(
    small_study: SimulatedStudy, client: Client, dask_cluster: LocalCluster, tmp_path: Path, assert_results_equal: Callable
) -> None:
    counter = FitUpdates()
    dask_cluster.scheduler.add_plugin(counter, name=PLUGIN)  # the session cluster's scheduler runs in this process
    try:
        # One batch per model and layer: each block view has a single reader, which reads the block itself.
        # Small chunks: enough of them per layer and batch (16 for the cluster's 2 threads) for several to share a task,
        # also when each layer goes to the cluster on its own (its table converted before the others).
        solo = run_study(small_study.plan_path, tmp_path / "solo", client=client, chunk_features=2, analyses_per_task=1000)
        solo_updates, counter.updates = counter.updates, []
        # Two analyses per batch: every block view has several readers and is a task of its own, each fit submitted after it.
        shared = run_study(small_study.plan_path, tmp_path / "shared", client=client, chunk_features=16, analyses_per_task=2)
    finally:
        dask_cluster.scheduler.remove_plugin(name=PLUGIN)
    submitted = [key for update in solo_updates for key in update]
    # One update per part of the study (the layers whose tables were converted together, three at most), not one per fit.
    assert 1 <= len(solo_updates) <= 3, f"{len(solo_updates)} graph updates held fit tasks"
    assert len(submitted) == len(set(submitted))
    # Several chunks of a layer and batch share a task while many are left: fewer tasks than chunks, none resumed.
    assert solo.chunks_reused == 0 and solo.chunks_total > 10
    assert len(submitted) < solo.chunks_total
    assert len(list((tmp_path / "solo" / WORK_DIR / "chunks").glob("*.parquet"))) == solo.chunks_total
    assert len(counter.updates) == shared.chunks_total
    # Each fit got its own chunk's arguments: the same rows as from fits that read a block task.
    assert_results_equal(pd.read_parquet(tmp_path / "shared" / "results.parquet"), pd.read_parquet(tmp_path / "solo" / "results.parquet"))


def test_chunks_per_task_go_from_large_to_single_chunks_and_cover_every_chunk() -> None:
    for n_chunks in (0, 1, 7, 16, 183, 1000):
        for threads in (0, 1, 2, 8):
            sizes = chunks_per_task(n_chunks, threads, most=4)
            assert sum(sizes) == n_chunks
            assert all(1 <= size <= 4 for size in sizes)
            assert sizes == sorted(sizes, reverse=True)  # the small tasks last: the threads run out of work together
            if n_chunks >= 16 * max(threads, 1):
                assert sizes[0] == 4 and sizes[-1] == 1
    assert chunks_per_task(7, 2) == [1] * 7  # too few chunks to share tasks


class _Held:
    """Stands for a batch's future: tasks compare batches by key."""

    def __init__(self, key: str) -> None:
        self.key = key


def test_solo_fits_share_a_task_only_with_the_same_layer_designs_and_batch() -> None:
    solo = _SoloFits()
    designs = [Path("designs/a.npz")]
    for i in range(40):
        layer, batch = ("species", "batch-1") if i < 36 else ("pathways", "batch-2")
        solo.add(f"fit-{i}", i, layer, designs, _Held(batch), ((i,), (f"f{i}",), Path(f"{i}.parquet"), None))  # type: ignore[arg-type]
    tasks = solo.tasks(threads=2)
    assert [fit.key for fits in tasks for fit in fits] == [f"fit-{i}" for i in range(40)]  # every chunk once, in order
    assert all(len({(fit.layer, fit.batch.key) for fit in fits}) == 1 for fits in tasks)
    assert len(tasks[0]) == 4 and len(tasks) < 40


def test_fits_are_submitted_without_hashing_their_arguments(
    small_study: SimulatedStudy, client: Client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fits' keys are given: a pure map hashed every argument (each chunk's feature ids) only to name the update."""
    hashed: list[object] = []
    tokenize = dask._expr._tokenize_deterministic

    def recording(*operands: object, **kwargs: object) -> str:
        hashed.extend(operand for operand in operands if operand is read_and_fit_chunks)
        return tokenize(*operands, **kwargs)

    monkeypatch.setattr(dask._expr, "_tokenize_deterministic", recording)
    run_study(small_study.plan_path, tmp_path / "out", client=client, chunk_features=4, analyses_per_task=1000)
    assert (tmp_path / "out" / "results.parquet").exists()
    assert hashed == []
