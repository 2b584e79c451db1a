"""The methods benchmark: simulated scenarios through the real engine, scored against their truth.

``benchmark_methods(out_dir)`` (``scalable-assoc benchmark-methods``) runs every
replicate of every scenario of a scenario file
(:mod:`scalable_assoc.simulate.scenarios`) as a study of its own::

    out_dir/replicates/<scenario>-<hash>/r0001/study/   abundance.parquet (wide, percent) and its store abundance.zarr,
                                                         metadata.tsv, plan.yaml,
                                                         truth.parquet (and counts.npz when limma runs)
    out_dir/replicates/<scenario>-<hash>/r0001/run/     what run_study writes for it
    out_dir/replicates/<scenario>-<hash>/r0001/fits.parquet, metrics.parquet (and limma_*.parquet)

Each replicate's data set is simulated by a Dask task on the cluster (one task per
replicate, deterministic from the scenario's seed, name and replicate number); its
``plan.yaml`` reads the one abundance table as four layers, one per transform
(``clr``, ``log``, ``ast``, ``tss``), fits ``lm``, ``lm_nonzero`` and ``prevalence``
on each (so the run also writes each transform's joint p-value) and, where the
scenario has families, an ``lmm`` on ``clr`` (``cluster: family_id``). The exposure
is ``disorder`` (cases ``disorder == 1``, controls ``disorder == 0``) under two
adjustment sets, ``unadjusted: [age, sex, log_depth]`` and ``adjusted: [unadjusted,
drug]``. Every scenario has a drug column (taken by ``drug.rate`` of the participants
even without confounding, where it is unrelated to the disorder and the microbiome),
so both sets run everywhere and "adjusted" always means one more, possibly needless,
covariate. FDR families are ``[layer, exposure, adjustment, model]``: each method's q
is BH over its own features. ``min_prevalence: 0``: features with too few carriers get
a status (``min_carriers``) and count as not discovered. The prevalence rows of the
four layers are the same fits (presence does not depend on the transform); the
benchmark scores those of ``clr`` as ``prevalence/-/<adjustment>``.

The replicates' ``run_study`` calls share one cluster (the given ``client``, the
``scheduler``, or a closed local cluster started here) and run a few at a time from
a small thread pool (each in its own folder, with its own lock and status), so one
replicate's preparation overlaps another's fits. A replicate is finished when its
``metrics.parquet`` exists (written atomically, last): an interrupted benchmark
resumes from the finished replicates, and a replicate's own run resumes from its
finished chunks. With R and limma installed, one task per scenario fits
limma-voom and limma-trend to its replicates' read counts
(:mod:`scalable_assoc.io.limma_r`); otherwise they are skipped with a message.

Outputs (atomic) in ``out_dir``: ``methods_benchmark.parquet/.tsv`` (per scenario x
replicate x method), ``methods_summary.parquet/.tsv``, ``null_calibration.parquet/.tsv``
(the global-null scenarios' p-values), ``power_vs_fdr.png``, ``null_qq.png`` and
``manifest.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from distributed import Client
from distributed.security import Security

from scalable_assoc.engine.cluster import WORKER_PRELOAD, check_cluster_options, dask_client
from scalable_assoc.engine.profiles import ClusterProfile, load_cluster_profile
from scalable_assoc.engine.run import run_study
from scalable_assoc.errors import UserInputError
from scalable_assoc.io.atomic import write_atomically, write_json, write_npz, write_parquet, write_tsv
from scalable_assoc.io.runstate import folder_lock
from scalable_assoc.simulate.scenarios import Scenario, ScenarioGrid, load_scenarios, simulate_scenario

logger = logging.getLogger(__name__)

#: Transforms compared; each is a layer of the replicate's plan, named after it.
TRANSFORMS = ("clr", "log", "ast", "tss")
#: Models fitted on every layer.
LAYER_MODELS = ("lm", "lm_nonzero", "prevalence")
#: The layer (transform) whose lmm is fitted where the scenario has families, and whose prevalence rows are scored.
LMM_TRANSFORM = "clr"
ADJUSTMENTS = ("unadjusted", "adjusted")
#: Model order of the outputs.
MODEL_ORDER = ("lm", "lm_nonzero", "prevalence", "joint", "lmm", "limma_voom", "limma_trend")
#: Replicates whose run_study calls run at once on the shared cluster.
CONCURRENT_RUNS = 2

OUTPUT_FILES = (
    "methods_benchmark.parquet",
    "methods_benchmark.tsv",
    "methods_summary.parquet",
    "methods_summary.tsv",
    "null_calibration.parquet",
    "null_calibration.tsv",
    "power_vs_fdr.png",
    "null_qq.png",
    "manifest.json",
)
REPLICATES_DIR = "replicates"
#: The benchmark folder's own lock lives here (``io.runstate.folder_lock``), as a run's does in its work folder.
BENCHMARK_WORK_DIR = ".scalable_assoc"
#: The replicate's abundance store, read by every layer of its plan.
ABUNDANCE_STORE = "abundance.zarr"
FITS_COLUMNS = ["method", "model", "transform", "adjustment", "feature", "beta", "p", "q"]


@dataclass(frozen=True)
class MethodsBenchmark:
    """What :func:`benchmark_methods` wrote and computed.

    ``per_replicate``: one row per scenario x replicate x method (the columns of
    ``methods_benchmark.parquet``); ``summary``: per scenario x method over replicates;
    ``null_calibration``: per global-null scenario x method; ``figures``: name -> PNG path;
    ``replicates_run`` / ``replicates_reused``: replicates computed now / found finished;
    ``seconds``: wall time.
    """

    out_dir: Path
    per_replicate: pd.DataFrame
    summary: pd.DataFrame
    null_calibration: pd.DataFrame
    figures: dict[str, Path]
    manifest: dict[str, Any]
    replicates_run: int
    replicates_reused: int
    seconds: float


@dataclass(frozen=True)
class _Replicate:
    """One replicate of one scenario and its folder."""

    scenario: Scenario
    index: int
    folder: Path

    @property
    def study(self) -> Path:
        return self.folder / "study"

    @property
    def run(self) -> Path:
        return self.folder / "run"

    @property
    def metrics(self) -> Path:
        return self.folder / "metrics.parquet"

    @property
    def fits(self) -> Path:
        return self.folder / "fits.parquet"

    @property
    def limma(self) -> Path:
        return self.folder / "limma_fits.parquet"

    @property
    def limma_metrics(self) -> Path:
        return self.folder / "limma_metrics.parquet"


def scenario_hash(scenario: Scenario) -> str:
    """Hash of what a scenario's replicates depend on (every parameter but the number of replicates)."""
    values = {k: v for k, v in scenario.as_dict().items() if k != "replicates"}
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def benchmark_methods(
    out_dir: str | Path,
    *,
    scenarios: str | Path | ScenarioGrid | None = None,
    replicates: int | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    client: Client | None = None,
    security: Security | None = None,
    dashboard: str | None = None,
    cluster_profile: ClusterProfile | str | Path | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    force: bool = False,
    concurrent_runs: int = CONCURRENT_RUNS,
    keep_runs: bool = False,
) -> MethodsBenchmark:
    """Run every scenario's replicates through the engine and score each method against the truth.

    Parameters
    ----------
    out_dir
        Output folder (created if missing); see the module docstring for what it holds.
    scenarios
        A scenario file, a :class:`~scalable_assoc.simulate.scenarios.ScenarioGrid`, or
        None for the shipped default grid.
    replicates
        Replicates per scenario, instead of each scenario's ``replicates``.
    scheduler, workers, client, security
        Where to compute, as for :func:`~scalable_assoc.engine.run.run_study`: the given
        ``client``, else the scheduler at ``scheduler`` (with ``security`` for ``tls://``),
        else a new closed local cluster of ``workers`` processes; one cluster serves every
        replicate.
    dashboard, cluster_profile
        The local cluster's dashboard address, or a cluster profile (workers as SLURM
        jobs, ``--cluster``), as for :func:`~scalable_assoc.engine.run.run_study`.
    on_progress
        Called as ``on_progress(done, total)`` (replicates) after each finished replicate,
        in the calling thread; an exception it raises stops the benchmark (finished
        replicates are kept, a rerun resumes).
    force
        Start again: remove the finished replicates and outputs of ``out_dir`` first.
    concurrent_runs
        Replicates whose runs are in flight at once on the cluster.
    keep_runs
        Keep each replicate's study and run folders (default: removed once its metrics
        are written; its fits are kept).

    Returns
    -------
    MethodsBenchmark
        The tables written, the figure paths and the manifest.

    Raises
    ------
    UserInputError
        A bad scenario file or option (nothing written).

    Examples
    --------
    >>> from scalable_assoc import benchmark_methods
    >>> result = benchmark_methods(tmp / "bench", scenarios=tmp / "tiny.yaml", workers=1)  # doctest: +SKIP
    >>> sorted(result.summary["scenario"].unique())  # doctest: +SKIP
    ['baseline', 'global_null']
    """
    started = time.perf_counter()
    grid = scenarios if isinstance(scenarios, ScenarioGrid) else load_scenarios(scenarios)
    if replicates is not None:
        if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
            raise UserInputError(f"--replicates must be a positive whole number, got {replicates!r}")
        grid = grid.with_replicates(replicates)
    if concurrent_runs < 1:
        raise UserInputError(f"concurrent_runs must be at least 1, got {concurrent_runs!r}")
    if cluster_profile is not None and not isinstance(cluster_profile, ClusterProfile):
        cluster_profile = load_cluster_profile(cluster_profile)
    if client is None:
        check_cluster_options(scheduler, security, dashboard, workers=workers, profile=cluster_profile)  # before any work
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder for the benchmark")
    # A second benchmark on the same folder would score and remove the first one's replicates under it.
    with folder_lock(out / BENCHMARK_WORK_DIR, f"benchmark-methods {out}"):
        return _benchmark_locked(
            out,
            grid,
            scheduler,
            workers,
            client,
            security,
            dashboard,
            cluster_profile,
            on_progress,
            force,
            concurrent_runs,
            keep_runs,
            started,
        )


