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
    design-<key>         QR of each distinct (participants, covariates), read from
                         designs/<key>.npz, shared by all blocks of all layers
    samples-, totals-, batch-<token>
                         small inputs held as tasks (not scattered), so the scheduler can
                         recompute them if the worker holding them dies
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import distributed
from dask.base import tokenize
from distributed import Client
from distributed.security import Security

from scalable_assoc.engine.cluster import dask_client
from scalable_assoc.engine.prepare import LayerWork, PreparedStudy, write_design
from scalable_assoc.engine.profiles import ClusterProfile
from scalable_assoc.engine.tasks import factorise, hold, model_block, model_block_key
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


def hold_on_cluster(client: Client, value: object, name: str) -> distributed.Future:
    """Place ``value`` on the cluster as a task (recomputable if its worker dies), keyed by content."""
    return client.submit(hold, value, key=f"{name}-{tokenize(value)}")


class SharedDesigns:
    """Factorised designs shared by every block of every layer that uses them.

    Each design is written once to ``designs/<key>.npz`` on the shared
    filesystem and factorised by the task ``design-<key>``; a worker that dies
    takes nothing with it that the scheduler cannot recompute.
    """

    def __init__(self, client: Client, folder: Path) -> None:
        self.client = client
        self.folder = folder
        self.futures: dict[str, distributed.Future] = {}

    def for_layer(self, layer: LayerWork) -> dict[str, distributed.Future]:
        """``design key -> future`` of every design of ``layer`` (and of the layers before it)."""
        for key, design in layer.designs.items():
            if key not in self.futures:
                path = write_design(self.folder, design)
                self.futures[key] = self.client.submit(factorise, path, key=f"design-{key}")
        return self.futures


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

    def submit_block(self, client: Client, index: int, view: str) -> distributed.Future:
        """The ``view`` ("transformed", "nonzero" or "presence") of block ``index``'s kept features, as a task."""
        start, stop = self.layer.store.block_bounds()[index]
        preprocess = self.layer.spec.preprocess
        return client.submit(
            model_block,
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
            key=model_block_key(view, self.token, index),
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


@contextlib.contextmanager
def watched_cluster(request: ClusterRequest) -> Iterator[tuple[Client, ClusterWatch]]:
    """A client (the given one, or of a cluster opened here and closed after) and the watch that bounds every wait on it."""
    with contextlib.ExitStack() as stack:
        if request.client is not None:
            client = request.client
        else:
            client = stack.enter_context(
                dask_client(
                    request.scheduler, request.workers, security=request.security, dashboard=request.dashboard, profile=request.profile
                )
            )
        watch = stack.enter_context(ClusterWatch(client, request.no_workers_timeout))
        yield client, watch
