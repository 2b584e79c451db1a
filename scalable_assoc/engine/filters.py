"""Each layer's prevalence filter, pseudocount and per-sample sums: one pass over its blocks, kept for resumed runs and exports.

The sums are what the transforms need for every sample (CLR means, TSS/AST
totals) over the kept features; they are computed once per layer and sample
set and kept in ``filters/filter-<layer token>-<samples>.npz``.

A run on all samples of a store that holds per-sample sums (written at ingest,
see :mod:`scalable_assoc.stats.sample_sums`) composes them with no read of the
abundance chunks, when: the pseudocount a CLR needs is the one they were summed
with, every feature the filter removes is in the store's sparse copy of rare
features, there is no feature list, and the non-zero view's presence threshold
is 0. Otherwise (and for stores written before the sums) the sums are a pass
over the blocks, and the log says why.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pandas as pd
from distributed import Client

from scalable_assoc.engine.graph import hold_on_cluster, layer_token
from scalable_assoc.engine.prepare import LayerWork, PreparedStudy, reference_order
from scalable_assoc.engine.task_refs import MODEL_VIEWS, sum_block, summarise_block
from scalable_assoc.engine.watch import ClusterWatch
from scalable_assoc.errors import DataError
from scalable_assoc.io.run_cache import FilterFile, filter_path, read_filter_file, write_filter_file
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.stats.sample_sums import kept_sums, rare_features, removed_cell_sums
from scalable_assoc.stats.transforms import FeatureSummary, needs_sample_summary, select_features, with_absent_zeros

logger = logging.getLogger(__name__)


@dataclass
class LayerFilter:
    """A layer's prevalence filter, pseudocount and per-sample sums over the samples a run uses."""

    kept: list[np.ndarray]  # per block, bool (m_block,)
    pseudocount: float
    n_features: int
    n_kept: int
    sample_totals: tuple[np.ndarray, np.ndarray] | None = None
    #: per-sample sums over present values only (the CLR of the non-zero view)
    nonzero_totals: tuple[np.ndarray, np.ndarray] | None = None
    kept_ids: list[tuple[str, ...]] = field(default_factory=list)
    #: per feature of the layer (all blocks): values > 0 and values present, over the samples used
    nonzero: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    observed: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))


def _kept_ids(layer: LayerWork, kept: list[np.ndarray]) -> list[tuple[str, ...]]:
    """Per block, the IDs of the features the filter kept."""
    ids = layer.store.feature_ids
    return [tuple(ids[start + j] for j in np.flatnonzero(k)) for (start, _), k in zip(layer.store.block_bounds(), kept, strict=True)]


def _filter_path(folder: Path, study: PreparedStudy, layer: LayerWork) -> Path:
    return filter_path(folder, layer_token(study, layer), layer.samples_digest())


def _save_filter(path: Path, layer_filter: LayerFilter) -> None:
    saved = FilterFile(
        np.concatenate(layer_filter.kept),
        layer_filter.pseudocount,
        layer_filter.nonzero,
        layer_filter.observed,
        layer_filter.sample_totals,
        layer_filter.nonzero_totals,
    )
    write_filter_file(path, saved)


def _load_filter(path: Path, layer: LayerWork) -> LayerFilter:
    saved = read_filter_file(path)
    kept = [saved.kept[start:stop].copy() for start, stop in layer.store.block_bounds()]
    return LayerFilter(
        kept,
        saved.pseudocount,
        layer.store.n_features,
        int(saved.kept.sum()),
        sample_totals=saved.sample_totals,
        nonzero_totals=saved.nonzero_totals,
        kept_ids=_kept_ids(layer, kept),
        nonzero=saved.nonzero,
        observed=saved.observed,
    )


