"""What every pass over a layer builds on the cluster: names, held inputs, shared designs, model views of blocks, the cluster.

Both passes over a study (:mod:`scalable_assoc.engine.run` fitting it and
:mod:`scalable_assoc.engine.sufficient` exporting its cross-products) build
the same tasks under the same deterministic keys, so a step both need runs
once and means the same thing in both::

    summary-<layer>-<i>  prevalence counts per block (skipped when the store's stored
                         counts cover the samples used)          -> client (filter, pseudocount)
    sums-<layer>-<i>     per-sample sums over kept features       -> client (CLR means / totals)
    model-block-<view>-<layer>-<i>
                         a model view of the block and its presence, kept in worker memory
    designs/<key>.npz    each distinct (participants, covariates), written once and
                         factorised (rank check, QR) by each worker whose fits use it,
                         kept there for its later fits (tasks.DesignCache)
    samples-, totals-, batch-<token>
                         small inputs held as tasks (not scattered), so the scheduler can
                         recompute them if the worker holding them dies
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import distributed
from dask.base import tokenize
from distributed import Client
from distributed.security import Security

from scalable_assoc.engine.cluster import WORKER_PRELOAD, dask_client
from scalable_assoc.engine.prepare import LayerWork, PreparedStudy, write_design
from scalable_assoc.engine.profiles import ClusterProfile
from scalable_assoc.engine.task_refs import hold, model_block, model_block_key
from scalable_assoc.engine.watch import DEFAULT_NO_WORKERS_TIMEOUT, ClusterWatch
from scalable_assoc.io.run_cache import layer_cache_token

if TYPE_CHECKING:  # filters.py uses layer_token from here
    from scalable_assoc.engine.filters import LayerFilter


def layer_token(study: PreparedStudy, layer: LayerWork) -> str:
    """A short hash of what a layer's filter, per-sample sums and blocks depend on: part of their cache names and Dask keys.

    Not the FDR settings, names or paths (see :meth:`Plan.rows_hash`); the feature list when one chooses the kept features;
    the reference layer's token when a ``clr_reference`` supplies the CLR denominator (its table changes this layer's rows).
    """
    token = layer_cache_token(
        study.plan.rows_hash(), study.metadata_sha256, layer.input_sha256, layer.spec.name, layer.store.chunk_features, layer.list_token()
    )
    reference = layer.spec.preprocess.clr_reference
    if reference is None:
        return token
    return layer_cache_token(token, layer_token(study, study.layer_work(reference)), reference, "clr_reference", 0, "")


def on_worker(worker: str | None) -> dict[str, object]:
    """``client.submit`` arguments asking for a task to run on ``worker`` (its address) when it can, else anywhere; none for None.

    Loose: if that worker has left, the scheduler places the task as usual, and it
    may still move it to a worker with nothing to do (work stealing).
    """
    return {} if worker is None else {"workers": [worker], "allow_other_workers": True}


def hold_on_cluster(client: Client, value: object, name: str, worker: str | None = None) -> distributed.Future:
    """Place ``value`` on the cluster as a task (recomputable if its worker dies), keyed by content; on ``worker`` if given."""
    return client.submit(hold, value, key=f"{name}-{tokenize(value)}", **on_worker(worker))


class DesignFiles:
    """The files of the designs the fit tasks use, one per distinct design, shared by every block of every layer.

    Each design is written once to ``designs/<key>.npz`` on the shared
    filesystem; a fit task names its designs by file and its worker factorises
    each one once (:class:`~scalable_assoc.engine.tasks.DesignCache`). Nothing
    travels between workers, so a fit's only large input is its block, and a
    worker that dies takes nothing with it that another cannot read again.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.paths: dict[str, Path] = {}

    def get(self, layer: LayerWork, key: str) -> Path:
        """The file of ``layer``'s design ``key``: written at its first request.

        Asked for as each fit is submitted, so the first fits go out after their
        own few designs are written, not after every design of the study.
        """
        if key not in self.paths:
            self.paths[key] = write_design(self.folder, layer.designs[key])
        return self.paths[key]