def _benchmark_locked(
    out: Path,
    grid: ScenarioGrid,
    scheduler: str | None,
    workers: int | None,
    client: Client | None,
    security: Security | None,
    dashboard: str | None,
    cluster_profile: ClusterProfile | None,
    on_progress: Callable[[int, int], None] | None,
    force: bool,
    concurrent_runs: int,
    keep_runs: bool,
    started: float,
) -> MethodsBenchmark:
    """:func:`benchmark_methods` once it holds ``out``: resume or start again, run the replicates, write the outputs."""
    if force:
        shutil.rmtree(out / REPLICATES_DIR, ignore_errors=True)
        for name in OUTPUT_FILES:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    all_replicates = [
        _Replicate(s, r, out / REPLICATES_DIR / f"{s.name}-{scenario_hash(s)}" / f"r{r + 1:04d}")
        for s in grid.scenarios
        for r in range(s.replicates)
    ]
    total = len(all_replicates)
    reused = sum(rep.metrics.exists() for rep in all_replicates)
    from scalable_assoc.io.limma_r import limma_unavailable

    limma_reason = limma_unavailable()
    if limma_reason is not None:
        logger.info("limma-voom/limma-trend skipped: %s", limma_reason)
    logger.info(
        "benchmark-methods: %d scenarios, %d replicates%s",
        len(grid.scenarios),
        len(all_replicates),
        f" ({reused} already finished, resuming)" if reused else "",
    )
    if cluster_profile is not None:
        cluster_profile = cluster_profile.with_shared_directory(out / ".slurm")
    with _engine_quiet(), _cluster(client, scheduler, workers, security, dashboard, cluster_profile) as dask:
        limma: list[Any] = []

        def scenario_done(scenario: Scenario) -> None:
            # limma fits a scenario's replicates as soon as they are all finished, beside the other scenarios' runs.
            if limma_reason is None:
                limma.append(_submit_limma(dask, scenario, all_replicates))

        try:
            _run_replicates(
                dask,
                all_replicates,
                total,
                on_progress,
                concurrent_runs,
                keep_runs,
                with_counts=limma_reason is None,
                on_scenario=scenario_done,
            )
            dask.gather([future for future in limma if future is not None])
        except BaseException:
            for future in limma:
                if future is not None:
                    future.cancel()  # one already running finishes on its worker; a rerun tolerates that (limma_replicates)
            raise
    return _write_outputs(out, grid, all_replicates, total - reused, reused, started, limma_reason)


