"""The fork server a local cluster's workers are forked from, started as a command begins, before dask's heavy imports.

Here rather than in :mod:`scalable_assoc.engine.cluster` because that module
imports distributed (about 0.4 s of the command's first second on the
reference machine): from here the server starts after ``dask.config`` only,
so its own imports (distributed and the task modules, 0.5-0.6 s of CPU) begin
that much earlier on the second core, while this process imports the rest.
Nothing here imports distributed; the worker settings it gives the server are
those :func:`~scalable_assoc.engine.cluster.local_cluster` gives the nannies.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Sequence
from pathlib import Path

#: What the workers of a local cluster started for a run import as they start: the task functions and their kernels.
WORKER_PRELOAD = ("scalable_assoc.engine.tasks",)
#: The worker preload that closes each local worker's HTTP server as it starts (the fork server imports it too).
WORKER_HTTP = "scalable_assoc.engine.worker_http"
#: glibc's thresholds for the workers of a local cluster: blocks (tens of MB) come from the heap and freed ones stay there.
#: distributed's nannies set MALLOC_TRIM_THRESHOLD_=65536, which also switches off glibc's dynamic mmap threshold, so
#: every block-sized array of every task was a fresh mmap whose pages faulted in again: at 100,000 features x 7,656
#: participants the workers spent 21 s in the kernel (system time) of a 31 s run; with these, 5.6 s of 21 s.
#: One arena (MALLOC_ARENA_MAX=1): a worker's tasks run in a thread of their own, and glibc gives a thread other than
#: the main one an arena of 64 MB heaps (mmap'd, not brk), which hold one or two block-sized arrays each and are unmapped
#: as soon as they are wholly free, whatever the trim threshold: each block's arrays faulted in again. With the main
#: arena only (whose heap grows by brk and keeps freed memory up to the trim threshold), at 100,000 features x 7,656
#: participants each of 2 workers took 48,000 page faults and 0.6 s of system time instead of 0.9-1.2 million and
#: 2.0-2.5 s; on the reference study 30% fewer faults on new workers. The task thread and the event loop share that
#: arena's lock; both hold the GIL for most of their allocations anyway.
WORKER_MALLOC = {"MALLOC_MMAP_THRESHOLD_": 64 * 2**20, "MALLOC_TRIM_THRESHOLD_": 256 * 2**20, "MALLOC_ARENA_MAX": 1}
#: NumPy asks Linux for transparent huge pages (2 MB) for every array of 4 MB or more; a local cluster's workers
#: use ordinary pages. A new worker's memory is all first touches, and a huge page's first touch is dear where
#: free memory was handed back to a virtual machine's host (virtio-balloon free page reporting, in 2 MB blocks) or
#: must first be compacted: on the 2-core reference VM the reference study's fit phase took 2.4-3.2 s on a new
#: cluster with huge pages and 1.0-1.3 s without, while 100,000 features fitted in the same time either way.
WORKER_PAGES = {"NUMPY_MADVISE_HUGEPAGE": 0}
#: distributed's own default trim threshold: replaced by ours; a value the user configured is kept.
_DISTRIBUTED_TRIM_DEFAULT = 65536


#: dask's setting of the environment the nannies give each worker process.
_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _distributed_default(key: str) -> dict:
    """distributed's own default of ``key`` (a mapping), read from its ``distributed.yaml`` without importing distributed.

    Importing distributed loads its defaults into dask's configuration; before
    that, dask's configuration holds only what the user set (files, ``DASK_*``
    variables). Once distributed is imported its configuration has the defaults
    already: nothing to read.
    """
    if "distributed" in sys.modules:
        return {}
    spec = importlib.util.find_spec("distributed")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return {}
    import yaml

    text = (Path(next(iter(spec.submodule_search_locations))) / "distributed.yaml").read_text()
    # libyaml's loader where PyYAML has it: 0.003 s of CPU for this file instead of 0.015 s, on the way to starting the server.
    value: object = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    for part in key.split("."):
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return dict(value) if isinstance(value, dict) else {}


def worker_environ() -> dict:
    """The environment a local cluster's nannies set before each worker: dask's setting, :data:`WORKER_MALLOC`, :data:`WORKER_PAGES`.

    A value the user set (in the environment or in dask's ``distributed.nanny.pre-spawn-environ``;
    the environment first, as distributed reads them) is kept, except distributed's own trim default.
    """
    import dask.config

    environ = {**_distributed_default(_PRE_SPAWN), **(dask.config.get(_PRE_SPAWN, default={}) or {})}
    for name, ours in {**WORKER_MALLOC, **WORKER_PAGES}.items():
        given = os.environ.get(name, environ.get(name))
        if given is None or (name == "MALLOC_TRIM_THRESHOLD_" and int(given) == _DISTRIBUTED_TRIM_DEFAULT):
            environ[name] = ours
        else:
            environ[name] = given
    return environ


def set_worker_environ() -> dict:
    """:func:`worker_environ`, with our settings also set in this process's environment (for the processes it starts)."""
    environ = worker_environ()
    # A nanny copies its pre-spawn environment into this process's (distributed's way of passing it on), and the
    # environment outranks dask's configuration: after an earlier cluster's nannies (in a long-lived session) ours
    # would lose to distributed's trim default left behind. Set here, as the nannies would.
    # NumPy reads its setting as it is imported: by the fork server's preload (see :func:`worker_start_method`), started
    # with this process's environment, or by each spawned worker.
    os.environ.update({name: str(environ[name]) for name in (*WORKER_MALLOC, *WORKER_PAGES)})
    return environ