def held_totals(client: Client, layer: LayerWork, layer_filter: LayerFilter, views: Iterable[str]) -> dict[str, distributed.Future | None]:
    """Per model view in ``views``, the per-sample sums its transform needs, held on the cluster (None: the view needs none).

    The non-zero view of a CLR layer has its own sums (a geometric mean over the
    features a sample has); TSS/AST totals serve both views.
    """
    clr = layer.spec.preprocess.transform == "clr"
    totals = {
        "transformed": layer_filter.sample_totals,
        "nonzero": layer_filter.nonzero_totals if clr else layer_filter.sample_totals,
        "presence": None,
    }
    return {view: hold_on_cluster(client, totals[view], "totals") if totals[view] is not None else None for view in views}


@dataclass(frozen=True)
class LayerOnCluster:
    """One layer as the cluster holds it: its filter, token, sample positions and per-view totals."""

    layer: LayerWork
    layer_filter: LayerFilter
    token: str
    positions: distributed.Future
    totals: dict[str, distributed.Future | None]

    def block_arguments(self, index: int, view: str) -> tuple[object, ...]:
        """The arguments of :func:`~scalable_assoc.engine.tasks.model_block` for the ``view`` of block ``index``."""
        start, stop = self.layer.store.block_bounds()[index]
        preprocess = self.layer.spec.preprocess
        return (
            self.layer.store.path,
            start,
            stop,
            self.positions,
            self.layer_filter.kept[index],
            view,
            preprocess.transform,
            self.layer_filter.pseudocount,
            self.totals[view],
            self.layer.spec.presence_threshold,
        )

    def submit_block(self, client: Client, index: int, view: str, worker: str | None = None) -> distributed.Future:
        """The ``view`` ("transformed", "nonzero" or "presence") of block ``index``'s kept features, as a task.

        ``worker``: the address of the worker that should compute and hold it (others may, if it cannot).
        """
        return client.submit(
            model_block, *self.block_arguments(index, view), key=model_block_key(view, self.token, index), **on_worker(worker)
        )


def layer_on_cluster(
    client: Client, study: PreparedStudy, layer: LayerWork, layer_filter: LayerFilter, positions: distributed.Future, views: Iterable[str]
) -> LayerOnCluster:
    """What the block tasks of ``layer`` need for the model ``views`` they read, held on the cluster once."""
    return LayerOnCluster(layer, layer_filter, layer_token(study, layer), positions, held_totals(client, layer, layer_filter, views))


@dataclass(frozen=True)
class ClusterRequest:
    """Where a pass computes: a ``client`` given by the caller, else a cluster started or reached as ``dask_client`` does."""

    client: Client | None = None
    scheduler: str | None = None
    workers: int | None = None
    security: Security | None = None
    dashboard: str | None = None
    profile: ClusterProfile | None = None
    no_workers_timeout: float = DEFAULT_NO_WORKERS_TIMEOUT
    #: The local cluster, already starting in the background (see :func:`cluster_starting`).
    starting: ClusterStart | None = None

    def starts_local_cluster(self) -> bool:
        """Whether :func:`watched_cluster` would start a new local cluster (not given a client, scheduler or profile)."""
        return self.client is None and self.scheduler is None and self.profile is None