@contextlib.contextmanager
def _cluster(
    client: Client | None,
    scheduler: str | None,
    workers: int | None,
    security: Security | None,
    dashboard: str | None,
    profile: ClusterProfile | None,
) -> Iterator[Client]:
    """The given client, or one cluster (scheduler, profile or new local one) for every replicate."""
    if client is not None:
        yield client
        return
    with dask_client(scheduler, workers, security=security, dashboard=dashboard, profile=profile, preload=WORKER_PRELOAD) as started:
        yield started


@contextlib.contextmanager
def _engine_quiet() -> Iterator[None]:
    """Keep each replicate's run messages (analyses, chunks, progress) out of the benchmark's own progress.

    Warnings still show. The package logger's level is restored at the end: the
    concurrent runs each raise and restore it (their run logs) in overlapping order.
    """
    package = logging.getLogger("scalable_assoc")
    quiet = [
        logging.getLogger(name) for name in ("scalable_assoc.engine", "scalable_assoc.io", "scalable_assoc.plan", "scalable_assoc.results")
    ]
    levels = [each.level for each in quiet]
    own, package_level = logger.level, package.level
    for each in quiet:
        each.setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for each, level in zip(quiet, levels, strict=True):
            each.setLevel(level)
        logger.setLevel(own)
        package.setLevel(package_level)