def filter_layers(
    client: Client,
    study: PreparedStudy,
    positions: dict[str, distributed.Future],
    folder: Path,
    watch: ClusterWatch | None = None,
) -> dict[str, LayerFilter]:
    """:func:`_filter_layers`, kept in ``folder`` so that a resumed run or a later export does not pass over the data again.

    The file name holds the layer token (plan, inputs, layer, chunking), so a
    changed plan or input never finds an old filter. ``watch`` bounds the
    waits when the cluster fails (see :mod:`scalable_assoc.engine.watch`).
    """
    filters: dict[str, LayerFilter] = {}
    missing = []
    if study.references:  # layers only named as CLR references: their samples are not held yet
        positions = positions | {ref.spec.name: hold_on_cluster(client, ref.sample_positions, "samples") for ref in study.references}
    for layer in [*study.layers, *study.references]:
        path = _filter_path(folder, study, layer)
        if path.is_file():
            filters[layer.spec.name] = _load_filter(path, layer)
            logger.info("  layer '%s': filter and per-sample sums reused from an earlier pass", layer.spec.name)
        else:
            missing.append(layer)
    if missing:
        computed = _filter_layers(client, study, positions, missing, watch or ClusterWatch(client))
        filters.update(computed)
        for layer in missing:
            _use_reference_sums(study, layer, filters)
            _save_filter(_filter_path(folder, study, layer), computed[layer.spec.name])
    return {layer.spec.name: filters[layer.spec.name] for layer in study.layers}


def _use_reference_sums(study: PreparedStudy, layer: LayerWork, filters: dict[str, LayerFilter]) -> None:
    """A layer with a ``clr_reference`` takes its CLR per-sample sums (both views) from the reference layer, in its own sample order."""
    name = layer.spec.preprocess.clr_reference
    if name is None:
        return
    reference = filters[name]
    order = reference_order(layer, study.layer_work(name))
    layer_filter = filters[layer.spec.name]
    if reference.sample_totals is not None:
        layer_filter.sample_totals = (reference.sample_totals[0][order], reference.sample_totals[1][order])
    if reference.nonzero_totals is not None:
        layer_filter.nonzero_totals = (reference.nonzero_totals[0][order], reference.nonzero_totals[1][order])


def _filter_layers(
    client: Client, study: PreparedStudy, positions: dict[str, distributed.Future], layers: list[LayerWork], watch: ClusterWatch
) -> dict[str, LayerFilter]:
    """Prevalence filter, pseudocount and per-sample sums of ``layers`` (two reductions over all their blocks).

    All layers' blocks are submitted together so the workers never wait on the
    client between layers.
    """
    summaries = _feature_summaries(client, study, positions, layers, watch)
    filters = {layer.spec.name: _select(layer, summaries[layer.spec.name]) for layer in layers}
    sum_futures: dict[tuple[str, str], list[distributed.Future]] = {}
    for layer in layers:
        views = _sum_views(study, layer)
        stored = _stored_sums(layer, filters[layer.spec.name], views)
        if stored is not None:
            for which, totals in stored.items():
                setattr(filters[layer.spec.name], which, totals)
            continue
        sum_futures |= _submit_sample_sums(client, study, layer, filters[layer.spec.name], positions[layer.spec.name], views)
    for (name, which), parts in _gather_counting(watch, sum_futures, "sums", "filtering (per-sample sums)").items():
        setattr(filters[name], which, (np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)))
    for layer in layers:
        # Listed features the layer lacks are zeros in every sample: they enter the CLR mean of the
        # transformed view (not the non-zero view's, which runs over present values only).
        # After the transform, the CLR runs over the layer's own features only: the list just chooses the fitted ones.
        layer_filter = filters[layer.spec.name]
        if layer.listed is not None and layer_filter.sample_totals is not None and not layer.spec.preprocess.transform_all_features:
            layer_filter.sample_totals = with_absent_zeros(
                layer_filter.sample_totals, layer.listed.n_absent, layer.spec.preprocess.transform, layer_filter.pseudocount
            )
    return filters


