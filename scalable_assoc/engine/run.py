"""Running a study: the fit tasks, progress, resume, and the run's state in its output folder.

On top of what every pass builds (:mod:`scalable_assoc.engine.graph`: held
inputs, shared designs, model views of blocks, the filter of
:mod:`scalable_assoc.engine.filters`), a run submits a task per chunk::

    fit-<chunk id>-<run> block i x a batch of analyses -> chunks/<chunk id>.parquet (atomic, sealed)

whose model block (a task of its own, kept on the worker that computed it)
is read by the fit task itself when the chunk is the block view's only reader;
such chunks of a layer and batch share tasks, one after another, while many
are left (:class:`_SoloFits`), each still its own file.

A chunk file that already exists, sealed, was finished by an earlier,
interrupted run of the same plan on the same inputs; its task is not submitted
again. Progress and messages go to the ``scalable_assoc`` loggers (the CLI
prints them on stderr) and to ``OUT/run_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import distributed
from distributed import Client, KilledWorker
from distributed.security import Security

from scalable_assoc.engine.alpha import alpha_rows
from scalable_assoc.engine.chunks import ChunkTask, chunk_tasks
from scalable_assoc.engine.cluster import check_cluster_options
from scalable_assoc.engine.filters import LayerFilter, filter_layers
from scalable_assoc.engine.graph import (
    ClusterRequest,
    DesignFiles,
    LayerOnCluster,
    cluster_starting,
    hold_on_cluster,
    layer_on_cluster,
    on_worker,
    watched_cluster,
)
from scalable_assoc.engine.manifest import run_manifest
from scalable_assoc.engine.outputs import FinishedChunks, RunSummary, remove_outputs, up_to_date, write_outputs
from scalable_assoc.engine.permanova import check_permanova, run_permanova
from scalable_assoc.engine.prepare import PreparedStudy, StudyPreparation
from scalable_assoc.engine.profiles import ClusterProfile, load_cluster_profile
from scalable_assoc.engine.task_refs import MODEL_VIEWS, SoloChunk, fit_chunk_task, forget_designs, read_and_fit_chunks
from scalable_assoc.engine.watch import DEFAULT_NO_WORKERS_TIMEOUT, ClusterWatch
from scalable_assoc.errors import ClusterFailure, PlanError, UserInputError
from scalable_assoc.io.atomic import remove_sealed, seal, sealed, write_json, write_parquet
from scalable_assoc.io.runstate import RUN_LOG, RunLog, RunStatus, folder_lock, remove_leftovers, timestamp
from scalable_assoc.plan.schema import Plan, load_plan
from scalable_assoc.progress import ProgressReporter, process_age_seconds
from scalable_assoc.results.columns import COVARIATE_SCHEMA, PARTIAL_SCHEMA

logger = logging.getLogger(__name__)

#: The run's own folder inside its output folder: lock, status, stores, filters, designs, chunks.
WORK_DIR = ".scalable_assoc"


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

    Parameters
    ----------
    plan
        The plan file (YAML), or a :class:`~scalable_assoc.plan.schema.Plan` from :func:`load_plan`.
    out_dir
        The output folder (created if missing). It holds the results, ``manifest.json``,
        ``run_log.jsonl`` and the run's work folder ``.scalable_assoc/`` (lock, status,
        converted stores, filters, designs, chunk files), so it must be on a filesystem
        the workers share.
    scheduler, workers, client
        Where to compute: ``client`` if given, else the scheduler at ``scheduler``
        (``tcp://`` or ``tls://host:port``), else a new closed local cluster of
        ``workers`` single-threaded processes (default: one per core).
    chunk_features
        Features per store chunk when tables are converted (default: chunks of about 32 MiB).
    intersect_samples
        Analyse only samples present in both the metadata and every abundance table.
    analyses_per_task
        Analyses batched into one task per feature block.
    on_chunk_done
        Called as ``on_chunk_done(done, total)`` after every finished chunk (progress hooks, tests).
    features
        A feature list file (see :mod:`scalable_assoc.io.feature_list`), overriding the plan's ``features:``.
    min_cases
        Replaces the plan's ``min_cases`` for this run only (the plan's hash, and what
        ``meta``/``pool`` compare, stay as they are).
    covariate_rows
        Also write every covariate's coefficient in every lm model to
        ``covariate_results.parquet`` / ``.tsv``.
    force
        Run even when ``out_dir`` holds a finished run of this version from the same
        plan, inputs (by content) and options; otherwise that run is returned as it is
        ("up to date").
    allow_outside_paths
        Let a plan given as a path name files outside its folder (``run --allow-outside-paths``).
    security, dashboard
        Client credentials for a ``tls://`` ``scheduler`` (see
        :func:`~scalable_assoc.engine.cluster.tls_security`; without them dask's
        ``distributed.comm.tls`` configuration is used); ``HOST:PORT`` (or a port, on
        loopback) of the local cluster's dashboard, none by default. The local cluster
        is closed (:mod:`scalable_assoc.engine.cluster`): TLS with temporary
        credentials, loopback only.
    no_workers_timeout
        Seconds without any worker after which the run ends (see below).
    cluster_profile
        A :class:`~scalable_assoc.engine.profiles.ClusterProfile` or the path of a
        profile file (``run --cluster``): the workers start as SLURM jobs
        (:mod:`scalable_assoc.engine.slurm`; needs dask-jobqueue). It takes none of
        ``scheduler``, ``workers``, ``dashboard``, ``security`` or ``client``; its
        ``shared_directory`` defaults to ``out_dir/.scalable_assoc/slurm``.

    Returns
    -------
    RunSummary
        The results table (one row per layer x feature x exposure x adjustment x
        model, the columns of :mod:`scalable_assoc.results.columns`), the adjustment
        summary and survival readout, the manifest, chunk counts and seconds taken.

    Raises
    ------
    UserInputError
        Bad plan, data or options (the CLI's exit 2), before anything is written.
    FolderInUse
        Another run holds ``out_dir`` (exit 75); nothing was changed.
    ClusterFailure
        The cluster stopped finishing the run: no worker for ``no_workers_timeout``
        seconds, the scheduler lost, or a task that ends every worker running it
        (see :mod:`scalable_assoc.engine.watch`). The finished chunks are kept and a
        rerun resumes.

    Examples
    --------
    >>> from scalable_assoc import run_study
    >>> summary = run_study(study.plan_path, tmp / "results", workers=1, min_cases=3)
    >>> list(summary.results.columns[:5])
    ['layer', 'feature', 'exposure', 'adjustment', 'model']
    >>> run_study(study.plan_path, tmp / "results", workers=1, min_cases=3).chunks_reused == summary.chunks_total  # up to date
    True
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
    cluster = ClusterRequest(client, scheduler, workers, security, dashboard, cluster_profile, no_workers_timeout)
    options = _RunOptions(
        chunk_features, intersect_samples, analyses_per_task, Path(features) if features is not None else None, min_cases, covariate_rows
    )
    # The lock comes first: a second run on a folder in use must change nothing in it.
    with folder_lock(work, f"run {plan.source}") as holder, RunLog(out / RUN_LOG, holder) as run_log:
        removed = remove_leftovers(out, work)
        if removed:
            logger.info("removed %d temporary file(s) left by an interrupted run in %s", len(removed), out)
        current = None if force else up_to_date(plan, out, options.recorded(plan), options.features.resolve() if options.features else None)
        if current is not None:
            logger.info("%s is up to date: finished from the same plan, inputs and options (use --force to run again)", out)
            run_log.event("up to date")
            return current
        status = _StatusWriter(
            RunStatus("running", plan.content_hash(), holder["started"], host=holder["host"], pid=holder["pid"]), work, on_chunk_done
        )
        status.write()
        try:
            summary = _run_study_locked(plan, out, options, cluster, status.progress, run_log.phase)
        except BaseException as error:
            status.ended(
                "interrupted" if isinstance(error, KeyboardInterrupt) else "failed", " ".join(str(error).split()) or type(error).__name__
            )
            run_log.event(status.status.state, error=status.status.error)
            raise
        status.ended("finished", None, summary.chunks_total)
        run_log.event("finished", chunks_total=summary.chunks_total, chunks_reused=summary.chunks_reused, seconds=round(summary.seconds, 3))
        return summary


@dataclass(frozen=True)
class _RunOptions:
    """What a run computes, besides the plan and where (see :func:`run_study`'s parameters)."""

    chunk_features: int | None
    intersect_samples: bool
    analyses_per_task: int
    features: Path | None
    min_cases: int | None
    covariate_rows: bool

    def recorded(self, plan: Plan) -> dict[str, object]:
        """The options as the manifest records them: a finished run is up to date only for the same ones."""
        return {
            "chunk_features": self.chunk_features,
            "intersect_samples": self.intersect_samples,
            "covariate_rows": self.covariate_rows,
            "min_cases": {"plan": plan.min_cases, "used": self.min_cases if self.min_cases is not None else plan.min_cases},
        }


class _StatusWriter:
    """Keeps ``status.json`` current: at most once a second while chunks finish, and at every change of state."""

    def __init__(self, status: RunStatus, work: Path, on_chunk_done: Callable[[int, int], None] | None) -> None:
        self.status, self.work, self.on_chunk_done = status, work, on_chunk_done
        self.last_write = 0.0

    def write(self) -> None:
        self.status.write(self.work)
        self.last_write = time.monotonic()

    def progress(self, done: int, total: int) -> None:
        first = self.status.chunks_total != total  # the first report says how much there is to do at once
        self.status.chunks_done, self.status.chunks_total = done, total
        if first or time.monotonic() - self.last_write > 1.0 or done == total:
            self.write()
        if self.on_chunk_done is not None:
            self.on_chunk_done(done, total)

    def ended(self, state: str, error: str | None, chunks_total: int | None = None) -> None:
        self.status.state, self.status.error, self.status.finished = state, error, timestamp()
        if chunks_total is not None:
            self.status.chunks_done = self.status.chunks_total = chunks_total
        self.write()


def _run_study_locked(
    plan: Plan,
    out: Path,
    options: _RunOptions,
    cluster: ClusterRequest,
    on_chunk_done: Callable[[int, int], None],
    on_phase: Callable[[str], None],
) -> RunSummary:
    """:func:`run_study`'s work, once the output folder is held; ``on_phase(name)`` marks each phase's start."""
    on_phase("prepare")
    started = time.perf_counter()
    timings: dict[str, float] = {"prepare": 0.0}  # first in the manifest, as the phases begin
    remove_outputs(out)
    work = out / WORK_DIR
    if options.covariate_rows and plan.cluster is not None:
        raise PlanError(
            f"plan {plan.source}, key 'cluster': --covariate-rows reports classical standard errors, which a plan with "
            f"'cluster: {plan.cluster}' does not use; run without --covariate-rows or without the cluster"
        )
    # A new local cluster starts in the background while the tables are converted and the designs built, once the
    # metadata and the plan's columns are checked: a run failing those (most bad inputs) starts no cluster.
    with contextlib.ExitStack() as stack:
        starting: list[ClusterRequest] = []

        def start_cluster() -> None:
            if not starting:
                starting.append(stack.enter_context(cluster_starting(cluster)))

        preparation = StudyPreparation(
            plan,
            work / "stores",
            options.chunk_features,
            options.intersect_samples,
            options.features,
            options.min_cases,
            on_checked=start_cluster,
        )
        parts = _parts_to_run(preparation)
        # The first layers ready (the errors of reading them come here, before the cluster is waited for).
        first = next(parts, None)
        if first is None:
            preparation.study()  # raises: no analysis to run
            raise AssertionError("a study with analyses has a first part")
        timings["prepare"] = time.perf_counter() - started  # until the last part is prepared (all of it in one part)
        start_cluster()  # when preparing did not call it
        return _run_prepared(plan, out, options, starting[0], preparation, first, parts, started, timings, on_chunk_done, on_phase)


def _parts_to_run(preparation: StudyPreparation) -> Iterator[PreparedStudy]:
    """The parts of the study in the order their tables are converted (:meth:`StudyPreparation.parts`), each fitted as it comes.

    A plan asking for PERMANOVA comes as one part, the whole study: the size of
    its distance matrices is checked before any task (:func:`check_permanova`).
    """
    beta = preparation.plan.diversity is not None and preparation.plan.diversity.beta is not None
    if not beta:
        yield from preparation.parts()
        return
    for _ in preparation.parts():
        pass
    yield preparation.study()


def _run_prepared(
    plan: Plan,
    out: Path,
    options: _RunOptions,
    cluster: ClusterRequest,
    preparation: StudyPreparation,
    first: PreparedStudy,
    parts: Iterator[PreparedStudy],
    started: float,
    timings: dict[str, float],
    on_chunk_done: Callable[[int, int], None],
    on_phase: Callable[[str], None],
) -> RunSummary:
    """The rest of :func:`_run_study_locked` once the ``first`` part is prepared: cluster, each part's filter and fits, gather.

    The later ``parts`` go to the cluster as their tables are converted; the
    gather (FDR over every layer) waits for all of them.
    """
    work = out / WORK_DIR
    chunks_dir = work / "chunks"
    on_phase("cluster")
    phase = time.perf_counter()
    with watched_cluster(cluster) as (client, watch):
        if cluster.client is None:
            # The wait for the cluster after the first layers were prepared (all of its start unless it started in the background).
            timings["cluster_start"] = time.perf_counter() - phase
            if cluster.starting is not None and cluster.starting.seconds is not None:
                timings["cluster_start_background"] = cluster.starting.seconds
        run = _PartsOnCluster(client, watch, work, cluster.starts_local_cluster(), options, on_phase)
        run.submit(first, timings)
        for part in parts:  # as their tables are converted
            timings["prepare"] = time.perf_counter() - started  # the first parts meanwhile filtered and fitting
            run.submit(part, timings)
        study = preparation.study()
        tasks = [task for layer in study.layers for task in run.tasks[layer.spec.name]]  # in plan order, as one pass made them
        done = {task.chunk_id for task in tasks} & run.done
        logger.info(
            "%s: %d analyses over %d layer(s), %d distinct designs, %d chunks%s",
            plan.name,
            sum(len(layer.analyses) for layer in study.layers),
            len(study.layers),
            sum(len(layer.designs) for layer in study.layers),
            len(tasks),
            f" ({len(done)} already done, resuming)" if done else "",
        )
        finished = FinishedChunks(chunks_dir)  # the client reads each chunk's rows while the workers fit the others
        resumed = [t for t in tasks if t.chunk_id in done]
        run.fits.wait(watch, _Progress(len(done), len(tasks), on_chunk_done), finished, resumed)
        _remove_stale_chunks(chunks_dir, {t.chunk_id for t in tasks})  # once no fit writes (its temporary files are no chunk's)
        if not run.fits.placed:  # a cluster that outlives the run keeps none of its designs (the local one closes with it)
            client.run(forget_designs, on_error="ignore")
        timings["fit"] = time.perf_counter() - run.fit_started
        if run.first_task is not None:
            run.first_task.record(timings)  # when it came back after the filter phase (stored prevalence counts: no task to wait for)
        filters, positions = run.filters, run.positions
        # --- PERMANOVA (plan diversity.beta): engine/permanova.py writes permanova.parquet/.tsv; None when not asked for ---
        phase = time.perf_counter()
        permanova = run_permanova(client, watch, study, filters, positions, out)
        if permanova is not None:
            timings["permanova"] = time.perf_counter() - phase
        alpha = alpha_rows(client, watch, study, positions, work / "alpha", out)  # diversity: alpha metrics as result rows
        info = client.scheduler_info()
        client_info = {"scheduler": info.get("address"), "workers": len(info.get("workers", {}))}
    on_phase("gather")
    phase = time.perf_counter()
    results, summary, survival = write_outputs(study, tasks, chunks_dir, filters, out, options.covariate_rows, alpha, finished)
    timings["gather"] = time.perf_counter() - phase
    timings["total"] = time.perf_counter() - started
    manifest = run_manifest(study, filters, len(tasks), len(done), timings, client_info, options.chunk_features, options.intersect_samples)
    manifest["covariate_rows"] = options.covariate_rows
    if permanova is not None:  # PERMANOVA (plan diversity.beta)
        manifest["permanova"] = permanova
    write_json(out / "manifest.json", manifest)  # last: a complete set of outputs has a manifest
    return RunSummary(out, results, summary, survival, manifest, len(tasks), len(done), timings["total"])


class _PartsOnCluster:
    """The parts of a study on the cluster as each is prepared: its samples held, its filter, its fits submitted.

    Keeps what the rest of the run needs of every part: chunk tasks by layer,
    chunks an earlier run finished, filters and held sample positions by layer,
    the fit futures (:class:`_FitSubmission`), and when the first task came
    back. The run log's phases are marked as the first part enters them.
    """

    def __init__(
        self, client: Client, watch: ClusterWatch, work: Path, placed: bool, options: _RunOptions, on_phase: Callable[[str], None]
    ) -> None:
        self.client, self.watch, self.work, self.options, self.on_phase = client, watch, work, options, on_phase
        self.tasks: dict[str, list[ChunkTask]] = {}
        self.done: set[str] = set()
        self.filters: dict[str, LayerFilter] = {}
        self.positions: dict[str, distributed.Future] = {}
        # its scheduler leaves tasks where they are placed (no work stealing)
        self.fits = _FitSubmission(client, work, placed)
        self.first_task: _FirstResult | None = None  # set by the first part
        self.fit_started = 0.0

    def submit(self, part: PreparedStudy, timings: dict[str, float]) -> None:
        """Filter the part's layers (waiting for the filter) and submit their pending fits; ``timings["filter"]`` adds up the waits."""
        check_permanova(self.client, part)  # PERMANOVA (plan diversity.beta, the whole study): refuse a too-large Bray-Curtis matrix
        tasks = chunk_tasks(part, self.options.analyses_per_task, self.options.covariate_rows)
        done = _finished_chunks(self.work / "chunks", tasks)
        if self.first_task is None:
            self.on_phase("filter")
        phase = time.perf_counter()
        positions = {layer.spec.name: hold_on_cluster(self.client, layer.sample_positions, "samples") for layer in part.layers}
        if self.first_task is None:
            _record_first_part(timings)
            self.first_task = _FirstResult(positions.values())
        self.filters |= filter_layers(self.client, part, positions, self.work / "filters", self.watch)
        timings["filter"] = timings.get("filter", 0.0) + time.perf_counter() - phase
        self.first_task.record(timings)
        if not self.fit_started:
            self.on_phase("fit")
            self.fit_started = time.perf_counter()
        for layer in part.layers:
            self.tasks[layer.spec.name] = [task for task in tasks if task.layer == layer.spec.name]
        self.positions |= positions
        self.done |= done
        self.fits.submit(part, self.filters, positions, [task for task in tasks if task.chunk_id not in done])


def _record_first_part(timings: dict[str, float]) -> None:
    """Add ``first_part``: seconds from the process start to the first part of the study handed to the cluster.

    That is when the first layers are prepared (their tables converted, or their
    stores opened) and the cluster is up: their samples are the run's first
    task. ``first_task`` minus it is that task's round trip on the cluster;
    ``first_part`` itself holds the imports, the cluster's start and preparing
    the first layers, whichever ended last.
    """
    age = process_age_seconds()
    if age is not None:
        timings["first_part"] = age


class _FirstResult:
    """When the run's first task came back from the cluster, as seconds since the process started: "command to first task".

    The process start is the operating system's (:func:`~scalable_assoc.progress.process_age_seconds`;
    10 ms resolution), so the seconds include the interpreter's start, the imports, preparing the
    first layers, the cluster's start (the part not overlapping the preparation) and
    one task's round trip; the first task is the first of the sample positions
    held on the cluster, submitted as the first layers are handed to it
    (``first_part``, :func:`_record_first_part`). In a long-lived Python process
    calling :func:`run_study`, both count from that process's start.
    """

    def __init__(self, futures: Iterable[distributed.Future]) -> None:
        self.age: float | None = None
        for future in futures:
            future.add_done_callback(self._done)  # called in the client's event loop thread

    def _done(self, _future: distributed.Future) -> None:
        if self.age is None:
            self.age = process_age_seconds()

    def record(self, timings: dict[str, float]) -> None:
        """Add ``first_task`` to ``timings`` (when a task came back, and not added before) and log it."""
        if self.age is None or "first_task" in timings:
            return
        timings["first_task"] = self.age
        logger.info("first task result %.2fs after the command started", timings["first_task"])


#: The fit phase's progress message (its text predates the other phases' and logs and tests read it).
FIT_TEMPLATE = "  chunks %(done)d/%(total)d (%(percent).0f%%), %(elapsed).1fs"


class _Progress:
    """Counts finished chunks: a progress message at the start, the end and at most once a second between; the hook at every chunk."""

    def __init__(self, finished: int, total: int, on_chunk_done: Callable[[int, int], None]) -> None:
        self.reporter = ProgressReporter(logger, "fit", total, "chunks", label="fitting", template=FIT_TEMPLATE, initial=finished)
        self.on_chunk_done = on_chunk_done

    def start(self) -> None:
        self.reporter.start()

    def chunk_done(self) -> None:
        self.reporter.advance()
        self.on_chunk_done(self.reporter.done, self.reporter.total)


class _FitSubmission:
    """The fit tasks of a run, submitted a part of the study at a time (:meth:`submit`), then waited for together (:meth:`wait`).

    With ``placed`` each block read by several chunks goes to a worker with its
    batches and fits (:func:`_place_groups`, the work placed counted over every
    part); else the scheduler places every task.
    """

    def __init__(self, client: Client, work: Path, placed: bool) -> None:
        self.client, self.chunks_dir, self.placed = client, work / "chunks", placed
        self.designs = DesignFiles(work / "designs")
        self.threads = client.nthreads()
        self.loads: dict[str, float] = {}  # work placed on each worker so far
        self.batches: dict[tuple[str, tuple[str, ...]], distributed.Future] = {}
        self.futures: dict[distributed.Future, list[ChunkTask]] = {}

    def submit(
        self, study: PreparedStudy, filters: dict[str, LayerFilter], positions: dict[str, distributed.Future], pending: list[ChunkTask]
    ) -> None:
        """Submit the fit tasks of the ``pending`` chunks of ``study``'s layers (a part of the run's study)."""
        client = self.client
        groups: list[_BlockFits] = []
        for layer in study.layers:
            layer_pending = [t for t in pending if t.layer == layer.spec.name]
            if layer_pending:
                views = {MODEL_VIEWS[task.analyses[0].key.model] for task in layer_pending}
                held = layer_on_cluster(client, study, layer, filters[layer.spec.name], positions[layer.spec.name], views)
                groups += _block_groups(held, layer_pending)
        workers = _place_groups(self.threads if self.placed else {}, groups, self.loads)
        started: set[int] = set()
        blocks: dict[int, distributed.Future] = {}

        def start_group(position: int) -> None:
            """The group's batches of analyses, then its block (when several chunks read it), on the worker placed for it."""
            if position >= len(groups) or position in started:
                return
            started.add(position)
            group = groups[position]
            if not group.held.layer_filter.kept[group.index].any():
                return  # every feature filtered out: its chunks are written empty, with no task
            for task in group.tasks:  # before the block: on its worker when its fits start
                _held_batch(client, group, task, workers[position], self.batches)
            if group.shared_block():
                blocks[position] = group.held.submit_block(client, group.index, group.view, workers[position])

        solo = _SoloFits()
        for position, group in enumerate(groups):
            # A block, and the next one, go out before the block's fits: a second worker reads the next block while this
            # process writes designs and submits fits. Not every block first: the workers would hold all of them at once.
            start_group(position)
            start_group(position + 1)
            block = blocks.pop(position, None)
            self.futures |= _submit_fits(client, group, block, workers[position], self.chunks_dir, self.designs, self.batches, solo)
            # Its fits now hold the block: with no reference left here, the scheduler frees it once they are done.
        self.futures |= solo.submit(client, sum(self.threads.values()))

    def wait(self, watch: ClusterWatch, progress: _Progress, finished: FinishedChunks, resumed: list[ChunkTask]) -> None:
        """Wait for every fit submitted; a task that kills its workers is named.

        Meanwhile ``finished`` reads the rows of every chunk an earlier run finished
        (``resumed``) and of each chunk as its task finishes: the client is idle here.
        """
        progress.start()
        for task in resumed:  # while the first fits run
            finished.read(task)
        for future in watch.completed(self.futures):
            for task in self.futures[future]:
                progress.chunk_done()
                if future.status == "finished":
                    finished.read(task)
        for future, chunks in self.futures.items():
            if future.status == "finished":
                continue  # its result (a few numbers) stays on its worker: fetching it was one round trip per chunk
            try:
                future.result()  # re-raise a task's error here
            except KilledWorker:
                task, more = chunks[0], len(chunks) - 1
                raise ClusterFailure(
                    f"the task of chunk {task.chunk_id} (layer '{task.layer}', features {task.start}-{task.stop - 1}, "
                    f"{len(task.analyses)} analyses) ended every worker that ran it"
                    f"{f' (it fits {more} more chunk(s) of the layer after this one)' if more else ''}, as running out of memory "
                    "does; give the workers more memory, or fewer features per chunk (--chunk-features on a new --out); the chunks "
                    "already finished are kept and a rerun resumes"
                ) from None


def _remove_stale_chunks(chunks_dir: Path, keep_chunks: set[str]) -> None:
    """Chunk files of other plans or inputs can never be reused; those of this run are kept for resuming."""
    if chunks_dir.is_dir():
        for path in chunks_dir.glob("*.parquet*"):
            if path.name.split(".")[0] not in keep_chunks:  # <id>.parquet, <id>.covariates.parquet and their seals
                path.unlink(missing_ok=True)


def _finished_chunks(chunks_dir: Path, tasks: list[ChunkTask]) -> set[str]:
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
            logger.warning(
                "chunk %s (layer '%s', features %d-%d) no longer matches what the run that wrote it recorded "
                "(truncated, edited or unfinished); computing it again",
                task.chunk_id,
                task.layer,
                task.start,
                task.stop - 1,
            )
            for path in files:
                remove_sealed(path)
    return done


def _write_empty_chunk(task: ChunkTask, chunks_dir: Path) -> None:
    """Every feature of the chunk's block was filtered out: the chunk is complete and empty."""
    covariate_output = task.covariates_file(chunks_dir)
    if covariate_output is not None:
        write_parquet(covariate_output, COVARIATE_SCHEMA.empty_table())
        seal(covariate_output)
    output = task.rows_file(chunks_dir)
    write_parquet(output, PARTIAL_SCHEMA.empty_table())
    seal(output)


@dataclass(frozen=True)
class _BlockFits:
    """The pending chunks that read one view of one block of a layer, in their order."""

    held: LayerOnCluster
    view: str
    index: int
    tasks: list[ChunkTask]

    def shared_block(self) -> bool:
        """Whether the block view is a task of its own: several chunks read it, and it kept features."""
        return len(self.tasks) > 1 and bool(self.held.layer_filter.kept[self.index].any())

    def work(self) -> int:
        """The fits' share of the run's work, counted as kept features x analyses over the chunks."""
        return int(self.held.layer_filter.kept[self.index].sum()) * sum(len(task.analyses) for task in self.tasks)


def _place_groups(threads: dict[str, int], groups: list[_BlockFits], loads: dict[str, float] | None = None) -> list[str | None]:
    """A worker for each block view read by several chunks, for the block, its batches of analyses and its fits; else None.

    ``threads``: the workers' threads by address (``Client.nthreads``; empty: nothing
    is placed). Each block goes to the worker with the least work per thread so far
    (:meth:`_BlockFits.work`), in order; ``loads`` (updated) holds the work placed
    on each worker by earlier calls of the same run. Left to the scheduler, a block went to
    whichever worker was free and its fits' other inputs (batches, shared by the
    blocks of a layer) to either, so a fit weighed moving its block (tens of
    megabytes) against the tasks queued beside it, counted at half a second each
    while their durations were unknown, and often moved it. The placement is
    loose (:func:`~scalable_assoc.engine.graph.on_worker`): a worker that has left
    loses its tasks to the others. A chunk reading its block itself (the block's
    only reader) needs nothing large: the scheduler places it.
    """
    assigned = loads if loads is not None else {}
    for address in sorted(threads):
        assigned.setdefault(address, 0.0)
    placed: list[str | None] = []
    for group in groups:
        if not threads or not group.shared_block():
            placed.append(None)
            continue
        worker = min(sorted(threads), key=lambda address: assigned[address] / max(threads[address], 1))
        assigned[worker] += group.work()
        placed.append(worker)
    return placed


def _held_batch(
    client: Client, group: _BlockFits, task: ChunkTask, worker: str | None, batches: dict[tuple[str, tuple[str, ...]], distributed.Future]
) -> distributed.Future:
    """The chunk's batch of analyses held on the cluster (on ``worker`` when first held), once per layer and analyses."""
    batch_ids = (group.held.layer.spec.name, tuple(a.key.analysis_id for a in task.analyses))
    if batch_ids not in batches:
        batches[batch_ids] = hold_on_cluster(client, task.analyses, "batch", worker)
    return batches[batch_ids]


def _block_groups(held: LayerOnCluster, pending: list[ChunkTask]) -> list[_BlockFits]:
    """One layer's pending chunks grouped by the block view they read, in order of first appearance."""
    grouped: dict[tuple[str, int], list[ChunkTask]] = {}
    for task in pending:
        grouped.setdefault((MODEL_VIEWS[task.analyses[0].key.model], task.block_index), []).append(task)
    return [_BlockFits(held, view, index, tasks) for (view, index), tasks in grouped.items()]


def _submit_fits(
    client: Client,
    group: _BlockFits,
    block: distributed.Future | None,
    worker: str | None,
    chunks_dir: Path,
    designs: DesignFiles,
    batches: dict[tuple[str, tuple[str, ...]], distributed.Future],
    solo: _SoloFits,
) -> dict[distributed.Future, list[ChunkTask]]:
    """Submit the fit tasks of one block view (writing the design files they name): each fit future with its chunk.

    A block view read by several chunks is a task of its own (``block``), whose
    fits run beside it, on ``worker`` when placed (see :func:`_place_groups`); one
    read by a single chunk (``block`` None) is read by that chunk's task
    (:func:`~scalable_assoc.engine.tasks.read_and_fit_chunks`), added to ``solo``
    to be submitted with the others (:class:`_SoloFits`). ``batches`` holds the
    batches of analyses already placed on the cluster, by layer and analysis ids.
    """
    held = group.held
    layer, layer_filter = held.layer, held.layer_filter
    # Fit keys name the output folder too: two runs of one plan into two folders on one
    # cluster must not share tasks, since each task writes into its own run's folder.
    run_token = hashlib.sha256(str(chunks_dir).encode()).hexdigest()[:12]
    futures: dict[distributed.Future, list[ChunkTask]] = {}
    chunks_dir.mkdir(parents=True, exist_ok=True)
    for task in group.tasks:
        if not layer_filter.kept[task.block_index].any():
            _write_empty_chunk(task, chunks_dir)
            continue
        used = list(dict.fromkeys(a.design_key for a in task.analyses))
        design_files = [designs.get(layer, k) for k in used]
        batch = _held_batch(client, group, task, worker, batches)
        feature_ids = layer_filter.kept_ids[task.block_index]
        key = f"fit-{task.chunk_id}-{run_token}"
        if block is None:
            # The block view's only reader reads it itself: one task instead of two, and no block held between them.
            chunk = (
                held.block_arguments(task.block_index, group.view),
                feature_ids,
                task.rows_file(chunks_dir),
                task.covariates_file(chunks_dir),
            )
            solo.add(key, task, layer.spec.name, design_files, batch, chunk)
        else:
            arguments = (feature_ids, design_files, batch, task.rows_file(chunks_dir), task.covariates_file(chunks_dir))
            futures[client.submit(fit_chunk_task, layer.spec.name, block, *arguments, key=key, **on_worker(worker))] = [task]
    return futures


#: Chunks one fit task reads and fits at most (:func:`~scalable_assoc.engine.tasks.read_and_fit_chunks`).
CHUNKS_PER_TASK = 4
#: Tasks per worker thread that each task size leaves at least (:func:`chunks_per_task`).
TASKS_PER_THREAD = 4


def chunks_per_task(n_chunks: int, threads: int, most: int = CHUNKS_PER_TASK) -> list[int]:
    """Sizes of the tasks fitting ``n_chunks`` chunks, in submission order: largest first, the last ones a chunk each.

    Each task takes ``1 / (TASKS_PER_THREAD x threads)`` of the chunks still left,
    between 1 and ``most``: few tasks while there is much to do (less of the
    scheduler's and workers' work per task), single chunks at the end so that
    the threads run out of work together (a large last task would keep one busy
    while the others wait). ``threads``: the cluster's worker threads (at least 1 counted).
    """
    sizes: list[int] = []
    left = n_chunks
    while left > 0:
        size = max(1, min(most, left // (TASKS_PER_THREAD * max(threads, 1))))
        sizes.append(size)
        left -= size
    return sizes


@dataclass(frozen=True)
class _SoloFit:
    """A chunk whose fit task reads its block itself: its Dask key, chunk, and the arguments of ``read_and_fit_chunks``."""

    key: str
    task: ChunkTask
    layer: str
    design_files: list[Path]
    batch: distributed.Future
    chunk: SoloChunk

    def shares_task_with(self, other: _SoloFit) -> bool:
        """Whether one task can fit both chunks: the same layer, designs and batch of analyses."""
        return self.layer == other.layer and self.design_files == other.design_files and self.batch.key == other.batch.key


class _SoloFits:
    """Fit tasks that read their block themselves (:func:`~scalable_assoc.engine.tasks.read_and_fit_chunks`), submitted together.

    Each ``Client.submit`` is a graph update of its own, which the scheduler
    handles in the client's process (2-3 ms of its CPU each, 0.46 s of 183 fits
    at 100,000 features), while the workers compete for the same cores. One
    ``Client.map`` of all of them is one update; it keeps their order as their
    priority, as separate submissions did. They hold no block between tasks, so
    submitting them after every shared block's fits changes no memory bound.
    Consecutive chunks of one layer, designs and batch share a task, several
    while many are left (:func:`chunks_per_task`): fewer tasks for the scheduler
    and the workers to handle, each still holding one block at a time.
    """

    def __init__(self) -> None:
        self.fits: list[_SoloFit] = []

    def add(self, key: str, task: ChunkTask, layer: str, design_files: list[Path], batch: distributed.Future, chunk: SoloChunk) -> None:
        """One chunk's fit: its Dask key, its chunk, and its arguments of ``read_and_fit_chunks`` (``chunk`` its own part)."""
        self.fits.append(_SoloFit(key, task, layer, design_files, batch, chunk))

    def tasks(self, threads: int) -> list[list[_SoloFit]]:
        """The fits added, in order, cut into tasks of :func:`chunks_per_task` sizes (also where designs or batch change)."""
        grouped: list[list[_SoloFit]] = []
        sizes = iter(chunks_per_task(len(self.fits), threads))
        size = 0
        for fit in self.fits:
            if not grouped or len(grouped[-1]) >= size or not fit.shares_task_with(grouped[-1][0]):
                grouped.append([])
                size = next(sizes, 1)
            grouped[-1].append(fit)
        return grouped

    def submit(self, client: Client, threads: int) -> dict[distributed.Future, list[ChunkTask]]:
        """Submit every fit added (none: nothing), in the order added, ``threads`` the cluster's; each future with its chunks.

        A task's key is its first chunk's. ``pure=False``: with the keys given, a pure
        map only hashed every argument for a name of the graph update (each
        chunk's feature ids among them: 0.056 s of the client's CPU at 100,000
        features, before the first fit could start).
        """
        grouped = self.tasks(threads)
        if not grouped:
            return {}
        futures = client.map(
            read_and_fit_chunks,
            [fits[0].layer for fits in grouped],
            [fits[0].design_files for fits in grouped],
            [fits[0].batch for fits in grouped],
            [[fit.chunk for fit in fits] for fits in grouped],
            key=[fits[0].key for fits in grouped],
            pure=False,
        )
        return {future: [fit.task for fit in fits] for future, fits in zip(futures, grouped, strict=True)}