def write_replicate_study(scenario: Scenario, replicate: int, folder: str, with_counts: bool) -> str:
    """Simulate replicate ``replicate`` of ``scenario`` and write its study folder (a Dask task; idempotent).

    Writes ``abundance.parquet`` (samples as rows, ``sample_id`` first, percent) and its
    store ``abundance.zarr`` (:func:`~scalable_assoc.io.ingest.ingest_table`, converted once
    here on the worker rather than once per layer by the run), ``metadata.tsv``,
    ``truth.parquet``, ``counts.npz`` (with ``with_counts``) and, last, ``plan.yaml``; a
    folder whose ``plan.yaml`` exists is complete and is kept, any other is written anew.
    Returns the plan's path.
    """
    from scalable_assoc.io.ingest import ingest_table

    study = Path(folder)
    plan_path = study / "plan.yaml"
    if plan_path.exists():
        return str(plan_path)
    shutil.rmtree(study, ignore_errors=True)  # an earlier attempt that did not finish
    study.mkdir(parents=True)
    data = simulate_scenario(scenario, replicate)
    table = pd.DataFrame(data.abundance, columns=data.feature_names)
    table.insert(0, "sample_id", data.metadata["sample_id"].to_numpy())
    write_parquet(study / "abundance.parquet", table)
    ingest_table(study / "abundance.parquet", study / ABUNDANCE_STORE, fmt="parquet")
    write_tsv(study / "metadata.tsv", data.metadata)
    write_parquet(study / "truth.parquet", data.truth)
    if with_counts:
        write_npz(study / "counts.npz", {"counts": data.counts})
    text = replicate_plan(scenario)
    write_atomically(plan_path, lambda path: _write_text(path, text))
    return str(plan_path)


