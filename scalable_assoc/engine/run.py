"""Running a study: the Dask graph, progress, resume and the output files.

The graph for one layer, with deterministic keys so identical steps run once::

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
    fit-<chunk id>-<run> block i x a batch of analyses -> chunks/<chunk id>.parquet (atomic)

A chunk file that already exists was finished by an earlier, interrupted run of
the same plan on the same inputs; its task is not submitted again.
"""

from __future__ import annotations

import hashlib
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import dask
import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from dask.base import tokenize
from distributed import Client, KilledWorker
from distributed.security import Security

from scalable_assoc import __version__
from scalable_assoc.engine.cluster import check_cluster_options, dask_client
from scalable_assoc.engine.prepare import ChunkTask, LayerWork, PreparedStudy, chunk_tasks, prepare_study, write_design
from scalable_assoc.engine.profiles import ClusterProfile, load_cluster_profile
from scalable_assoc.engine.tasks import MODEL_VIEWS, factorise, fit_chunk, hold, model_block, model_block_key, sum_block, summarise_block
from scalable_assoc.engine.watch import DEFAULT_NO_WORKERS_TIMEOUT, ClusterWatch
from scalable_assoc.errors import ClusterFailure, DataError, PlanError, UserInputError
from scalable_assoc.io.atomic import file_checksum, remove_sealed, seal, sealed, write_json, write_npz, write_parquet, write_tsv
from scalable_assoc.io.runstate import RUN_LOG, RunLog, RunStatus, folder_lock, read_status, remove_leftovers, timestamp
from scalable_assoc.plan.schema import MODELS, Plan, load_plan
from scalable_assoc.results.columns import COVARIATE_SCHEMA, PARTIAL_SCHEMA
from scalable_assoc.results.gather import assemble_results, read_chunks, results_table, sorted_by_family_q
from scalable_assoc.results.harmonise import feature_set_digest
from scalable_assoc.results.summary import adjustment_summary, joint_presence_abundance, survival_readout
from scalable_assoc.stats.transforms import needs_sample_summary, select_features, with_absent_zeros

#: Output files, removed before a run writes new ones so that a failed run never
#: leaves a complete-looking set behind. The manifest is written last.
OUTPUT_FILES = (
    "manifest.json",
    "results.parquet",
    "all_results.tsv",
    "significant_results.tsv",
    "adjustment_summary.tsv",
    "adjustment_survival.tsv",
    "features.parquet",
    "features.tsv",
    "joint_results.parquet",
    "joint_results.tsv",
    "covariate_results.parquet",
    "covariate_results.tsv",
)
WORK_DIR = ".scalable_assoc"


@dataclass
class RunSummary:
    """What a finished run produced (paths are inside ``out_dir``)."""

    out_dir: Path
    results: pd.DataFrame
    adjustment: pd.DataFrame
    survival: pd.DataFrame
    manifest: dict
    chunks_total: int
    chunks_reused: int
    seconds: float


@dataclass
class _LayerFilter:
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


def log_to_stderr(message: str) -> None:
    """The default ``log`` of the engine's commands: one line to stderr, flushed (progress is seen as it happens)."""
    print(message, file=sys.stderr, flush=True)


def layer_token(study: PreparedStudy, layer: LayerWork) -> str:
    """A short hash of what a layer's filter, per-sample sums and blocks depend on: part of their cache names and Dask keys.

    Not the FDR settings, names or paths (see :meth:`Plan.rows_hash`); the feature list when one chooses the kept features.
    """
    parts = [study.plan.rows_hash(), study.metadata_sha256, layer.input_sha256, layer.spec.name, str(layer.store.chunk_features)]
    if layer.listed is not None:  # a feature list (plan key or --features) chooses the kept features
        parts.append(f"features={layer.list_token()}")
    text = "\x1f".join(parts)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kept_ids(layer: LayerWork, kept: list[np.ndarray]) -> list[tuple[str, ...]]:
    """Per block, the IDs of the features the filter kept."""
    ids = layer.store.feature_ids
    return [tuple(ids[start + j] for j in np.flatnonzero(k)) for (start, _), k in zip(layer.store.block_bounds(), kept, strict=True)]


def _filter_path(folder: Path, study: PreparedStudy, layer: LayerWork) -> Path:
    return folder / f"filter-{layer_token(study, layer)}-{layer.samples_digest()}.npz"


def _save_filter(path: Path, layer_filter: _LayerFilter) -> None:
    arrays = {
        "kept": np.concatenate(layer_filter.kept),
        "pseudocount": np.array(layer_filter.pseudocount),
        "nonzero": layer_filter.nonzero,
        "observed": layer_filter.observed,
    }
    for which in ("sample_totals", "nonzero_totals"):
        value = getattr(layer_filter, which)
        if value is not None:
            arrays[f"{which}_0"], arrays[f"{which}_1"] = value
    write_npz(path, arrays)