def _feature_summaries(
    client: Client, study: PreparedStudy, positions: dict[str, distributed.Future], layers: list[LayerWork], watch: ClusterWatch
) -> dict[str, list]:
    """Per layer, each block's prevalence counts over the samples used: stored with the store when they cover them, else a pass."""
    summaries: dict[str, list] = {}
    futures = {}
    for layer in layers:
        bounds = layer.store.block_bounds()
        # A run on all samples of a store uses the counts stored with it: no pass over the data.
        if np.array_equal(layer.sample_positions, np.arange(layer.store.n_samples)):
            # read whole, then cut per block: opening the arrays once per block cost 6 ms a block (1 s at 100,000 features)
            stored = layer.store.stored_feature_summary(0, layer.store.n_features)
            if stored is not None:
                summaries[layer.spec.name] = [
                    FeatureSummary(stored.nonzero[start:stop], stored.observed[start:stop], stored.min_positive[start:stop])
                    for start, stop in bounds
                ]
                continue
        futures[layer.spec.name] = [
            client.submit(
                summarise_block, layer.store.path, start, stop, positions[layer.spec.name], key=f"summary-{layer_token(study, layer)}-{i}"
            )
            for i, (start, stop) in enumerate(bounds)
        ]
    summaries.update(_gather_counting(watch, futures, "filter", "filtering (prevalence)"))
    return summaries


def _gather_counting(watch: ClusterWatch, futures: dict[Any, list[distributed.Future]], phase: str, label: str) -> dict[Any, list[Any]]:
    """``watch.gather(futures)``, with a progress message as the tasks finish (none when there is nothing to wait for)."""
    waiting = [f for parts in futures.values() for f in parts]
    if waiting:
        progress = ProgressReporter(logger, phase, len(waiting), "blocks", label=label)
        progress.start()
        for _ in watch.completed(waiting):  # erred tasks count too; gather re-raises their errors
            progress.advance()
    return watch.gather(futures)


def _select(layer: LayerWork, summaries: list) -> LayerFilter:
    """The kept features and pseudocount of one layer from its block summaries (or its feature list)."""
    preprocess = layer.spec.preprocess
    bounds = layer.store.block_bounds()
    listed = [layer.listed.mask[start:stop] for start, stop in bounds] if layer.listed is not None else None
    try:
        kept, pseudocount = select_features(
            summaries, preprocess.min_prevalence, preprocess.pseudocount, listed, pseudocount_over_all=preprocess.transform_all_features
        )
    except ValueError as error:
        source = f" with the feature list {layer.listed.path}" if layer.listed is not None else ""
        raise DataError(f"layer '{layer.spec.name}' ({layer.spec.path}){source}: {error}") from None
    return LayerFilter(
        kept,
        pseudocount,
        layer.store.n_features,
        int(sum(k.sum() for k in kept)),
        kept_ids=_kept_ids(layer, kept),
        nonzero=np.concatenate([np.asarray(s.nonzero, dtype=np.int64) for s in summaries]),
        observed=np.concatenate([np.asarray(s.observed, dtype=np.int64) for s in summaries]),
    )


def _sum_views(study: PreparedStudy, layer: LayerWork) -> set[str]:
    """The model views whose per-sample sums are computed from ``layer``'s blocks.

    Its own views, unless a ``clr_reference`` supplies its sums; and those of every layer naming it as CLR reference.
    """
    views = set() if layer.spec.preprocess.clr_reference is not None else {MODEL_VIEWS[model] for model in layer.spec.models}
    for other in study.layers:
        if other.spec.preprocess.clr_reference == layer.spec.name:
            views |= {MODEL_VIEWS[model] for model in other.spec.models}
    return views


def _needed_sums(layer: LayerWork, views: set[str]) -> dict[str, str]:
    """The per-sample sums the model ``views`` need: ``"sample_totals"`` / ``"nonzero_totals"`` -> the kind of sum.

    TSS/AST totals serve both the transformed and the non-zero view; CLR needs its own
    sums for the non-zero view (a geometric mean over the features a sample has).
    """
    transform = layer.spec.preprocess.transform
    needed = {}
    if needs_sample_summary(transform) and ("transformed" in views or ("nonzero" in views and transform != "clr")):
        needed["sample_totals"] = transform
    if "nonzero" in views and transform == "clr":
        needed["nonzero_totals"] = "nonzero"
    return needed