def _write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def replicate_plan(scenario: Scenario) -> str:
    """The ``plan.yaml`` of a replicate of ``scenario`` (see the module docstring)."""
    lines = [
        f"# Methods benchmark, scenario {scenario.name} (written by scalable_assoc.engine.methods_benchmark)",
        f"name: methods-{scenario.name}",
        "data:",
        "  metadata: metadata.tsv",
        "  layers:",
    ]
    for transform in TRANSFORMS:
        models = [*LAYER_MODELS, "lmm"] if scenario.has_families and transform == LMM_TRANSFORM else list(LAYER_MODELS)
        lines.append(f"    {transform}: {{path: {ABUNDANCE_STORE}, preprocess: {{transform: {transform}}}, models: [{', '.join(models)}]}}")
    lines += [
        "preprocess: {min_prevalence: 0, pseudocount: half_min}",
        "exposures:",
        '  disorder: {cases: "disorder == 1", controls: "disorder == 0"}',
        "adjustments:",
        "  unadjusted: [age, sex, log_depth]",
        "  adjusted: [unadjusted, drug]",
        f"fdr: {{method: bh, by: [layer, exposure, adjustment, model], alpha: {scenario.alpha!r}}}",
        f"models: [{', '.join(LAYER_MODELS)}]",
    ]
    if scenario.has_families:
        lines.append("cluster: family_id")
    return "\n".join(lines) + "\n"


def _run_replicates(
    client: Client,
    replicates: list[_Replicate],
    total: int,
    on_progress: Callable[[int, int], None] | None,
    concurrent_runs: int,
    keep_runs: bool,
    with_counts: bool,
    on_scenario: Callable[[Scenario], None],
) -> None:
    """Simulate the unfinished replicates on the cluster, run and score them a few at a time; progress in this thread.

    ``on_scenario(scenario)`` is called once all of a scenario's replicates are finished
    (at once for a scenario finished by an earlier benchmark).
    """
    pending = [rep for rep in replicates if not rep.metrics.exists()]
    done = total - len(pending)
    left: dict[str, int] = {}
    for rep in pending:
        left[rep.scenario.name] = left.get(rep.scenario.name, 0) + 1
    for scenario in dict.fromkeys(rep.scenario for rep in replicates):
        if scenario.name not in left:
            on_scenario(scenario)
    if not pending:
        return
    simulated = {
        rep: client.submit(
            write_replicate_study,
            rep.scenario,
            rep.index,
            str(rep.study),
            with_counts,
            key=f"methods-simulate-{rep.scenario.name}-{scenario_hash(rep.scenario)}-{rep.index}",
            pure=False,
        )
        for rep in pending
    }
    queue = list(pending)
    running: dict[Future, _Replicate] = {}
    with ThreadPoolExecutor(max_workers=concurrent_runs, thread_name_prefix="scalable-assoc-benchmark") as pool:
        try:
            while queue or running:
                while queue and len(running) < concurrent_runs:
                    rep = queue.pop(0)
                    running[pool.submit(_score_replicate, client, rep, simulated[rep], keep_runs)] = rep
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    rep = running.pop(future)
                    future.result()  # a failed replicate ends the benchmark with its error
                    done += 1
                    logger.info("benchmark-methods: %d/%d replicates (%s r%d)", done, total, rep.scenario.name, rep.index + 1)
                    left[rep.scenario.name] -= 1
                    if not left[rep.scenario.name]:
                        on_scenario(rep.scenario)
                    if on_progress is not None:
                        on_progress(done, total)
        except BaseException:
            # Runs in flight finish (each replicate stays consistent); nothing new starts.
            for rep in queue:
                simulated[rep].cancel()
            queue.clear()
            raise