def _load_filter(path: Path, layer: LayerWork) -> _LayerFilter:
    with np.load(path, allow_pickle=False) as data:
        bounds = layer.store.block_bounds()
        kept = [data["kept"][start:stop].copy() for start, stop in bounds]
        totals = {
            which: (data[f"{which}_0"], data[f"{which}_1"]) if f"{which}_0" in data.files else None for which in ("sample_totals", "nonzero_totals")
        }
        return _LayerFilter(
            kept,
            float(data["pseudocount"]),
            layer.store.n_features,
            int(data["kept"].sum()),
            sample_totals=totals["sample_totals"],
            nonzero_totals=totals["nonzero_totals"],
            kept_ids=_kept_ids(layer, kept),
            nonzero=data["nonzero"],
            observed=data["observed"],
        )


def filter_layers(
    client: Client,
    study: PreparedStudy,
    positions: dict[str, distributed.Future],
    folder: Path,
    log: Callable[[str], None] = log_to_stderr,
    watch: ClusterWatch | None = None,
) -> dict[str, _LayerFilter]:
    """:func:`_filter_layers`, kept in ``folder`` so that a resumed run or a later export does not pass over the data again.

    The file name holds the layer token (plan, inputs, layer, chunking), so a
    changed plan or input never finds an old filter. ``watch`` bounds the
    waits when the cluster fails (see :mod:`scalable_assoc.engine.watch`).
    """
    filters: dict[str, _LayerFilter] = {}
    missing = []
    for layer in study.layers:
        path = _filter_path(folder, study, layer)
        if path.is_file():
            filters[layer.spec.name] = _load_filter(path, layer)
            log(f"  layer '{layer.spec.name}': filter and per-sample sums reused from an earlier pass")
        else:
            missing.append(layer)
    if missing:
        computed = _filter_layers(client, study, positions, missing, watch or ClusterWatch(client))
        for layer in missing:
            _save_filter(_filter_path(folder, study, layer), computed[layer.spec.name])
        filters.update(computed)
    return filters


def _filter_layers(
    client: Client, study: PreparedStudy, positions: dict[str, distributed.Future], layers: list[LayerWork], watch: ClusterWatch
) -> dict[str, _LayerFilter]:
    """Prevalence filter, pseudocount and per-sample sums of ``layers`` (two reductions over all their blocks).

    All layers' blocks are submitted together so the workers never wait on the
    client between layers.
    """
    all_summaries: dict[str, list] = {}
    summary_futures = {}
    for layer in layers:
        bounds = layer.store.block_bounds()
        # A run on all samples of a store uses the counts stored with it: no pass over the data.
        if np.array_equal(layer.sample_positions, np.arange(layer.store.n_samples)):
            stored = [layer.store.stored_feature_summary(start, stop) for start, stop in bounds]
            if all(s is not None for s in stored):
                all_summaries[layer.spec.name] = stored
                continue
        summary_futures[layer.spec.name] = [
            client.submit(summarise_block, layer.store.path, start, stop, positions[layer.spec.name], key=f"summary-{layer_token(study, layer)}-{i}")
            for i, (start, stop) in enumerate(bounds)
        ]
    all_summaries.update(watch.gather(summary_futures))
    filters: dict[str, _LayerFilter] = {}
    sum_futures: dict[tuple[str, str], list[distributed.Future]] = {}
    for layer in layers:
        name = layer.spec.name
        summaries = all_summaries[name]
        preprocess = layer.spec.preprocess
        bounds = layer.store.block_bounds()
        listed = [layer.listed.mask[start:stop] for start, stop in bounds] if layer.listed is not None else None
        try:
            kept, pseudocount = select_features(summaries, preprocess.min_prevalence, preprocess.pseudocount, listed)
        except ValueError as error:
            source = f" with the feature list {layer.listed.path}" if layer.listed is not None else ""
            raise DataError(f"layer '{name}' ({layer.spec.path}){source}: {error}") from None
        n_kept = int(sum(k.sum() for k in kept))
        kept_ids = _kept_ids(layer, kept)
        filters[name] = _LayerFilter(
            kept,
            pseudocount,
            layer.store.n_features,
            n_kept,
            kept_ids=kept_ids,
            nonzero=np.concatenate([np.asarray(s.nonzero, dtype=np.int64) for s in summaries]),
            observed=np.concatenate([np.asarray(s.observed, dtype=np.int64) for s in summaries]),
        )
        views = {MODEL_VIEWS[model] for model in layer.spec.models}
        token = layer_token(study, layer)
        transform = preprocess.transform
        # TSS/AST totals serve both the transformed and the non-zero view; CLR needs its own
        # sums for the non-zero view (a geometric mean over the features a sample has).
        if needs_sample_summary(transform) and ("transformed" in views or ("nonzero" in views and transform != "clr")):
            sum_futures[(name, "sample_totals")] = [
                client.submit(sum_block, layer.store.path, start, stop, positions[name], k, transform, pseudocount, key=f"sums-{token}-{i}")
                for i, ((start, stop), k) in enumerate(zip(bounds, kept, strict=True))
                if k.any()
            ]
        if "nonzero" in views and transform == "clr":
            threshold = layer.spec.presence_threshold
            sum_futures[(name, "nonzero_totals")] = [
                client.submit(
                    sum_block, layer.store.path, start, stop, positions[name], k, transform, 0.0, threshold, key=f"nonzero-sums-{token}-{i}"
                )
                for i, ((start, stop), k) in enumerate(zip(bounds, kept, strict=True))
                if k.any()
            ]
    for (name, which), parts in watch.gather(sum_futures).items():
        setattr(filters[name], which, (np.sum([p[0] for p in parts], axis=0), np.sum([p[1] for p in parts], axis=0)))
    for layer in layers:
        # Listed features the layer lacks are zeros in every sample: they enter the CLR mean of the
        # transformed view (not the non-zero view's, which runs over present values only).
        layer_filter = filters[layer.spec.name]
        if layer.listed is not None and layer_filter.sample_totals is not None:
            layer_filter.sample_totals = with_absent_zeros(
                layer_filter.sample_totals, layer.listed.n_absent, layer.spec.preprocess.transform, layer_filter.pseudocount
            )
    return filters