class ClusterStart:
    """A local cluster started by ``dask_client`` in a background thread, so its processes start while the caller works.

    Starting scheduler and workers takes seconds (processes, imports, TLS), as
    do converting tables and building designs; the two overlap. Its workers
    import the task modules (:data:`WORKER_PRELOAD`) while starting, not at
    their first task. :meth:`client` waits for the start and raises what it
    raised; :meth:`close` (idempotent) waits for it too and closes the cluster.
    :meth:`abandon` closes it without waiting: a run whose preparation fails
    or is interrupted reports that at once, and its cluster is closed by the
    starting thread once started. :meth:`close_behind` starts closing it in a
    thread once the run no longer needs it (closing scheduler and workers takes
    most of a second, spent while the outputs are written); :meth:`close` then
    waits for that. The threads are not daemons: the process waits for them at
    exit, so no cluster outlives it.
    """

    def __init__(self, request: ClusterRequest) -> None:
        self._stack = contextlib.ExitStack()
        self._client: Client | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self._started = self._abandoned = False
        self._closing: threading.Thread | None = None
        self.seconds: float | None = None  # how long the start took, in its thread
        self._thread = threading.Thread(target=self._start, args=(request,), name="scalable-assoc-cluster-start")
        self._thread.start()

    def _start(self, request: ClusterRequest) -> None:
        started = time.perf_counter()
        try:
            self._client = self._stack.enter_context(
                dask_client(None, request.workers, security=request.security, dashboard=request.dashboard, preload=WORKER_PRELOAD)
            )
        except BaseException as error:  # re-raised by client(), in the thread that asks for it
            self._error = error
        self.seconds = time.perf_counter() - started
        with self._lock:
            self._started = True
            abandoned = self._abandoned
        if abandoned:
            self._stack.close()

    def client(self) -> Client:
        """The client of the started cluster, once started; the start's error if it failed."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._client is not None
        return self._client

    def close(self) -> None:
        """Close the cluster (after its start has ended), or wait for :meth:`close_behind`'s close; nothing when already closed."""
        self._thread.join()
        self._close_in_thread().join()

    def close_behind(self) -> None:
        """Start closing the cluster in a thread (after its start has ended) and return; :meth:`close` waits for it."""
        self._thread.join()
        self._close_in_thread()

    def abandon(self) -> None:
        """Close the cluster without waiting here: in a thread if it has started, else by its starting thread once started."""
        with self._lock:
            self._abandoned = True
            started = self._started
        if started:
            self._close_in_thread()

    def _close_in_thread(self) -> threading.Thread:
        """The one thread closing the cluster, started at the first call (closing twice at once would close twice)."""
        with self._lock:
            if self._closing is None:
                self._closing = threading.Thread(target=self._stack.close, name="scalable-assoc-cluster-close")
                self._closing.start()
            return self._closing


@contextlib.contextmanager
def cluster_starting(request: ClusterRequest) -> Iterator[ClusterRequest]:
    """The ``request``, with its local cluster starting in the background when it asks for one; closed on leaving.

    :func:`watched_cluster` of the request returned takes the started cluster
    (and closes it when it closes); leaving on an error (or an interruption)
    abandons it (:meth:`ClusterStart.abandon`). A request for a given client,
    a scheduler or a cluster profile is returned as it is (a profile's cluster
    is started in the main thread, where dask-jobqueue's import can be kept
    from Ctrl-C).
    """
    if not request.starts_local_cluster() or request.starting is not None:
        yield request
        return
    start = ClusterStart(request)
    try:
        yield dataclasses.replace(request, starting=start)
    except BaseException:
        start.abandon()
        raise
    start.close()


def _closing_after(start: ClusterStart) -> Callable[..., bool]:
    """How a started cluster is closed on leaving :func:`watched_cluster`: behind the caller after success, here after an error.

    After success the run only writes its outputs, so the cluster closes meanwhile
    (:func:`cluster_starting`, around the whole run, waits for the close at its
    end). After an error or an interruption it closes at once, as the error is
    reported: futures still held by the unwinding run must not meet a scheduler
    that is half closed, which distributed reports as ERROR lines.
    """

    def close(error_type: type[BaseException] | None, *_: object) -> bool:
        if error_type is None:
            start.close_behind()
        else:
            start.close()
        return False  # never swallows the error

    return close


@contextlib.contextmanager
def watched_cluster(request: ClusterRequest) -> Iterator[tuple[Client, ClusterWatch]]:
    """A client (the given one, or of a cluster opened here and closed after) and the watch that bounds every wait on it."""
    with contextlib.ExitStack() as stack:
        if request.client is not None:
            client = request.client
        elif request.starting is not None:
            stack.push(_closing_after(request.starting))
            client = request.starting.client()
        else:
            client = stack.enter_context(
                dask_client(
                    request.scheduler, request.workers, security=request.security, dashboard=request.dashboard, profile=request.profile
                )
            )
        watch = stack.enter_context(ClusterWatch(client, request.no_workers_timeout))
        yield client, watch
