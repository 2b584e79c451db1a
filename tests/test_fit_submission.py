"""How a run hands its fit tasks to the scheduler (engine/run.py _fit_chunks): the fits that read their own block go in one graph update."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import SchedulerPlugin

from scalable_assoc.engine.run import run_study
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
        solo = run_study(small_study.plan_path, tmp_path / "solo", client=client, chunk_features=16, analyses_per_task=1000)
        solo_updates, counter.updates = counter.updates, []
        # Two analyses per batch: every block view has several readers and is a task of its own, each fit submitted after it.
        shared = run_study(small_study.plan_path, tmp_path / "shared", client=client, chunk_features=16, analyses_per_task=2)
    finally:
        dask_cluster.scheduler.remove_plugin(name=PLUGIN)
    submitted = [key for update in solo_updates for key in update]
    assert len(solo_updates) == 1, f"{len(solo_updates)} graph updates held fit tasks"
    assert len(submitted) == len(set(submitted)) == solo.chunks_total > 10  # every chunk fitted once (none was resumed)
    assert len(counter.updates) == shared.chunks_total
    # Each fit got its own chunk's arguments: the same rows as from fits that read a block task.
    assert_results_equal(pd.read_parquet(tmp_path / "shared" / "results.parquet"), pd.read_parquet(tmp_path / "solo" / "results.parquet"))