def _feature_table(study: PreparedStudy, filters: dict[str, _LayerFilter]) -> pd.DataFrame:
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


def hold_on_cluster(client: Client, value: object, name: str) -> distributed.Future:
    """Place ``value`` on the cluster as a task (recomputable if its worker dies), keyed by content."""
    return client.submit(hold, value, key=f"{name}-{tokenize(value)}")


class _SharedDesigns:
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
        for key, design in layer.designs.items():
            if key not in self.futures:
                path = write_design(self.folder, design)
                self.futures[key] = self.client.submit(factorise, path, key=f"design-{key}")
        return self.futures


def _remove_outputs(out_dir: Path) -> None:
    """An earlier run's results must not outlive a run that then fails: they would look like its answer."""
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)


def _remove_stale_chunks(chunks_dir: Path, keep_chunks: set[str]) -> None:
    """Chunk files of other plans or inputs can never be reused; those of this run are kept for resuming."""
    if chunks_dir.is_dir():
        for path in chunks_dir.glob("*.parquet*"):
            if path.name.split(".")[0] not in keep_chunks:  # <id>.parquet, <id>.covariates.parquet and their seals
                path.unlink(missing_ok=True)


def _finished_chunks(chunks_dir: Path, tasks: list[ChunkTask], log: Callable[[str], None]) -> set[str]:
    """Ids of the chunks an earlier run finished whose files still hold exactly what it wrote.

    A chunk file without its seal (its task was killed between the two), or one
    truncated or edited since, is removed and computed again, with a warning.
    """
    done = set()
    for task in tasks:
        files = task.files(chunks_dir)
        states = [sealed(path) for path in files]
        if all(states):
            done.add(task.chunk_id)
        elif any(state is False for state in states):
            log(
                f"warning: chunk {task.chunk_id} (layer '{task.layer}', features {task.start}-{task.stop - 1}) no longer matches "
                "what the run that wrote it recorded (truncated, edited or unfinished); computing it again"
            )
            for path in files:
                remove_sealed(path)
    return done


def _layer_manifest(layer: LayerWork, f: _LayerFilter) -> dict:
    """Filter, transform and feature set of one layer, as ``manifest.json`` records them.

    ``transform_features_sha256`` identifies the features the transform ran over
    (the list's names, absent ones included, or the kept features): cohorts whose
    CLR/TSS/AST values are comparable have the same one.
    """
    listed = layer.listed
    return {
        "features_total": f.n_features,
        "features_kept": f.n_kept,
        "pseudocount": f.pseudocount,
        "samples": int(layer.sample_positions.size),
        "feature_list_used": listed is not None,
        "feature_list": listed.manifest_entry() if listed is not None else None,
        "transform_features": listed.n_listed if listed is not None else f.n_kept,
        "transform_features_sha256": listed.digest if listed is not None else feature_set_digest(i for ids in f.kept_ids for i in ids),
    }


