"""Starting or connecting to a Dask cluster."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from distributed import Client, LocalCluster

from scalable_assoc.errors import UserInputError


def default_workers() -> int:
    """One single-threaded worker process per available core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Client]:
    """A client of an existing scheduler (``tcp://host:port``), or of a new local cluster.

    The local cluster runs ``workers`` single-threaded worker processes (one per
    core by default): the kernels are BLAS-bound, and distributed's nannies pin
    each worker's BLAS to one thread, so processes rather than threads use the
    cores without oversubscription.
    """
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as error:
            raise UserInputError(f"cannot connect to the Dask scheduler at {scheduler}: {error}") from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(
        n_workers=workers or default_workers(),
        threads_per_worker=1,
        processes=True,
        # Any free port: a fixed one (8787) clashes with other clusters on the machine.
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()
