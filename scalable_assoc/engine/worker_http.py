"""A worker preload of the local cluster (distributed's ``preload``): each worker closes its HTTP server as it starts.

distributed starts a worker's HTTP server (its metrics and health pages)
before it runs the ``dask_setup`` of its preloads, and both before the worker
registers with the scheduler: closed here, the server is closed before anyone
learns the worker's address. A worker restarted by its nanny is preloaded the
same way. This replaces a worker plugin
(:class:`~scalable_assoc.engine.cluster.NoHttp`, still used for SLURM
workers) that the client registered once the cluster was up: a round trip
through the scheduler to every worker, 30-80 ms between the cluster's start and
the first task on the reference machine. Imports nothing (the fork server
imports it too, see :func:`~scalable_assoc.engine.worker_server.worker_start_method`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed import Worker


def dask_setup(worker: Worker) -> None:
    """Called by distributed as the worker starts (a preload's hook)."""
    worker.http_server.stop()