def _manifest(
    study: PreparedStudy,
    filters: dict[str, _LayerFilter],
    chunks_total: int,
    chunks_reused: int,
    timings: dict[str, float],
    client_info: dict,
    chunk_features: int | None = None,
    intersect_samples: bool = False,
) -> dict:
    plan = study.plan
    analyses = []
    for layer in study.layers:
        for a in layer.analyses:
            analyses.append(
                {
                    "analysis_id": a.key.analysis_id,
                    "layer": a.key.layer,
                    "exposure": a.key.exposure,
                    "adjustment": a.key.adjustment,
                    "model": a.key.model,
                    "n": a.n,
                    "n_cases": a.n_cases,
                    "n_controls": a.n_controls,
                    # intercept + exposure + covariate columns (dummies included): the disclosure rule's p
                    "parameters": int(next(layer for layer in study.layers if layer.spec.name == a.key.layer).designs[a.design_key].matrix.shape[1])
                    + max(len(a.levels) - 1, 1),
                    "covariates": list(a.covariates),
                    "left_out_identical_to_exposure": list(a.left_out),
                    "left_out_constant": list(a.constant),
                    "design": a.design_key,
                    # lm / lm_nonzero: standard errors (classical | cluster) and, for cluster-robust ones, the p reference
                    "ols_options": {"se": a.ols.se, "reference": a.ols.reference if a.ols.cluster_robust else None} if a.ols is not None else None,
                    # clusters of the plan's cluster column among the participants, where the model uses them (lmm, se: cluster)
                    "n_clusters": a.n_clusters,
                }
            )
    return {
        "package": "scalable_assoc",
        "version": __version__,
        "plan": str(plan.source),
        "plan_name": plan.name,
        "plan_hash": study.plan_hash,
        # the plan may name files outside its folder (run --allow-outside-paths); sumstats reopens it the same way
        "allow_outside_paths": plan.allow_outside_paths,
        "inputs": {
            "metadata": {"path": str(plan.metadata), "sha256": study.metadata_sha256},
            **{f"layer:{layer.spec.name}": {"path": str(layer.spec.path), "sha256": layer.input_sha256, "store": str(layer.store.path)} for layer in study.layers},
        },
        # a shared feature list (run --features or the plan's features:), else None
        "features": {"path": str(study.features), "sha256": file_checksum(study.features)} if study.features is not None else None,
        # the minimum group size enforced: the plan's, unless run --min-cases overrode it for this run
        "min_cases": {"plan": plan.min_cases, "used": study.min_cases},
        "layers": {layer.spec.name: _layer_manifest(layer, filters[layer.spec.name]) for layer in study.layers},
        "cluster": plan.cluster,
        "analyses": analyses,
        # everything the run warned about (also in its log)
        "warnings": list(study.warnings),
        # as given to the run (None: automatic); a later export re-opens the same stores
        "chunk_features": chunk_features,
        "intersect_samples": intersect_samples,
        "designs": sum(len(layer.designs) for layer in study.layers),
        "chunks_total": chunks_total,
        "chunks_reused": chunks_reused,
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
        "dask": client_info,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "pandas": pd.__version__,
            "dask": dask.__version__,
            "distributed": distributed.__version__,
        },
    }


