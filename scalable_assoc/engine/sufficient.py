"""Sufficient statistics of a finished run's linear models, for an exact pooled analysis.

The graph mirrors the run's: the same filter and per-sample sums (so every
feature is transformed exactly as in the run), one transformed block per store
chunk, and one task per block x ``lm`` design group that returns the
within-cohort centred cross-products (:mod:`scalable_assoc.models.pooled`) as
an Arrow table. Tables are small (``c (c + 1) / 2 + c + 1`` numbers per
feature and analysis) and are gathered on the client.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
from distributed import Client
from distributed.security import Security

from scalable_assoc.engine.cluster import check_cluster_options, dask_client
from scalable_assoc.engine.prepare import PreparedAnalysis, PreparedStudy, prepare_study, read_design, write_design
from scalable_assoc.engine.profiles import ClusterProfile, load_cluster_profile
from scalable_assoc.engine.run import WORK_DIR, filter_layers, hold_on_cluster, layer_token, log_to_stderr
from scalable_assoc.engine.tasks import ModelBlock, model_block, model_block_key
from scalable_assoc.engine.watch import ClusterWatch
from scalable_assoc.errors import DataError
from scalable_assoc.io.runstate import folder_lock
from scalable_assoc.models.pooled import centred_cross_products, with_reference_dummies
from scalable_assoc.plan.schema import Plan
from scalable_assoc.results.sumstats import SUFFICIENT_SCHEMA, RunOutputs, cross_products_table, read_run


def sufficient_chunk(layer: str, block: ModelBlock, feature_ids: tuple[str, ...], design_path: Path, analyses: tuple[PreparedAnalysis, ...]) -> pa.Table:
    """Centred cross-products of every analysis of one design on every feature of one block.

    ``block`` holds the run's transformed view ``(n_used, m)``; ``design_path`` the
    design file written by the run (participant rows and covariate matrix).
    """
    design = read_design(Path(design_path))
    covariates, names = with_reference_dummies(design.matrix, design.names, design.references)
    outcome = block.values[design.rows]
    tables = []
    for analysis in analyses:
        products = centred_cross_products(analysis.exposure, covariates, analysis.binary, outcome)
        tables.append(cross_products_table(layer, feature_ids, analysis.key.exposure, analysis.key.adjustment, analysis.key.analysis_id, ("exposure",) + names, products))
    return pa.concat_tables(tables) if tables else SUFFICIENT_SCHEMA.empty_table()


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
            raise DataError(f"{run_dir}: the feature list of layer '{layer.spec.name}' ({study.features}) changed since this run; run it again before exporting")


def sufficient_statistics(
    run_dir: str | Path | RunOutputs,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    log: Callable[[str], None] = log_to_stderr,
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
    run, manifest, plan = outputs.run_dir.resolve(), outputs.manifest, outputs.plan
    work = run / WORK_DIR
    # The export writes stores, filters and designs into the run's work folder: a run
    # starting there meanwhile would remove them as another run's leftovers.
    with folder_lock(work, f"sumstats --sufficient {run}", log):
        return _sufficient_statistics_locked(run, manifest, plan, work, scheduler, workers, client, log, security, dashboard, cluster_profile)


def _sufficient_statistics_locked(
    run: Path,
    manifest: dict,
    plan: Plan,
    work: Path,
    scheduler: str | None,
    workers: int | None,
    client: Client | None,
    log: Callable[[str], None],
    security: Security | None,
    dashboard: str | None,
    cluster_profile: ClusterProfile | None,
) -> pa.Table:
    """:func:`sufficient_statistics`' work, once the run's folder is held."""
    if cluster_profile is not None:
        cluster_profile = cluster_profile.with_shared_directory(work / "slurm")
    features = (manifest.get("features") or {}).get("path")
    if features is not None and not Path(features).is_file():
        raise DataError(f"{run}: the run's feature list {features} no longer exists; the cross-products need the features the run transformed over")
    study = prepare_study(
        plan,
        work / "stores",
        manifest.get("chunk_features"),
        manifest.get("intersect_samples", False),
        log,
        Path(features) if features is not None else None,
        (manifest.get("min_cases") or {}).get("used"),
    )
    _check_run(run, study, manifest)
    if not any(a.key.model == "lm" for layer in study.layers for a in layer.analyses):
        raise DataError(f"{run}: the plan fits no 'lm' model; sufficient statistics exist for linear models only")

    def execute(active: Client) -> pa.Table:
        with ClusterWatch(active) as watch:
            return execute_watched(active, watch)

    def execute_watched(active: Client, watch: ClusterWatch) -> pa.Table:
        positions = {layer.spec.name: hold_on_cluster(active, layer.sample_positions, "samples") for layer in study.layers}
        filters = filter_layers(active, study, positions, work / "filters", log, watch)
        futures = []
        for layer in study.layers:
            analyses = [a for a in layer.analyses if a.key.model == "lm" and not a.levels]  # categorical exposures: no single slope to pool
            if not analyses:
                continue
            layer_filter = filters[layer.spec.name]
            token = layer_token(study, layer)
            totals = hold_on_cluster(active, layer_filter.sample_totals, "totals") if layer_filter.sample_totals is not None else None
            groups: dict[str, tuple[PreparedAnalysis, ...]] = {}
            for analysis in analyses:
                groups[analysis.design_key] = groups.get(analysis.design_key, ()) + (analysis,)
            paths = {key: write_design(work / "designs", layer.designs[key]) for key in groups}
            held = {key: hold_on_cluster(active, group, "batch") for key, group in groups.items()}
            for index, (start, stop) in enumerate(layer.store.block_bounds()):
                kept = layer_filter.kept[index]
                if not kept.any():
                    continue
                block = active.submit(
                    model_block, layer.store.path, start, stop, positions[layer.spec.name], kept, "transformed",
                    layer.spec.preprocess.transform, layer_filter.pseudocount, totals, layer.spec.presence_threshold,
                    key=model_block_key("transformed", token, index),
                )
                for key in groups:
                    futures.append(
                        active.submit(sufficient_chunk, layer.spec.name, block, layer_filter.kept_ids[index], paths[key], held[key], key=f"sufficient-{token}-{index}-{key}")
                    )
        tables = []
        for done, future in enumerate(watch.completed(futures), start=1):
            tables.append(future.result())
            if done == len(futures) or done % max(1, len(futures) // 10) == 0:
                log(f"  sufficient statistics: {done}/{len(futures)} tasks")
        return pa.concat_tables(tables) if tables else SUFFICIENT_SCHEMA.empty_table()

    if client is not None:
        return execute(client)
    with dask_client(scheduler, workers, security=security, dashboard=dashboard, log=log, profile=cluster_profile) as own:
        return execute(own)
