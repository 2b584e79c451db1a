"""Alpha diversity as result rows: per-sample metrics of each covered layer, fitted like a feature block.

For every layer the plan's ``diversity`` block covers (when it asks for alpha
metrics), one task per store chunk reads the RAW stored values of all the
chunk's features (no prevalence filter, no transform) over the layer's used
samples and returns the ``(n_samples, 5)`` partial sums of
:func:`~scalable_assoc.stats.diversity.alpha_partial_sums`::

    alpha-sums-<layer token>-<samples>-<i>   block i's partial sums -> client (added up)

The client adds them up, turns them into the metrics
(:func:`~scalable_assoc.stats.diversity.alpha_from_sums`) and fits the tiny
``(n_samples, n_metrics)`` block for every exposure x adjustment set of the layer
with the features' own OLS kernel (:func:`~scalable_assoc.engine.tasks.fit_chunk`
with the ``lm`` model, in the client process). A sample whose metric is
missing (a missing abundance; an all-zero sample for shannon / simpson) is
left out of that metric's fits only: the masked OLS path handles it as it
handles a feature's missing values. No carrier rule applies (a metric is no
feature one carries).

The per-sample metrics are also written to ``alpha_diversity.parquet`` in the
output folder (:data:`ALPHA_VALUES_FILE`: ``sample_id`` and one column
``<layer>:<metric>`` per covered layer x metric, missing where a sample is not
among the layer's used samples or its metric is missing), for the report.

The rows name the layer ``alpha:<layer>`` and the metric as ``feature``, with
model ``lm``; :func:`assemble_alpha_results` gives them their own FDR families,
apart from the feature rows, whatever ``fdr.by`` says.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
from distributed import Client

from scalable_assoc.engine.blocks import ModelBlock
from scalable_assoc.engine.diversity_tasks import alpha_sums_block
from scalable_assoc.engine.graph import layer_token
from scalable_assoc.engine.prepare import LayerWork, PreparedAnalysis, PreparedStudy
from scalable_assoc.engine.watch import ClusterWatch
from scalable_assoc.io.atomic import write_parquet
from scalable_assoc.results.alpha_names import ALPHA_LAYER_PREFIX as ALPHA_LAYER_PREFIX
from scalable_assoc.results.alpha_names import ALPHA_VALUES_FILE, alpha_column, alpha_layer_name
from scalable_assoc.results.alpha_names import is_alpha_layer as is_alpha_layer
from scalable_assoc.results.gather import assemble_results, read_chunks
from scalable_assoc.stats.diversity import alpha_from_sums

logger = logging.getLogger(__name__)

#: The model alpha diversity rows are fitted with.
ALPHA_MODEL = "lm"


def alpha_layers(study: PreparedStudy) -> list[LayerWork]:
    """The analysed layers whose alpha metrics the plan asks for (none without ``diversity.alpha``)."""
    spec = study.plan.diversity
    if spec is None or not spec.alpha:
        return []
    covered = spec.layers_of(tuple(layer.spec.name for layer in study.layers))
    return [layer for layer in study.layers if layer.spec.name in covered]


def _alpha_analyses(study: PreparedStudy, layer: LayerWork) -> list[PreparedAnalysis]:
    """One ``lm`` analysis per exposure x adjustment set of the layer, without carrier rules.

    The layer's ``lm`` analyses when it has them; else those of its first model
    (their designs are the exposure x adjustment's participants), as ``lm``.
    """
    models = list(dict.fromkeys(a.key.model for a in layer.analyses))
    if not models:
        return []
    model = ALPHA_MODEL if ALPHA_MODEL in models else models[0]
    options = study.plan.lm
    chosen = [a for a in layer.analyses if a.key.model == model]
    return [
        replace(
            a,
            key=replace(a.key, layer=alpha_layer_name(layer.spec.name), model=ALPHA_MODEL),
            ols=options,
            min_carriers=0,
            min_prevalence=0.0,
            carrier_cells=False,
        )
        for a in chosen
    ]


def _submit_sums(client: Client, study: PreparedStudy, layer: LayerWork, positions: distributed.Future) -> list[distributed.Future]:
    token = f"{layer_token(study, layer)}-{layer.samples_digest()}"
    return [
        client.submit(
            alpha_sums_block, layer.store.path, start, stop, positions, layer.spec.presence_threshold, key=f"alpha-sums-{token}-{i}"
        )
        for i, (start, stop) in enumerate(layer.store.block_bounds())
    ]


def alpha_metrics(
    client: Client, watch: ClusterWatch, study: PreparedStudy, positions: dict[str, distributed.Future]
) -> dict[str, dict[str, np.ndarray]]:
    """Per covered layer, ``{metric: (n_used,)}`` over its used samples (NaN: missing), from one pass over its chunks."""
    layers = alpha_layers(study)
    futures = {layer.spec.name: _submit_sums(client, study, layer, positions[layer.spec.name]) for layer in layers}
    gathered = watch.gather(futures) if futures else {}
    metrics = study.plan.diversity.alpha if study.plan.diversity is not None else ()
    return {name: alpha_from_sums(np.sum(parts, axis=0), metrics) for name, parts in gathered.items()}


def fit_alpha(study: PreparedStudy, layer: LayerWork, metrics: dict[str, np.ndarray], folder: Path) -> pa.Table:
    """Rows of every metric x exposure x adjustment set of ``layer`` (partial schema), fitted in this process."""
    # The workers' kernels (SciPy, the models), imported only by a run whose plan asks for alpha metrics.
    from scalable_assoc.engine.tasks import fit_chunk, shared_design

    analyses = _alpha_analyses(study, layer)
    names = tuple(metrics)
    values = np.column_stack([metrics[name] for name in names]) if names else np.zeros((len(layer.sample_positions), 0))
    block = ModelBlock(values, ~np.isnan(values))
    folder.mkdir(parents=True, exist_ok=True)
    designs = {key: shared_design(design) for key, design in layer.designs.items() if any(a.design_key == key for a in analyses)}
    # fit_chunk takes analyses of one kind per call: categorical exposures apart from the others.
    paths = []
    for i, batch in enumerate(group for group in ([a for a in analyses if not a.levels], [a for a in analyses if a.levels]) if group):
        path = folder / f"alpha-{layer_token(study, layer)}-{i}.parquet"
        used = list(dict.fromkeys(a.design_key for a in batch))
        fit_chunk(alpha_layer_name(layer.spec.name), block, names, [designs[k] for k in used], tuple(batch), path)
        paths.append(path)
    return read_chunks(paths)


def alpha_values(study: PreparedStudy, metrics: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """The per-sample metrics: ``sample_id`` (every layer's used samples, first seen first) and ``<layer>:<metric>`` columns."""
    columns: dict[str, pd.Series] = {}
    for layer in alpha_layers(study):
        ids = [str(layer.store.sample_ids[i]) for i in layer.sample_positions]
        for metric, values in metrics[layer.spec.name].items():
            columns[alpha_column(layer.spec.name, metric)] = pd.Series(np.asarray(values, dtype=np.float64), index=ids)
    ids = list(dict.fromkeys(i for series in columns.values() for i in series.index))
    frame = pd.DataFrame({name: series.reindex(ids) for name, series in columns.items()}, index=pd.Index(ids, name="sample_id"))
    return frame.reset_index()


def alpha_rows(
    client: Client,
    watch: ClusterWatch,
    study: PreparedStudy,
    positions: dict[str, distributed.Future],
    folder: Path,
    out: Path | None = None,
) -> pa.Table | None:
    """The alpha diversity rows of the run (partial schema), or None when the plan asks for none.

    ``folder`` receives the fitted rows' files (one per layer and kind of exposure); ``out``, when
    given, the per-sample metrics (:data:`ALPHA_VALUES_FILE`).
    """
    layers = alpha_layers(study)
    if not layers:
        return None
    logger.info("alpha diversity: %s over %d layer(s)", ", ".join(study.plan.diversity.alpha), len(layers))  # type: ignore[union-attr]
    metrics = alpha_metrics(client, watch, study, positions)
    if out is not None:
        write_parquet(out / ALPHA_VALUES_FILE, alpha_values(study, metrics))
    return pa.concat_tables([fit_alpha(study, layer, metrics[layer.spec.name], folder) for layer in layers])


def assemble_alpha_results(study: PreparedStudy, rows: pa.Table, exposure_order: list[str], model_order: tuple[str, ...]) -> pd.DataFrame:
    """The alpha rows in plan order with q from their own families (the ``fdr.by`` columns, among alpha rows only)."""
    layers = alpha_layers(study)
    spec = study.plan.diversity
    metrics = list(spec.alpha) if spec is not None else []
    return assemble_results(
        rows,
        [alpha_layer_name(layer.spec.name) for layer in layers],
        exposure_order,
        list(study.plan.adjustments),
        {alpha_layer_name(layer.spec.name): metrics for layer in layers},
        study.plan.fdr.by,
        model_order,
    )
