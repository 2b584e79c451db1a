"""Sufficient statistics of a finished run's linear models, for an exact pooled analysis.

The graph mirrors the run's: the same filter and per-sample sums (so every
feature is transformed exactly as in the run), one transformed block per store
chunk, and one task per block x ``lm`` design group that returns the
within-cohort centred cross-products (:mod:`scalable_assoc.models.pooled`) as
an Arrow table. Tables are small (``c (c + 1) / 2 + c + 1`` numbers per
feature and analysis) and are gathered on the client.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
from distributed import Client
from distributed.security import Security

from scalable_assoc.engine.cluster import check_cluster_options
from scalable_assoc.engine.filters import filter_layers
from scalable_assoc.engine.graph import ClusterRequest, hold_on_cluster, layer_on_cluster, watched_cluster
from scalable_assoc.engine.prepare import PreparedAnalysis, PreparedStudy, prepare_study, write_design
from scalable_assoc.engine.profiles import ClusterProfile, load_cluster_profile
from scalable_assoc.engine.run import WORK_DIR
from scalable_assoc.engine.task_refs import sufficient_chunk
from scalable_assoc.engine.watch import ClusterWatch
from scalable_assoc.errors import DataError
from scalable_assoc.io.runstate import folder_lock
from scalable_assoc.plan.schema import Plan
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.results.sumstats import SUFFICIENT_SCHEMA, RunOutputs, read_run

logger = logging.getLogger(__name__)


def _check_run(run_dir: Path, study: PreparedStudy, manifest: dict) -> None:
    """The inputs must be those the run used: the cross-products must belong to its results (the plan is checked by read_run)."""
    inputs = manifest.get("inputs", {})
    if inputs.get("metadata", {}).get("sha256") != study.metadata_sha256:
        raise DataError(f"{run_dir}: the metadata file {study.plan.metadata} changed since this run; run it again before exporting")
    for layer in study.layers:
        recorded = inputs.get(f"layer:{layer.spec.name}", {}).get("sha256")
        if recorded != layer.input_sha256:
            raise DataError(f"{run_dir}: the abundance table of layer '{layer.spec.name}' ({layer.spec.path}) changed since this run")
        listed = (manifest.get("layers", {}).get(layer.spec.name) or {}).get("feature_list")
        now = layer.listed.digest if layer.listed is not None else None
        if (listed or {}).get("names_sha256") != now:
            raise DataError(
                f"{run_dir}: the feature list of layer '{layer.spec.name}' ({study.features}) changed since this run; run it again before "
                "exporting"
            )


def sufficient_statistics(
    run_dir: str | Path | RunOutputs,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    security: Security | None = None,
    dashboard: str | None = None,
    cluster_profile: ClusterProfile | str | Path | None = None,
) -> pa.Table:
    """Cross-products of every ``lm`` analysis x kept feature of a finished run (see :data:`SUFFICIENT_SCHEMA`).

    Re-reads the run's inputs (refusing them if they changed since) on the
    cluster given by ``client`` / ``scheduler``, or on a new local one.
    ``run_dir`` may be the folder or what :func:`read_run` read from it.
    ``security`` and ``dashboard`` are as for
    :func:`~scalable_assoc.engine.run.run_study` (credentials for a ``tls://``
    scheduler; a dashboard on the local cluster). Holds the run folder's lock
    while it works (:class:`~scalable_assoc.io.runstate.FolderInUse`, exit 75,
    when a run or another export holds it). ``cluster_profile`` (a
    profile or its file, ``sumstats --cluster``) starts workers as SLURM jobs,
    as for ``run_study``; its ``shared_directory`` defaults to the run's
    ``.scalable_assoc/slurm``.
    """
    if cluster_profile is not None and not isinstance(cluster_profile, ClusterProfile):
        cluster_profile = load_cluster_profile(cluster_profile)
    if client is None:
        check_cluster_options(scheduler, security, dashboard, workers=workers, profile=cluster_profile)  # before any work
    outputs = run_dir if isinstance(run_dir, RunOutputs) else read_run(Path(run_dir))
    run, manifest = outputs.run_dir.resolve(), outputs.manifest
    work = run / WORK_DIR
    if cluster_profile is not None:
        cluster_profile = cluster_profile.with_shared_directory(work / "slurm")
    cluster = ClusterRequest(client, scheduler, workers, security, dashboard, cluster_profile)
    # The export writes stores, filters and designs into the run's work folder: a run
    # starting there meanwhile would remove them as another run's leftovers.
    with folder_lock(work, f"sumstats --sufficient {run}"):
        study = _prepare_run_again(run, manifest, outputs.plan, work)
        with watched_cluster(cluster) as (active, watch):
            return _cross_products(active, watch, study, work)


def _prepare_run_again(run: Path, manifest: dict, plan: Plan, work: Path) -> PreparedStudy:
    """The run's study prepared as the run did (same stores, chunking, samples, feature list, min_cases); refused if an input changed."""
    features = (manifest.get("features") or {}).get("path")
    if features is not None and not Path(features).is_file():
        raise DataError(
            f"{run}: the run's feature list {features} no longer exists; the cross-products need the features the run transformed over"
        )
    study = prepare_study(
        plan,
        work / "stores",
        manifest.get("chunk_features"),
        manifest.get("intersect_samples", False),
        Path(features) if features is not None else None,
        (manifest.get("min_cases") or {}).get("used"),
    )
    _check_run(run, study, manifest)
    if not any(a.key.model == "lm" for layer in study.layers for a in layer.analyses):
        raise DataError(f"{run}: the plan fits no 'lm' model; sufficient statistics exist for linear models only")
    return study


def _cross_products(client: Client, watch: ClusterWatch, study: PreparedStudy, work: Path) -> pa.Table:
    """Submit one task per block x lm design group, over the run's own filter and transformed blocks; gather the tables."""
    positions = {layer.spec.name: hold_on_cluster(client, layer.sample_positions, "samples") for layer in study.layers}
    filters = filter_layers(client, study, positions, work / "filters", watch)
    futures = []
    for layer in study.layers:
        analyses = [a for a in layer.analyses if a.key.model == "lm" and not a.levels]  # categorical exposures: no single slope to pool
        if not analyses:
            continue
        held = layer_on_cluster(client, study, layer, filters[layer.spec.name], positions[layer.spec.name], ["transformed"])
        groups: dict[str, tuple[PreparedAnalysis, ...]] = {}
        for analysis in analyses:
            groups[analysis.design_key] = groups.get(analysis.design_key, ()) + (analysis,)
        paths = {key: write_design(work / "designs", layer.designs[key]) for key in groups}
        batches = {key: hold_on_cluster(client, group, "batch") for key, group in groups.items()}
        for index, kept in enumerate(held.layer_filter.kept):
            if not kept.any():
                continue
            block = held.submit_block(client, index, "transformed")
            for key in groups:
                futures.append(
                    client.submit(
                        sufficient_chunk,
                        layer.spec.name,
                        block,
                        held.layer_filter.kept_ids[index],
                        paths[key],
                        batches[key],
                        key=f"sufficient-{held.token}-{index}-{key}",
                    )
                )
    tables = []
    progress = ProgressReporter(logger, "sufficient", len(futures), "tasks", label="computing sufficient statistics")
    progress.start()
    for future in watch.completed(futures):
        tables.append(future.result())
        progress.advance()
    return pa.concat_tables(tables) if tables else SUFFICIENT_SCHEMA.empty_table()