def _score_replicate(client: Client, rep: _Replicate, simulated: Any, keep_runs: bool) -> None:
    """Run one replicate's study, score its fits against the truth, write fits and (last) metrics."""
    from scalable_assoc.results.methods_metrics import replicate_metrics

    plan_path = Path(simulated.result())
    run_study(plan_path, rep.run, client=client)
    fits = replicate_fits(rep.run)
    truth = pd.read_parquet(rep.study / "truth.parquet")
    metrics = replicate_metrics(fits, truth, rep.scenario.alpha)
    write_parquet(rep.fits, fits)
    write_parquet(rep.folder / "truth.parquet", truth)
    if (rep.study / "counts.npz").exists():
        # limma needs the counts and design after the study folder is gone.
        shutil.copyfile(rep.study / "counts.npz", rep.folder / "counts.npz")
        meta = pd.read_csv(rep.study / "metadata.tsv", sep="\t")
        write_parquet(rep.folder / "design.parquet", meta[["disorder", "drug", "age", "sex", "log_depth"]])
    write_parquet(rep.metrics, metrics)
    if not keep_runs:
        shutil.rmtree(rep.study, ignore_errors=True)
        shutil.rmtree(rep.run, ignore_errors=True)


def replicate_fits(run_dir: Path) -> pd.DataFrame:
    """The fits frame of one replicate's run (``results.parquet`` and ``joint_results.parquet``).

    One row per method x feature, columns :data:`FITS_COLUMNS`; methods are
    ``<model>/<transform>/<adjustment>`` (``prevalence/-/...``, taken from the ``clr`` layer),
    in :data:`MODEL_ORDER`, then transform and adjustment order; ``p`` NaN for no estimate.
    """
    results = pd.read_parquet(run_dir / "results.parquet", columns=["layer", "feature", "adjustment", "model", "beta", "p", "q"])
    results = results[(results["model"] != "prevalence") | (results["layer"] == LMM_TRANSFORM)]
    frame = pd.DataFrame(
        {
            "model": results["model"].astype(str).to_numpy(),
            "transform": np.where(results["model"] == "prevalence", "-", results["layer"].astype(str)),
            "adjustment": results["adjustment"].astype(str).to_numpy(),
            "feature": results["feature"].astype(str).to_numpy(),
            "beta": results["beta"].to_numpy(dtype=np.float64, na_value=np.nan),
            "p": results["p"].to_numpy(dtype=np.float64, na_value=np.nan),
            "q": results["q"].to_numpy(dtype=np.float64, na_value=np.nan),
        }
    )
    joint_path = run_dir / "joint_results.parquet"
    if joint_path.exists():
        joint = pd.read_parquet(joint_path)
        frame = pd.concat(
            [
                frame,
                pd.DataFrame(
                    {
                        "model": "joint",
                        "transform": joint["layer"].astype(str).to_numpy(),
                        "adjustment": joint["adjustment"].astype(str).to_numpy(),
                        "feature": joint["feature"].astype(str).to_numpy(),
                        "beta": np.nan,
                        "p": joint["p_joint"].to_numpy(dtype=np.float64, na_value=np.nan),
                        "q": joint["q_joint"].to_numpy(dtype=np.float64, na_value=np.nan),
                    }
                ),
            ],
            ignore_index=True,
        )
    return _ordered_fits(frame)


#: The order of methods in every output: by model, then transform, then adjustment (unknown values last).
_METHOD_ORDER = {
    "model": {m: i for i, m in enumerate(MODEL_ORDER)},
    "transform": {t: i for i, t in enumerate(("-", *TRANSFORMS))},
    "adjustment": {a: i for i, a in enumerate(ADJUSTMENTS)},
}


