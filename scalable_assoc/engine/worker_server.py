"""The fork server a local cluster's workers are forked from, started as a command begins, before dask's heavy imports.

Here rather than in :mod:`scalable_assoc.engine.cluster` because that module
imports distributed (about 0.4 s of the command's first second on the
reference machine): from here the server starts after ``dask.config`` only,
so its own imports (distributed and the task modules, about a second) begin
that much earlier on the second core, while this process imports the rest.
Nothing here imports distributed; the worker settings it gives the server are
those :func:`~scalable_assoc.engine.cluster.local_cluster` gives the nannies.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: What the workers of a local cluster started for a run import as they start: the task functions and their kernels.
WORKER_PRELOAD = ("scalable_assoc.engine.tasks",)
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

    # libyaml's loader where PyYAML has it: 1.5 ms rather than 30 ms for this file, as a command begins.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    value: object = yaml.load((Path(next(iter(spec.submodule_search_locations))) / "distributed.yaml").read_text(), Loader=loader)
    for part in key.split("."):
        value = value.get(part, {}) if isinstance(value, dict) else {}
    return dict(value) if isinstance(value, dict) else {}


def worker_environ() -> dict:
    """The environment a local cluster's nannies set before each worker: dask's setting, :data:`WORKER_MALLOC`, :data:`WORKER_PAGES`.

    A value the user set (in the environment or in dask's ``distributed.nanny.pre-spawn-environ``;
    the environment first, as distributed reads them) is kept, except distributed's own trim default.
    """
    import dask.config

    check_worker_server()  # a server started ahead with other settings: this process's environment put back first
    return _worker_environ({**_distributed_default(_PRE_SPAWN), **(dask.config.get(_PRE_SPAWN, default={}) or {})}, os.environ)


def _worker_environ(configured: Mapping[str, Any], environment: Mapping[str, str]) -> dict:
    """:func:`worker_environ` from dask's setting ``configured`` and this process's ``environment``."""
    environ = dict(configured)
    for name, ours in {**WORKER_MALLOC, **WORKER_PAGES}.items():
        given = environment.get(name, environ.get(name))
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

    The server imports distributed and ``preload`` (about a second of CPU on
    the reference machine); started as a command begins, it does so on the
    second core while this process imports the rest of what the command needs,
    and the local cluster started later (see
    :func:`~scalable_assoc.engine.cluster.local_cluster` with the
    same ``preload``) forks its workers from it at once. The server is the one
    :func:`worker_start_method` would start, with the environment the nannies
    would give it (BLAS threads, glibc thresholds, NumPy's pages; this process's
    own NumPy is imported with its own environment, so it keeps its settings). Nothing is started
    (False) where workers are not forked (a start method other than
    distributed's default configured, or no fork server, as on Windows). A
    server that listens on a private socket only, and ends with this process.

    Before dask is imported (as a command begins), the server starts with
    distributed's defaults, without reading dask's configuration: importing
    dask (and NumPy) first took 0.2-0.25 s of the command's first 0.35 s on the
    reference machine, all that time with the second core idle; the server now
    starts some 0.1 s after the command. :func:`check_worker_server` (called by the cluster's
    start, and by the CLI once its imports are done) compares the server's
    settings with dask's configuration and stops a server that does not match
    it, so the cluster starts one that does. ``DASK_*`` variables in the
    environment (configuration at hand) are read at once.
    """
    import multiprocessing.forkserver

    global _started_ahead
    environment = dict(os.environ)
    if "dask" in sys.modules or any(name.startswith("DASK_") for name in environment):
        if not worker_start_method(preload):
            return False
        environ = _as_text(worker_environ())
    else:
        if "forkserver" not in multiprocessing.get_all_start_methods():
            return False
        _set_server_preload(preload)
        environ = _as_text(_worker_environ(_distributed_default(_PRE_SPAWN), environment))
        _started_ahead = (environ, environment)
    # All of it (BLAS threads too), not only ours: the nannies set the rest only when the cluster starts, after the server.
    os.environ.update(environ)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        # This process's NumPy (imported here if not yet, 0.1 s after the server's start rather than before it) keeps its
        # BLAS threads and pages: imported with this process's own environment, which then holds the workers' settings,
        # as the nannies would leave it, for what is imported after.
        if "numpy" not in sys.modules:
            _put_back(environ, environment)
            import numpy  # noqa: F401

            os.environ.update(environ)
    return True


#: The environment of a server started before dask's configuration was read, and this process's environment before it;
#: None once :func:`check_worker_server` compared them with dask's configuration (or when no server started that way).
_started_ahead: tuple[dict[str, str], dict[str, str]] | None = None


def check_worker_server() -> None:
    """Stop a fork server :func:`start_worker_server` started before reading dask's configuration if that asks for other settings.

    A start method other than ``spawn`` or a ``distributed.nanny.pre-spawn-environ``
    giving the workers another environment (a dask configuration file): the server
    is stopped and this process's environment put back as it was, so the cluster
    starts as it would without a server started ahead (a new server, with the
    configured settings, at the first worker's start; or the configured method).
    Nothing to do (at once) for a server started with dask's configuration read,
    or already checked.
    """
    global _started_ahead
    if _started_ahead is None:
        return
    started, environment = _started_ahead
    _started_ahead = None
    import multiprocessing.forkserver

    import dask.config

    method = dask.config.get("distributed.worker.multiprocessing-method", default="spawn")
    configured = {**_distributed_default(_PRE_SPAWN), **(dask.config.get(_PRE_SPAWN, default={}) or {})}
    if method == "spawn" and _as_text(_worker_environ(configured, environment)) == started:
        return
    server: Any = multiprocessing.forkserver._forkserver  # type: ignore[attr-defined]  # the module's one server (private)
    pid = server._forkserver_pid
    if pid is not None:
        with contextlib.suppress(OSError):  # it ended already
            os.kill(pid, signal.SIGKILL)  # still importing, it would notice a closed pipe only once done
        server._stop()  # closes its pipe, waits for it and forgets it: the next worker's start starts a new one
    _put_back(started, environment)


def _put_back(names: Iterable[str], environment: Mapping[str, str]) -> None:
    """Set each of ``names`` in this process's environment as in ``environment`` (removed where it is not there)."""
    for name in names:
        if name in environment:
            os.environ[name] = environment[name]
        else:
            os.environ.pop(name, None)


def _as_text(environ: Mapping[str, object]) -> dict[str, str]:
    return {name: str(value) for name, value in environ.items()}


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

    check_worker_server()
    method = dask.config.get("distributed.worker.multiprocessing-method", default="spawn")
    if method != "spawn" or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    setting = {"distributed.worker.multiprocessing-method": "forkserver"}
    if "distributed" in sys.modules:  # by the cluster's start; before it (start_worker_server) distributed is not imported yet
        from distributed.utils import get_mp_context

        with dask.config.set(setting):
            get_mp_context()  # sets distributed's own preload list, once per process: replaced by ours next
    _set_server_preload(preload)
    return setting


def _set_server_preload(preload: Sequence[str]) -> None:
    """What a fork server imports as it starts: :mod:`scalable_assoc.engine.server_preload` (distributed and
    :data:`WORKER_PRELOAD` with the garbage collector paused), distributed, ``preload``.

    Read when the server starts (the first worker's start), not by a server already running.
    """
    import multiprocessing

    server_preload = ["scalable_assoc.engine.server_preload", "distributed", *preload]
    multiprocessing.get_context("forkserver").set_forkserver_preload(server_preload)  # type: ignore[attr-defined]  # a forkserver context's
