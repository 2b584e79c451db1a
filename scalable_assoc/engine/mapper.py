"""Mapping a pure kernel over blocks of rows on a Dask cluster, for steps outside a run.

``meta`` combines all rows in one process, on a thread per CPU, while that is
quick (ten million rows x five cohorts take seconds per core, and shipping
them to worker processes costs more than it saves); beyond ``min_rows`` rows,
or when the user names a scheduler, blocks go to the cluster as one task each. The cluster starts only
when first needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from distributed import Client, as_completed
from distributed.security import Security

from scalable_assoc.engine.cluster import check_cluster_options, dask_client
from scalable_assoc.engine.profiles import ClusterProfile


class ClusterMapper:
    """``mapper(function, blocks) -> [function(*block) for block in blocks]``, computed on a Dask cluster.

    Use as a context manager; ``wanted(rows)`` says whether ``rows`` rows are
    worth the cluster (always, when a scheduler was named). ``security``
    (credentials for a ``tls://`` scheduler) and ``dashboard`` (of the local
    cluster, whose address is logged) are as for :func:`~scalable_assoc.engine.run.run_study`; they are
    checked here, before any work. A cluster ``profile`` (with its
    ``shared_directory`` set) starts workers as SLURM jobs instead, and like a
    named scheduler is always used.
    """

    def __init__(
        self,
        scheduler: str | None = None,
        workers: int | None = None,
        min_rows: int = 50_000_000,  # speed-meta: was 2,000,000; in-process threads beat a local cluster below this
        *,
        security: Security | None = None,
        dashboard: str | None = None,
        profile: ClusterProfile | None = None,
    ) -> None:
        check_cluster_options(scheduler, security, dashboard, workers=workers, profile=profile)
        self.profile = profile
        self.scheduler = scheduler
        self.workers = workers
        self.security = security
        self.dashboard = dashboard
        self.min_rows = min_rows
        self._context: Any = None
        self._client: Client | None = None

    def wanted(self, rows: int) -> bool:
        return self.scheduler is not None or self.profile is not None or rows >= self.min_rows

    def __call__(self, function: Callable[..., Any], blocks: Sequence[tuple], done: Callable[[int], None] | None = None) -> list[Any]:
        """``[function(*block) for block in blocks]`` on the cluster; ``done(i)`` is called as block ``i`` arrives (for progress)."""
        if self._client is None:
            self._context = dask_client(
                self.scheduler, self.workers, security=self.security, dashboard=self.dashboard, profile=self.profile
            )
            self._client = self._context.__enter__()
        futures = [self._client.submit(function, *block, pure=False) for block in blocks]
        index = {future.key: i for i, future in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for future, result in as_completed(futures, with_results=True):
            i = index[future.key]
            results[i] = result
            if done is not None:
                done(i)
        return results

    def __enter__(self) -> ClusterMapper:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._context is not None:
            self._context.__exit__(None, None, None)
            self._context = None
            self._client = None