def _method_ranks(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Each row's rank of its model, transform and adjustment in :data:`_METHOD_ORDER`."""
    return {column: frame[column].map(ranks).fillna(len(ranks)) for column, ranks in _METHOD_ORDER.items()}


def _ordered_fits(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with its ``method`` column, rows in method order then the features' own order."""
    frame = frame.copy()
    frame["method"] = frame["model"] + "/" + frame["transform"] + "/" + frame["adjustment"]
    keys = pd.DataFrame(_method_ranks(frame))
    keys["row"] = np.arange(len(frame))
    index = keys.sort_values(["model", "transform", "adjustment", "row"], kind="stable").index
    return frame.loc[index, FITS_COLUMNS].reset_index(drop=True)


def _in_order(frame: pd.DataFrame, scenarios: list[str]) -> pd.DataFrame:
    """Rows by scenario (file order), replicate (where there is one), then model, transform and adjustment order."""
    keys = pd.DataFrame(
        {
            "scenario": frame["scenario"].map({name: i for i, name in enumerate(scenarios)}),
            "replicate": frame["replicate"] if "replicate" in frame.columns else 0,
            **_method_ranks(frame),
            "method": frame["method"],
        },
        index=frame.index,
    )
    order = keys.sort_values(list(keys.columns), kind="stable").index
    return frame.loc[order].reset_index(drop=True)


def _submit_limma(client: Client, scenario: Scenario, replicates: list[_Replicate]) -> Any:
    """The Dask task fitting limma-voom and limma-trend to the scenario's replicates without limma fits yet (None: none)."""
    # Replicates run before limma was available have no counts kept: they stay without limma rows.
    todo = [
        rep for rep in replicates if rep.scenario is scenario and not rep.limma_metrics.exists() and (rep.folder / "counts.npz").exists()
    ]
    if not todo:
        return None
    return client.submit(
        limma_replicates,
        [str(rep.folder) for rep in todo],
        scenario.alpha,
        key=f"methods-limma-{scenario.name}-{scenario_hash(scenario)}-{len(todo)}",
        pure=False,
    )


def limma_replicates(folders: list[str], alpha: float) -> None:
    """Fit limma-voom and limma-trend (one Rscript) to each replicate folder's counts (a Dask task).

    Writes ``limma_fits.parquet`` (q: BH within each method) and, last, ``limma_metrics.parquet``
    (scored against the folder's ``truth.parquet`` at ``alpha``).
    """
    from scalable_assoc.io.limma_r import LimmaJob, run_limma
    from scalable_assoc.results.methods_metrics import method_q, replicate_metrics

    jobs, where = [], []
    for folder in folders:
        path = Path(folder)
        try:
            counts = np.load(path / "counts.npz")["counts"]
            design = pd.read_parquet(path / "design.parquet")
        except FileNotFoundError:
            # Dask may run this task twice (an interrupted benchmark's task still running when it resumes):
            # the other run finished this replicate and removed its counts.
            if (path / "limma_metrics.parquet").exists():
                continue
            raise
        names = list(pd.read_parquet(path / "truth.parquet", columns=["feature"])["feature"])
        for adjustment, columns in (
            ("unadjusted", ["disorder", "age", "sex", "log_depth"]),
            ("adjusted", ["disorder", "age", "sex", "log_depth", "drug"]),
        ):
            jobs.append(LimmaJob(counts, names, design[columns].astype(np.float64), "disorder"))
            where.append((path, adjustment))
    if not jobs:
        return
    work = Path(folders[0]).parent / f".limma-{uuid.uuid4().hex[:8]}"  # of this run of the task only
    frames = run_limma(jobs, work)
    by_folder: dict[Path, list[pd.DataFrame]] = {}
    for (path, adjustment), frame in zip(where, frames, strict=True):
        frame = frame.copy()
        frame["transform"] = "-"
        frame["adjustment"] = adjustment
        by_folder.setdefault(path, []).append(frame)
    for path, parts in by_folder.items():
        fits = pd.concat(parts, ignore_index=True)
        fits["method"] = fits["model"] + "/-/" + fits["adjustment"]
        fits["q"] = method_q(fits)
        fits = _ordered_fits(fits)
        write_parquet(path / "limma_fits.parquet", fits)
        write_parquet(path / "limma_metrics.parquet", replicate_metrics(fits, pd.read_parquet(path / "truth.parquet"), alpha))
        # The counts (2.4 MB a replicate at the default size) are only limma's input.
        (path / "counts.npz").unlink(missing_ok=True)
        (path / "design.parquet").unlink(missing_ok=True)
    shutil.rmtree(work, ignore_errors=True)


def _replicate_rows(rep: _Replicate) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A finished replicate's metrics (limma's included when fitted) and its fits, with scenario and replicate columns."""
    metrics = pd.read_parquet(rep.metrics)
    fits = pd.read_parquet(rep.fits)
    if rep.limma_metrics.exists():
        metrics = pd.concat([metrics, pd.read_parquet(rep.limma_metrics)], ignore_index=True)
        fits = pd.concat([fits, pd.read_parquet(rep.limma)], ignore_index=True)
    for frame in (metrics, fits):
        frame.insert(0, "replicate", rep.index + 1)
        frame.insert(0, "scenario", rep.scenario.name)
    return metrics, fits


def _write_outputs(
    out: Path,
    grid: ScenarioGrid,
    replicates: list[_Replicate],
    ran: int,
    reused: int,
    started: float,
    limma_reason: str | None,
) -> MethodsBenchmark:
    """Gather every replicate's metrics and write the tables, figures and manifest."""
    from scalable_assoc.report.methods_figures import null_qq_figure, power_fdr_figure
    from scalable_assoc.results.methods_metrics import null_calibration, summarise_methods

    metrics_parts, null_fits = [], []
    for rep in replicates:
        metrics, fits = _replicate_rows(rep)
        metrics_parts.append(metrics)
        if rep.scenario.global_null or (rep.scenario.disorder_effects == 0 and rep.scenario.dominant_features == 0):
            null_fits.append(fits)
    names = grid.names()
    per_replicate = _in_order(pd.concat(metrics_parts, ignore_index=True), names)
    summary = _in_order(
        pd.concat(
            [summarise_methods(per_replicate[per_replicate["scenario"] == s.name], s.alpha) for s in grid.scenarios], ignore_index=True
        ),
        names,
    )
    flags = summary[["scenario", "method", "fdr_controlled"]]
    table = per_replicate.merge(flags, on=["scenario", "method"], how="left", validate="many_to_one")
    table = table.rename(columns={"transform": "layer"})
    first = ["scenario", "replicate", "method", "layer", "model", "adjustment", "power", "fdr", "fdr_controlled", "auc", "sign_errors"]
    table = table[first + [c for c in table.columns if c not in first]]
    if null_fits:
        pvalues = pd.concat(null_fits, ignore_index=True)
        pvalues = pvalues.loc[pvalues["p"].notna(), ["scenario", "replicate", "method", "model", "transform", "adjustment", "feature", "p"]]
        calibration = null_calibration(pvalues.reset_index(drop=True))
    else:
        pvalues = pd.DataFrame(columns=["scenario", "replicate", "method", "model", "transform", "adjustment", "feature", "p"])
        calibration = null_calibration(pvalues)
    for name, frame in (("methods_benchmark", table), ("methods_summary", summary), ("null_calibration", calibration)):
        write_parquet(out / f"{name}.parquet", frame)
        write_tsv(out / f"{name}.tsv", frame)
    alpha = grid.scenarios[0].alpha
    figures = {"power_vs_fdr": power_fdr_figure(summary, out / "power_vs_fdr.png", alpha)}
    if len(pvalues):
        figures["null_qq"] = null_qq_figure(pvalues.reset_index(drop=True), out / "null_qq.png")
    from scalable_assoc import __version__

    seconds = time.perf_counter() - started
    manifest = {
        "version": __version__,
        "scenario_file": grid.source,
        "scenario_file_sha256": hashlib.sha256(grid.text.encode("utf-8")).hexdigest(),
        "scenario_file_text": grid.text,
        "scenarios": {s.name: {**s.as_dict(), "hash": scenario_hash(s)} for s in grid.scenarios},
        "replicates": {s.name: s.replicates for s in grid.scenarios},
        "replicates_run": ran,
        "replicates_reused": reused,
        "limma": "fitted" if limma_reason is None else f"skipped: {limma_reason}",
        "seconds": round(seconds, 3),
    }
    write_json(out / "manifest.json", manifest)
    return MethodsBenchmark(out, table, summary, calibration, figures, manifest, ran, reused, seconds)