def _stored_sums(layer: LayerWork, layer_filter: LayerFilter, views: set[str]) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """The per-sample sums of ``layer`` composed from those stored with its store, or None (logged) when a pass must compute them."""
    needed = _needed_sums(layer, views)
    if not needed:
        return {}
    name, store = layer.spec.name, layer.store
    why = None
    stored = store.stored_sample_sums()
    if not np.array_equal(layer.sample_positions, np.arange(store.n_samples)):
        why = "the run uses some of the store's samples only"
    elif stored is None:
        why = "the store holds no per-sample sums (written before them: ingest it again to have them)"
    elif layer.listed is not None:
        why = "the layer has a feature list"
    elif "nonzero" in needed.values() and layer.spec.presence_threshold != 0:
        why = f"the non-zero view's presence threshold is {layer.spec.presence_threshold}, not 0"
    elif "clr" in needed.values() and layer_filter.pseudocount != stored[0].pseudocount:
        why = f"the pseudocount {layer_filter.pseudocount} is not the one the stored sums use ({stored[0].pseudocount})"
    if why is not None or stored is None:
        logger.info("  layer '%s': per-sample sums by a pass over the blocks: %s", name, why)
        return None
    sums, cap = stored
    removed = np.zeros(store.n_features, dtype=bool)
    if not layer.spec.preprocess.transform_all_features:
        removed = ~np.concatenate(layer_filter.kept)
    if (removed & ~rare_features(layer_filter.nonzero, layer_filter.observed, cap)).any():
        logger.info(
            "  layer '%s': per-sample sums by a pass over the blocks: the filter removes features the store has no sparse copy of", name
        )
        return None
    pseudocount = layer_filter.pseudocount if "clr" in needed.values() else None
    parts = np.zeros((6, store.n_samples))
    if removed.any():
        for samples, values in store.rare_cells(removed):
            parts += removed_cell_sums(samples, values, store.n_samples, pseudocount, needed.values())
    logger.info("  layer '%s': per-sample sums from those stored with the store (%d features removed)", name, int(removed.sum()))
    return {which: kept_sums(sums, parts, int(removed.sum()), kind, pseudocount) for which, kind in needed.items()}


def _submit_sample_sums(
    client: Client, study: PreparedStudy, layer: LayerWork, layer_filter: LayerFilter, positions: distributed.Future, views: set[str]
) -> dict[tuple[str, str], list[distributed.Future]]:
    """The per-sample sum tasks of the model ``views`` that read them from this layer, by ``(layer, "sample_totals" | "nonzero_totals")``.

    The sums run over the kept features, or over all features with ``filter: after_transform``.
    """
    name, preprocess = layer.spec.name, layer.spec.preprocess
    token = layer_token(study, layer)
    transform = preprocess.transform
    bounds = layer.store.block_bounds()
    kept = [np.ones(stop - start, dtype=bool) for start, stop in bounds] if preprocess.transform_all_features else layer_filter.kept
    futures: dict[tuple[str, str], list[distributed.Future]] = {}
    needed = _needed_sums(layer, views)
    if "sample_totals" in needed:
        futures[(name, "sample_totals")] = [
            client.submit(
                sum_block, layer.store.path, start, stop, positions, k, transform, layer_filter.pseudocount, key=f"sums-{token}-{i}"
            )
            for i, ((start, stop), k) in enumerate(zip(bounds, kept, strict=True))
            if k.any()
        ]
    if "nonzero_totals" in needed:
        threshold = layer.spec.presence_threshold
        futures[(name, "nonzero_totals")] = [
            client.submit(
                sum_block, layer.store.path, start, stop, positions, k, transform, 0.0, threshold, key=f"nonzero-sums-{token}-{i}"
            )
            for i, ((start, stop), k) in enumerate(zip(bounds, kept, strict=True))
            if k.any()
        ]
    return futures


def feature_table(study: PreparedStudy, filters: dict[str, LayerFilter]) -> pd.DataFrame:
    """Per layer and feature: participants observed, with the feature present (> 0), prevalence, kept by the filter."""
    frames = []
    for layer in study.layers:
        f = filters[layer.spec.name]
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(f.observed > 0, f.nonzero / np.maximum(f.observed, 1), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "layer": layer.spec.name,
                    "feature": list(layer.store.feature_ids),
                    "n_observed": f.observed,
                    "n_present": f.nonzero,
                    "prevalence": fraction,
                    "kept": np.concatenate(f.kept),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)