def _up_to_date(plan: Plan, out: Path, options: dict[str, object], features: Path | None) -> RunSummary | None:
    """The finished run in ``out`` when it was made by this version from this plan, these inputs and options; else None.

    Inputs are compared by content (SHA-256), so a touched but unchanged file
    does not count as a change, and an edited one always does.
    """
    status = read_status(out)
    if status is None or status.state != "finished":
        return None
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # The cheap comparisons first, the inputs' checksums next, the outputs last.
    if manifest.get("version") != __version__ or manifest.get("plan_hash") != plan.content_hash():
        return None
    if any(manifest.get(key) != value for key, value in options.items()):
        return None
    inputs = manifest.get("inputs", {})
    expected = {"metadata": plan.metadata, **{f"layer:{layer.name}": layer.path for layer in plan.layers}}
    listed = features if features is not None else plan.features
    recorded = manifest.get("features")
    if set(inputs) != set(expected) or (listed is None) != (recorded is None):
        return None
    if listed is not None and (not listed.is_file() or recorded.get("sha256") != file_checksum(listed)):
        return None
    for key, path in expected.items():
        if not path.exists() or inputs[key].get("sha256") != file_checksum(path):
            return None
    try:
        results = pd.read_parquet(out / "results.parquet")
        adjustment = pd.read_csv(out / "adjustment_summary.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
        survival = pd.read_csv(out / "adjustment_survival.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
    except (OSError, ValueError):
        return None
    return RunSummary(out, results, adjustment, survival, manifest, int(manifest.get("chunks_total", 0)), int(manifest.get("chunks_total", 0)), 0.0)


def run_study(
    plan: str | Path | Plan,
    out_dir: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    chunk_features: int | None = None,
    intersect_samples: bool = False,
    analyses_per_task: int = 8,
    log: Callable[[str], None] = log_to_stderr,
    on_chunk_done: Callable[[int, int], None] | None = None,
    features: str | Path | None = None,
    min_cases: int | None = None,
    covariate_rows: bool = False,
    force: bool = False,
    allow_outside_paths: bool = False,
    security: Security | None = None,
    dashboard: str | None = None,
    no_workers_timeout: float = DEFAULT_NO_WORKERS_TIMEOUT,
    cluster_profile: ClusterProfile | str | Path | None = None,
) -> RunSummary:
    """Run every analysis of a plan and write the outputs to ``out_dir``.

    A finished run in ``out_dir`` made by this version from the same plan,
    inputs (by content) and options is returned as it is ("up to date"),
    unless ``force``.

    Uses ``client`` if given, else connects to ``scheduler``, else starts a
    local cluster of ``workers`` processes. ``on_chunk_done(done, total)`` is
    called after every finished chunk (progress hooks, tests). ``features``
    (a feature list file, see :mod:`scalable_assoc.io.feature_list`) overrides
    the plan's ``features:``; ``min_cases`` the plan's ``min_cases`` for this
    run only (the plan's hash, and what ``meta``/``pool`` compare, stay as they are). With
    ``covariate_rows`` every covariate's coefficient in every lm model is also
    written, to ``covariate_results.parquet`` / ``.tsv``. ``allow_outside_paths``
    lets a plan given as a path name files outside its folder (``run --allow-outside-paths``).

    The local cluster is closed (:mod:`scalable_assoc.engine.cluster`): TLS with
    temporary credentials, loopback only, no dashboard unless ``dashboard``
    (``HOST:PORT``, or a port on loopback) asks for one. ``security`` holds
    the client credentials for a ``tls://`` ``scheduler`` (see
    :func:`~scalable_assoc.engine.cluster.tls_security`; without it dask's
    ``distributed.comm.tls`` configuration is used).

    A cluster that stops finishing the run ends it with
    :class:`~scalable_assoc.errors.ClusterFailure` (finished chunks kept, a
    rerun resumes): no worker for ``no_workers_timeout`` seconds, the scheduler
    lost, or a task that ends every worker running it (see
    :mod:`scalable_assoc.engine.watch`).

    ``cluster_profile`` (a :class:`~scalable_assoc.engine.profiles.ClusterProfile`
    or the path of a profile file, ``run --cluster``) starts the workers as
    SLURM jobs instead (:mod:`scalable_assoc.engine.slurm`; needs dask-jobqueue);
    it takes none of ``scheduler``, ``workers``, ``dashboard``, ``security`` or
    ``client``. Its ``shared_directory`` defaults to ``out_dir/.scalable_assoc/slurm``.
    """
    if not no_workers_timeout > 0:
        raise UserInputError(f"--no-workers-timeout must be a positive number of seconds, got {no_workers_timeout!r}")
    if cluster_profile is not None and not isinstance(cluster_profile, ClusterProfile):
        cluster_profile = load_cluster_profile(cluster_profile)
    if cluster_profile is not None and client is not None:
        raise UserInputError(f"a cluster profile ({cluster_profile.source}) starts its own cluster; pass either client or cluster_profile")
    if min_cases is not None and (isinstance(min_cases, bool) or min_cases < 1):
        raise UserInputError(f"--min-cases must be a positive whole number, got {min_cases!r}")
    if client is None:
        check_cluster_options(scheduler, security, dashboard, workers=workers, profile=cluster_profile)  # before any work
    plan = plan if isinstance(plan, Plan) else load_plan(plan, allow_outside_paths=allow_outside_paths)
    out = Path(out_dir).resolve()
    work = out / WORK_DIR
    if cluster_profile is not None:
        cluster_profile = cluster_profile.with_shared_directory(work / "slurm")
    # The lock comes first: a second run on a folder in use must change nothing in it.
    with folder_lock(work, f"run {plan.source}", log) as holder, RunLog(out / RUN_LOG, holder) as run_log:
        log = run_log.tee(log)
        removed = remove_leftovers(out, work)
        if removed:
            log(f"removed {len(removed)} temporary file(s) left by an interrupted run in {out}")
        options: dict[str, object] = {
            "chunk_features": chunk_features,
            "intersect_samples": intersect_samples,
            "covariate_rows": covariate_rows,
            "min_cases": {"plan": plan.min_cases, "used": min_cases if min_cases is not None else plan.min_cases},
        }
        current = None if force else _up_to_date(plan, out, options, Path(features).resolve() if features is not None else None)
        if current is not None:
            log(f"{out} is up to date: finished from the same plan, inputs and options (use --force to run again)")
            run_log.event("up to date")
            return current
        status = RunStatus("running", plan.content_hash(), holder["started"], host=holder["host"], pid=holder["pid"])
        status.write(work)
        last_write = time.monotonic()

        def progress(done: int, total: int) -> None:
            nonlocal last_write
            first = status.chunks_total != total  # the first report says how much there is to do at once
            status.chunks_done, status.chunks_total = done, total
            if first or time.monotonic() - last_write > 1.0 or done == total:
                status.write(work)
                last_write = time.monotonic()
            if on_chunk_done is not None:
                on_chunk_done(done, total)

        try:
            computing = _RunOptions(
                scheduler, workers, client, chunk_features, intersect_samples, analyses_per_task, features, min_cases, covariate_rows, security, dashboard,
                no_workers_timeout,
                cluster_profile,
            )
            summary = _run_study_locked(plan, out, computing, log, progress, run_log.phase)
        except BaseException as error:
            status.state = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
            status.error = " ".join(str(error).split()) or type(error).__name__
            status.finished = timestamp()
            status.write(work)
            run_log.event(status.state, error=status.error)
            raise
        status.state, status.finished = "finished", timestamp()
        status.chunks_done = status.chunks_total = summary.chunks_total
        status.write(work)
        run_log.event("finished", chunks_total=summary.chunks_total, chunks_reused=summary.chunks_reused, seconds=round(summary.seconds, 3))
        return summary


@dataclass(frozen=True)
class _RunOptions:
    """How :func:`run_study` was asked to compute, passed on once the output folder is held (see its parameters)."""

    scheduler: str | None
    workers: int | None
    client: Client | None
    chunk_features: int | None
    intersect_samples: bool
    analyses_per_task: int
    features: str | Path | None
    min_cases: int | None
    covariate_rows: bool
    security: Security | None
    dashboard: str | None
    no_workers_timeout: float
    cluster_profile: ClusterProfile | None


def _run_study_locked(
    plan: Plan,
    out: Path,
    options: _RunOptions,
    log: Callable[[str], None],
    on_chunk_done: Callable[[int, int], None],
    on_phase: Callable[[str], None],
) -> RunSummary:
    """:func:`run_study`'s work, once the output folder is held; ``on_phase(name)`` marks each phase's start."""
    scheduler, workers, client, security, dashboard = options.scheduler, options.workers, options.client, options.security, options.dashboard
    chunk_features, intersect_samples, analyses_per_task = options.chunk_features, options.intersect_samples, options.analyses_per_task
    features, min_cases, covariate_rows = options.features, options.min_cases, options.covariate_rows
    on_phase("prepare")
    started = time.perf_counter()
    timings: dict[str, float] = {}
    _remove_outputs(out)
    work = out / WORK_DIR
    chunks_dir = work / "chunks"
    study = prepare_study(plan, work / "stores", chunk_features, intersect_samples, log, Path(features) if features is not None else None, min_cases)
    timings["prepare"] = time.perf_counter() - started
    if covariate_rows and plan.cluster is not None:
        raise PlanError(
            f"plan {plan.source}, key 'cluster': --covariate-rows reports classical standard errors, which a plan with "
            f"'cluster: {plan.cluster}' does not use; run without --covariate-rows or without the cluster"
        )
    tasks = chunk_tasks(study, analyses_per_task, covariate_rows)
    _remove_stale_chunks(chunks_dir, {t.chunk_id for t in tasks})
    done = _finished_chunks(chunks_dir, tasks, log)
    pending = [t for t in tasks if t.chunk_id not in done]
    n_analyses = sum(len(layer.analyses) for layer in study.layers)
    log(
        f"{plan.name}: {n_analyses} analyses over {len(study.layers)} layer(s), "
        f"{sum(len(layer.designs) for layer in study.layers)} distinct designs, {len(tasks)} chunks"
        + (f" ({len(done)} already done, resuming)" if done else "")
    )

    def execute(active: Client) -> tuple[dict[str, _LayerFilter], dict]:
        with ClusterWatch(active, options.no_workers_timeout) as watch:
            return execute_watched(active, watch)

    def execute_watched(active: Client, watch: ClusterWatch) -> tuple[dict[str, _LayerFilter], dict]:
        on_phase("filter")
        phase = time.perf_counter()
        positions = {layer.spec.name: hold_on_cluster(active, layer.sample_positions, "samples") for layer in study.layers}
        filters = filter_layers(active, study, positions, work / "filters", log, watch)
        timings["filter"] = time.perf_counter() - phase
        shared = _SharedDesigns(active, work / "designs")
        fit_futures: dict[distributed.Future, ChunkTask] = {}
        for layer in study.layers:
            layer_pending = [t for t in pending if t.layer == layer.spec.name]
            if layer_pending:
                fit_futures |= _submit_fits(active, study, layer, filters[layer.spec.name], layer_pending, positions[layer.spec.name], chunks_dir, shared)
        on_phase("fit")
        phase = time.perf_counter()
        finished = len(done)
        last_report = 0.0
        for _ in watch.completed(fit_futures):
            finished += 1
            now = time.perf_counter()
            if now - last_report > 1.0 or finished == len(tasks):
                log(f"  chunks {finished}/{len(tasks)} ({100 * finished / len(tasks):.0f}%), {now - started:.1f}s")
                last_report = now
            on_chunk_done(finished, len(tasks))
        for future, task in fit_futures.items():
            try:
                future.result()  # re-raise a task's error here
            except KilledWorker:
                raise ClusterFailure(
                    f"the task of chunk {task.chunk_id} (layer '{task.layer}', features {task.start}-{task.stop - 1}, "
                    f"{len(task.analyses)} analyses) ended every worker that ran it, as running out of memory does; give the "
                    "workers more memory, or fewer features per chunk (--chunk-features on a new --out); the chunks already "
                    "finished are kept and a rerun resumes"
                ) from None
        timings["fit"] = time.perf_counter() - phase
        info = active.scheduler_info()
        return filters, {"scheduler": info.get("address"), "workers": len(info.get("workers", {}))}

    on_phase("cluster")
    phase = time.perf_counter()
    if client is not None:
        filters, client_info = execute(client)
    else:
        with dask_client(scheduler, workers, security=security, dashboard=dashboard, log=log, profile=options.cluster_profile) as own:
            timings["cluster_start"] = time.perf_counter() - phase
            filters, client_info = execute(own)

    on_phase("gather")
    phase = time.perf_counter()
    partial = read_chunks([t.rows_file(chunks_dir) for t in tasks])
    results = assemble_results(
        partial,
        [layer.spec.name for layer in study.layers],
        exposure_row_order(study),
        list(plan.adjustments),
        {layer.spec.name: layer.store.feature_ids for layer in study.layers},
        plan.fdr.by,
        MODELS,
    )
    summary = adjustment_summary(results, list(plan.adjustments), plan.fdr.alpha)
    survival = survival_readout(summary, list(plan.adjustments))
    significant = results[results["q"].lt(plan.fdr.alpha).fillna(False).to_numpy(dtype=bool)]
    # results.parquet keeps plan order (runs compare row by row); the TSV is for reading: by q within family.
    write_parquet(out / "results.parquet", results_table(results))
    write_tsv(out / "all_results.tsv", sorted_by_family_q(results, plan.fdr.by))
    write_tsv(out / "significant_results.tsv", significant.sort_values("q", kind="stable"))
    write_tsv(out / "adjustment_summary.tsv", summary)
    write_tsv(out / "adjustment_survival.tsv", survival)
    features = _feature_table(study, filters)
    write_parquet(out / "features.parquet", features)
    write_tsv(out / "features.tsv", features)
    if all(any(model in layer.spec.models for layer in study.layers) for model in ("lm_nonzero", "prevalence")):
        joint = joint_presence_abundance(results, plan.fdr.by)
        write_parquet(out / "joint_results.parquet", joint)
        write_tsv(out / "joint_results.tsv", joint)
    if covariate_rows:
        covariates = covariate_results(study, [path for t in tasks if (path := t.covariates_file(chunks_dir)) is not None])
        write_parquet(out / "covariate_results.parquet", pa.Table.from_pandas(covariates, schema=COVARIATE_SCHEMA, preserve_index=False))
        write_tsv(out / "covariate_results.tsv", covariates)
    timings["gather"] = time.perf_counter() - phase
    timings["total"] = time.perf_counter() - started
    manifest = _manifest(study, filters, len(tasks), len(done), timings, client_info, chunk_features, intersect_samples)
    manifest["covariate_rows"] = covariate_rows
    write_json(out / "manifest.json", manifest)
    return RunSummary(out, results, summary, survival, manifest, len(tasks), len(done), timings["total"])


def exposure_row_order(study: PreparedStudy) -> list[str]:
    """The results' exposure values in plan order: a categorical exposure's omnibus row, then its levels."""
    order: list[str] = []
    for exposure in study.plan.exposures:
        order.append(exposure.name)
        for layer in study.layers:
            for analysis in layer.analyses:
                if analysis.key.exposure == exposure.name:
                    order += [f"{exposure.name}[{level}]" for level in analysis.levels[1:]]
    return list(dict.fromkeys(order))


def covariate_results(study: PreparedStudy, paths: list[Path]) -> pd.DataFrame:
    """Covariate coefficient rows of every chunk, in plan order (layer, exposure, adjustment, feature), terms in design order."""
    tables = [pq.read_table(path, schema=COVARIATE_SCHEMA) for path in paths]
    frame = (pa.concat_tables(tables) if tables else COVARIATE_SCHEMA.empty_table()).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    feature_rank = np.zeros(len(frame), dtype=np.int64)
    term_rank = np.zeros(len(frame), dtype=np.int64)
    for layer in study.layers:
        rows = (frame["layer"] == layer.spec.name).to_numpy()
        feature_rank[rows] = pd.Index(layer.store.feature_ids).get_indexer(frame.loc[rows, "feature"])
        for analysis in layer.analyses:
            names = layer.designs[analysis.design_key].names
            these = rows & (frame["exposure"] == analysis.key.exposure).to_numpy() & (frame["adjustment"] == analysis.key.adjustment).to_numpy()
            term_rank[these] = pd.Index(names).get_indexer(frame.loc[these, "term"])
    codes = [
        pd.Categorical(frame[column], categories=categories, ordered=True).codes
        for column, categories in (
            ("layer", [layer.spec.name for layer in study.layers]),
            ("exposure", [e.name for e in study.plan.exposures]),
            ("adjustment", list(study.plan.adjustments)),
        )
    ]
    order = np.lexsort((term_rank, feature_rank, codes[2], codes[1], codes[0]))
    return frame.iloc[order].reset_index(drop=True)


def _submit_fits(
    client: Client,
    study: PreparedStudy,
    layer: LayerWork,
    layer_filter: _LayerFilter,
    pending: list[ChunkTask],
    positions: distributed.Future,
    chunks_dir: Path,
    shared: _SharedDesigns,
) -> dict[distributed.Future, ChunkTask]:
    """Submit transformed blocks, shared design factorisations and the fit tasks of one layer: each fit future with its task."""
    token = layer_token(study, layer)
    bounds = layer.store.block_bounds()
    preprocess = layer.spec.preprocess
    totals = {
        "transformed": layer_filter.sample_totals,
        "nonzero": layer_filter.nonzero_totals if preprocess.transform == "clr" else layer_filter.sample_totals,
        "presence": None,
    }
    totals_futures = {view: hold_on_cluster(client, value, "totals") if value is not None else None for view, value in totals.items()}
    design_futures = shared.for_layer(layer)
    # Fit keys name the output folder too: two runs of one plan into two folders on one
    # cluster must not share tasks, since each task writes into its own run's folder.
    run_token = hashlib.sha256(str(chunks_dir).encode()).hexdigest()[:12]
    blocks: dict[tuple[str, int], distributed.Future] = {}
    batches: dict[tuple[str, ...], distributed.Future] = {}
    futures: dict[distributed.Future, ChunkTask] = {}
    chunks_dir.mkdir(parents=True, exist_ok=True)
    for task in pending:
        kept = layer_filter.kept[task.block_index]
        output, covariate_output = task.rows_file(chunks_dir), task.covariates_file(chunks_dir)
        if not kept.any():
            # Every feature of this block was filtered out: the chunk is complete and empty.
            if covariate_output is not None:
                write_parquet(covariate_output, COVARIATE_SCHEMA.empty_table())
                seal(covariate_output)
            write_parquet(output, PARTIAL_SCHEMA.empty_table())
            seal(output)
            continue
        view = MODEL_VIEWS[task.analyses[0].key.model]
        if (view, task.block_index) not in blocks:
            start, stop = bounds[task.block_index]
            blocks[(view, task.block_index)] = client.submit(
                model_block, layer.store.path, start, stop, positions, kept, view, preprocess.transform,
                layer_filter.pseudocount, totals_futures[view], layer.spec.presence_threshold,
                key=model_block_key(view, token, task.block_index),
            )
        batch_ids = tuple(a.key.analysis_id for a in task.analyses)
        if batch_ids not in batches:
            batches[batch_ids] = hold_on_cluster(client, task.analyses, "batch")
        used = list(dict.fromkeys(a.design_key for a in task.analyses))
        futures[
            client.submit(
                fit_chunk,
                layer.spec.name,
                blocks[(view, task.block_index)],
                layer_filter.kept_ids[task.block_index],
                [design_futures[k] for k in used],
                batches[batch_ids],
                output,
                covariate_output,
                key=f"fit-{task.chunk_id}-{run_token}",
            )
        ] = task
    return futures