def start_worker_server(preload: Sequence[str] = ()) -> bool:
    """Start the fork server a local cluster's workers are forked from, now rather than at the first worker's start; True if started.

    The server imports distributed and ``preload`` (0.5-0.6 s of CPU on the
    reference machine: the task modules import neither pandas nor zarr, see
    :mod:`scalable_assoc.engine.designs`); started as a command begins, it does
    so on the second core while this process imports the rest of what the
    command needs,
    and the local cluster started later (see
    :func:`~scalable_assoc.engine.cluster.local_cluster` with the
    same ``preload``) forks its workers from it at once. The server is the one
    :func:`worker_start_method` would start, with the environment the nannies
    would give it (BLAS threads, glibc thresholds, NumPy's pages; this process's
    own NumPy is imported first, so it keeps its settings). Nothing is started
    (False) where workers are not forked (a start method other than
    distributed's default configured, or no fork server, as on Windows). A
    server that listens on a private socket only, and ends with this process.
    """
    import multiprocessing.forkserver

    import numpy  # noqa: F401  # before the workers' environment is set here, so this process keeps its BLAS threads and pages

    if not worker_start_method(preload):
        return False
    # All of it (BLAS threads too), not only ours: the nannies set the rest only when the cluster starts, after the server.
    os.environ.update({name: str(value) for name, value in worker_environ().items()})
    multiprocessing.forkserver.ensure_running()
    return True


def worker_start_method(preload: Sequence[str] = ()) -> dict[str, str]:
    """dask's setting of how a local cluster's nannies start worker processes: forked from a server that has imported ``preload``.

    distributed spawns each worker by default: a new interpreter that imports
    distributed and the ``preload`` modules itself, 1.2-1.7 s of CPU per worker
    (most of a 2-worker cluster's start). Forked from multiprocessing's fork
    server, which imports them once (in a process of its own, single-threaded,
    so forking it is safe), the workers started in 0.15 s of CPU together and
    the server took 1 s. The server stays for the rest of this process (it
    ends with it) and serves later clusters too; its environment is this
    process's when it started, after the nannies' pre-spawn environment (BLAS
    threads, glibc thresholds) was set, as spawned workers have it. A start
    method configured other than distributed's default ``spawn`` is kept, as
    is ``spawn`` where there is no fork server (Windows).
    """
    import multiprocessing

    import dask.config

    method = dask.config.get("distributed.worker.multiprocessing-method", default="spawn")
    if method != "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    setting = {"distributed.worker.multiprocessing-method": "forkserver"}
    context = multiprocessing.get_context("forkserver")
    if "distributed" in sys.modules:  # by the cluster's start; before it (start_worker_server) distributed is not imported yet
        from distributed.utils import get_mp_context

        with dask.config.set(setting):
            get_mp_context()  # sets distributed's own preload list, once per process: replaced by ours next
    # Read when the server starts (the first worker's start), not by a server already running.
    # scalable_assoc.engine.server_preload imports distributed and WORKER_PRELOAD with the garbage collector paused.
    server_preload = ["scalable_assoc.engine.server_preload", "distributed", WORKER_HTTP, *preload]
    context.set_forkserver_preload(server_preload)  # type: ignore[attr-defined]  # a forkserver context's method
    return setting
