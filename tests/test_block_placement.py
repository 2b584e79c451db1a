"""A block read by several chunks goes to one worker with its batches and fits, balancing the work; the local cluster leaves it there."""

from __future__ import annotations

from types import SimpleNamespace
from typing import cast

import numpy as np

from scalable_assoc.engine.chunks import ChunkTask
from scalable_assoc.engine.cluster import local_cluster
from scalable_assoc.engine.graph import LayerOnCluster, on_worker
from scalable_assoc.engine.run import _BlockFits, _place_groups


def _group(kept: int, analyses: int, chunks: int = 5) -> _BlockFits:
    held = SimpleNamespace(layer_filter=SimpleNamespace(kept=[np.ones(kept, dtype=bool)]))
    tasks = [SimpleNamespace(analyses=tuple(range(analyses))) for _ in range(chunks)]
    return _BlockFits(cast(LayerOnCluster, held), "transformed", 0, cast(list[ChunkTask], tasks))


def test_blocks_go_to_the_worker_with_the_least_work_so_far() -> None:
    # The reference study's blocks: species (369 kept), pathways (547 and 103), gbm (56), 5 chunks of 7 analyses each.
    groups = [_group(369, 7), _group(547, 7), _group(103, 7), _group(56, 7)]
    assert _place_groups({"tls://b:2": 1, "tls://a:1": 1}, groups) == ["tls://a:1", "tls://b:2", "tls://a:1", "tls://a:1"]
    # A worker with two threads takes twice the work before the other gets more.
    assert _place_groups({"a": 2, "b": 1}, [_group(10, 1)] * 3) == ["a", "b", "a"]


def test_blocks_read_by_one_chunk_or_without_workers_are_left_to_the_scheduler() -> None:
    assert _place_groups({"a": 1, "b": 1}, [_group(10, 2, chunks=1), _group(10, 2), _group(0, 2)]) == [None, "a", None]
    assert _place_groups({}, [_group(10, 2), _group(5, 1)]) == [None, None]
    assert on_worker(None) == {}
    assert on_worker("tls://a:1") == {"workers": ["tls://a:1"], "allow_other_workers": True}


def test_the_local_cluster_does_not_steal_work() -> None:
    cluster, client = local_cluster(workers=1)
    try:
        extensions = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.extensions))
    finally:
        client.close()
        cluster.close()
    assert "stealing" not in extensions
