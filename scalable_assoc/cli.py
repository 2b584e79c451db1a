"""The ``scalable-assoc`` command: parses arguments and calls the library, nothing more.

Bad input ends with a one-paragraph message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from scalable_assoc import __version__
from scalable_assoc.errors import UserInputError


def _whole_number(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < minimum:
        what = "a positive whole number" if minimum == 1 else f"a whole number of at least {minimum}"
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1)


def _count(text: str) -> int:
    return _whole_number(text, 0)


def build_parser() -> argparse.ArgumentParser:
    """The ``scalable-assoc`` argument parser (deployment files are checked against it: their commands and options must exist)."""
    parser = argparse.ArgumentParser(
        prog="scalable-assoc",
        description="Microbiome feature x phenotype association studies, batched and run on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"scalable-assoc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    _add_simulate(commands)
    _add_run(commands)
    _add_ingest(commands)
    _add_inspect(commands)
    _add_sumstats(commands)
    _add_meta_and_pool(commands)
    _add_status(commands)
    _add_keygen(commands)
    _add_report(commands)
    _add_benchmark_methods(commands)
    return parser


def _add_simulate(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc simulate``."""
    simulate = commands.add_parser("simulate", help="write a Lifelines-shaped cohort with known truth and a ready plan.yaml")
    simulate.add_argument("--out", required=True, type=Path, help="folder to write metadata.tsv, species.tsv, ..., plan.yaml")
    simulate.add_argument("--participants", type=_positive_int, default=7656)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--species", type=_positive_int, default=400, help="number of species")
    simulate.add_argument("--pathways", type=_positive_int, default=650, help="number of pathways")
    simulate.add_argument(
        "--cohorts",
        type=_positive_int,
        default=1,
        help="several biobanks (cohort_1..cohort_K folders of participants/k each, shared truth with heterogeneity, batch shifts, "
        "different feature spellings)",
    )


def _add_run(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc run``."""
    run = commands.add_parser("run", help="run every analysis of a plan")
    run.add_argument("plan", type=Path, help="plan file (YAML)")
    run.add_argument("--out", type=Path, help="output folder (default: <plan folder>/results)")
    _scheduler_or_workers(run)
    _cluster_options(run)
    run.add_argument(
        "--chunk-features", type=_positive_int, help="features per store chunk when converting tables (default: ~32 MiB chunks)"
    )
    run.add_argument(
        "--intersect-samples", action="store_true", help="analyse only samples present in both metadata and abundance tables (warns)"
    )
    run.add_argument(
        "--features",
        type=Path,
        help="shared feature list (TSV/CSV/Parquet with a 'feature' column, optional 'layer' and 'kept', e.g. a reference cohort's "
        "results/features.parquet): "
        "the features every layer keeps and transforms over, instead of the prevalence filter; overrides the plan's 'features'",
    )
    run.add_argument(
        "--min-cases",
        type=_positive_int,
        help="minimum cases and controls per binary exposure for this run only, instead of the plan's min_cases (not part of what "
        "meta/pool compare)",
    )
    run.add_argument(
        "--top",
        type=_count,
        default=5,
        metavar="N",
        help="when the run ends, print the N associations with the smallest q per layer (and model), each exposure under its base "
        "adjustment set (the first set, in plan order, it ran under), with direction, beta and q (default 5; 0: none)",
    )
    run.add_argument(
        "--no-workers-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="end the run (exit 1; a rerun resumes) when the cluster has had no worker for this long, e.g. all jobs ended (default 300)",
    )
    run.add_argument(
        "--force",
        action="store_true",
        help="run even when the output folder holds a finished run of the same plan, inputs and options (else: 'up to date', exit 0)",
    )
    run.add_argument(
        "--covariate-rows",
        action="store_true",
        help="also write every covariate's coefficient in each lm model to covariate_results.parquet / .tsv",
    )
    run.add_argument(
        "--no-report",
        action="store_true",
        help="do not write figures/ and report.html at the end (write them later with 'scalable-assoc report OUT')",
    )
    run.add_argument(
        "--allow-outside-paths",
        action="store_true",
        help="let the plan name files outside its own folder (data.metadata, layer paths, features:); only for a plan you trust",
    )


def _add_ingest(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc ingest``."""
    ingest = commands.add_parser("ingest", help="convert an abundance table into a feature-chunked Zarr store")
    ingest.add_argument("table", type=Path, help="MetaPhlAn merged table, wide TSV/CSV (samples as rows), Parquet, BIOM or AnnData .h5ad")
    ingest.add_argument("--out", required=True, type=Path, help="store to write (a folder ending in .zarr)")
    ingest.add_argument("--format", default="auto", choices=["auto", "metaphlan", "wide", "parquet", "humann", "long", "biom", "h5ad"])
    ingest.add_argument("--stratified", action="store_true", help="HUMAnN tables: the per-species rows instead of the community totals")
    ingest.add_argument("--missing", choices=["zero", "na"], default="zero", help="long tables: what a pair the table does not list is")
    ingest.add_argument("--rank", help="MetaPhlAn (or BIOM taxonomy) rank to keep (species, genus, ...; default species)")
    ingest.add_argument("--h5ad-layer", help=".h5ad files: the layer (layers/NAME) to read instead of X")
    ingest.add_argument("--layer", help="add the table as this layer of a store holding several (created if absent; one ingest per layer)")
    ingest.add_argument("--chunk-features", type=_positive_int)


def _add_inspect(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc inspect``."""
    inspect = commands.add_parser(
        "inspect", help="what a table or store holds: format, samples, features per rank, prevalence, scale, and its plan entry"
    )
    inspect.add_argument("path", type=Path, help="an abundance table in any layer format, or a store made by 'scalable-assoc ingest'")
    inspect.add_argument(
        "--format", default="auto", choices=["auto", "metaphlan", "wide", "parquet", "humann", "long", "biom", "h5ad", "zarr"]
    )
    inspect.add_argument("--rank", help="MetaPhlAn (or BIOM taxonomy) rank to summarise (default species)")
    inspect.add_argument("--stratified", action="store_true", help="HUMAnN tables: the per-species rows instead of the community totals")
    inspect.add_argument("--missing", choices=["zero", "na"], default="zero", help="long tables: what a pair the table does not list is")
    inspect.add_argument("--json", action="store_true", help="print the summary as one JSON object (the fields of TableInspection)")


def _add_sumstats(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc sumstats``."""
    sumstats = commands.add_parser("sumstats", help="export a run's summary statistics under disclosure control (what may leave a biobank)")
    sumstats.add_argument("run_dir", type=Path, help="output folder of a finished 'scalable-assoc run'")
    sumstats.add_argument("--cohort", required=True, help="cohort name, e.g. lifelines")
    sumstats.add_argument(
        "--out", required=True, type=Path, help="summary-statistics file to write (.parquet); its sidecar <stem>.json is written next to it"
    )
    sumstats.add_argument(
        "--sufficient", action="store_true", help="also export the lm cross-products (<stem>.sufficient.parquet) for 'scalable-assoc pool'"
    )
    sumstats.add_argument(
        "--min-cell-count",
        type=int,
        default=3,
        help="withhold rows with fewer cases or controls than this, or fewer participants with (or a non-zero number without) the feature, "
        "overall or among the cases or the controls (DataSHIELD nfilter.tab; default 3)",
    )
    sumstats.add_argument(
        "--max-parameter-fraction",
        type=float,
        default=0.33,
        help="withhold rows whose model has more parameters than this x n (DataSHIELD nfilter.glm; default 0.33)",
    )
    sumstats.add_argument(
        "--min-cases",
        type=int,
        default=0,
        help="also withhold rows with fewer cases or controls than this (e.g. the consortium's min_cases after 'run --min-cases'; default "
        "0: off)",
    )
    sumstats.add_argument("--scheduler", help="Dask scheduler for --sufficient (default: a local cluster)")
    sumstats.add_argument("--workers", type=_positive_int, help="local worker processes for --sufficient")
    sumstats.add_argument(
        "--sign-key",
        type=Path,
        metavar="KEY",
        help="sign the sidecar: KEY is a shared secret file (HMAC-SHA256) or an Ed25519 private key in PEM ('scalable-assoc keygen'); "
        "meta and pool --verify-key then refuse the files if anything was changed",
    )
    _cluster_options(sumstats)


def _add_meta_and_pool(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc meta`` and ``pool``, which share their options on combining cohorts."""
    combine_help = {
        "feature_map": "tab-separated file with columns 'from' and 'to' renaming feature spellings before matching",
        "min_cohorts": "combine a feature only when at least this many cohorts have it (default 2)",
        "allow_mismatch": "combine cohorts even if their analyses (transform, models, exposures, adjustments) or their CLR/TSS/AST "
        "feature sets differ (warnings in the manifest)",
        "alpha": "q below this counts as significant (default: the fdr.alpha of the cohorts' plans)",
        "verify_key": "refuse every file whose sidecar is not signed with this key: the consortium's shared secret file or a cohort's "
        "Ed25519 public key (PEM); "
        "repeat it to give one public key per cohort",
    }
    meta = commands.add_parser("meta", help="meta-analyse cohorts' summary-statistics files")
    meta.add_argument("files", nargs="+", type=Path, help="summary-statistics files written by 'scalable-assoc sumstats'")
    meta.add_argument("--out", required=True, type=Path, help="output folder")
    meta.add_argument(
        "--method",
        default="reml",
        choices=["fe", "dl", "reml", "pm"],
        help="fixed effect, or random effects by DerSimonian-Laird, REML (default) or Paule-Mandel",
    )
    meta.add_argument("--hksj", action="store_true", help="Hartung-Knapp-Sidik-Jonkman standard errors and t(k-1) p-values")
    meta.add_argument("--leave-one-out", action="store_true", help="also write leave-one-cohort-out estimates")
    meta.add_argument("--feature-map", type=Path, help=combine_help["feature_map"])
    meta.add_argument("--min-cohorts", type=_positive_int, default=2, help=combine_help["min_cohorts"])
    meta.add_argument("--allow-mismatch", action="store_true", help=combine_help["allow_mismatch"])
    meta.add_argument("--alpha", type=float, help=combine_help["alpha"])
    meta.add_argument(
        "--scheduler", help="Dask scheduler to combine the rows on (default: in this process below 2 million rows, else a local cluster)"
    )
    meta.add_argument("--workers", type=_positive_int, help="local worker processes when a cluster is used")
    meta.add_argument("--verify-key", type=Path, action="append", metavar="KEY", help=combine_help["verify_key"])
    _cluster_options(meta)

    pool = commands.add_parser("pool", help="exact pooled linear model with a cohort fixed effect from exported cross-products")
    pool.add_argument("files", nargs="+", type=Path, help="summary-statistics files exported with --sufficient")
    pool.add_argument("--out", required=True, type=Path, help="output folder")
    pool.add_argument("--feature-map", type=Path, help=combine_help["feature_map"])
    pool.add_argument("--min-cohorts", type=_positive_int, default=2, help=combine_help["min_cohorts"])
    pool.add_argument("--allow-mismatch", action="store_true", help=combine_help["allow_mismatch"])
    pool.add_argument("--alpha", type=float, help=combine_help["alpha"])
    pool.add_argument("--verify-key", type=Path, action="append", metavar="KEY", help=combine_help["verify_key"])


def _add_status(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc status``."""
    status = commands.add_parser(
        "status",
        help="whether the run in an output folder is running, finished, failed or interrupted "
        "(exit 0 finished, 1 failed, 75 running, 130 interrupted, 2 no run there)",
    )
    status.add_argument("out", type=Path, help="output folder of 'scalable-assoc run'")
    status.add_argument(
        "--json",
        action="store_true",
        help="print the status as one JSON object (keys state, chunks_done, chunks_total, started, finished, plan_hash, error)",
    )


def _add_keygen(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc keygen``."""
    keygen = commands.add_parser(
        "keygen", help="write an Ed25519 key pair for signing summary statistics (sumstats --sign-key, meta/pool --verify-key)"
    )
    keygen.add_argument(
        "--out",
        required=True,
        type=Path,
        help="folder to write key.pem (private, keep it in the cohort) and key.pub.pem (give it to the consortium)",
    )


def _add_report(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc report``."""
    report = commands.add_parser(
        "report",
        help="write the figures (DIR/figures) and a self-contained HTML report (DIR/report.html) of a finished run, meta or pool folder",
    )
    report.add_argument("run_dir", type=Path, metavar="DIR", help="output folder of a finished run, meta or pool")
    report.add_argument("--out", type=Path, metavar="FILE.html", help="where to write the page (default DIR/report.html)")
    report.add_argument(
        "--top",
        type=_positive_int,
        default=30,
        metavar="N",
        help="features in each layer's heatmap: the N with the smallest q (default 30); for a meta folder, forest plots per layer "
        "and model (at most 30)",
    )
    report.add_argument(
        "--features-top",
        type=_count,
        default=10,
        metavar="N",
        help="associations drawn as per-feature plots per layer and model: the N with the smallest q among q < alpha under the base "
        "adjustment set, with the values each model saw (default 10; 0 draws none)",
    )


def _add_benchmark_methods(commands: argparse._SubParsersAction) -> None:
    """``scalable-assoc benchmark-methods``."""
    bench = commands.add_parser(
        "benchmark-methods",
        help="compare transforms x models x adjustment on simulated scenarios with known truth: power, FDR, AUC, calibration",
    )
    bench.add_argument("--out", required=True, type=Path, help="output folder (methods_benchmark.parquet/.tsv, methods_summary, figures)")
    bench.add_argument(
        "--scenarios", type=Path, help="scenario file (YAML: defaults and scenarios; default: the shipped methods_scenarios.yaml)"
    )
    bench.add_argument("--replicates", type=_positive_int, help="replicates per scenario (default: each scenario's own, 20 shipped)")
    _scheduler_or_workers(bench)
    _cluster_options(bench)
    bench.add_argument("--force", action="store_true", help="start again: remove the finished replicates and outputs of --out first")


def _scheduler_or_workers(command: argparse.ArgumentParser) -> None:
    """Where a command that runs a whole study computes: an existing scheduler, or a local cluster of N workers."""
    command.add_argument(
        "--scheduler",
        help="address of an existing Dask scheduler, e.g. tls://10.0.0.5:8786 with --tls-* options, or tcp://... (default: start a closed "
        "local cluster)",
    )
    command.add_argument("--workers", type=_positive_int, help="worker processes of the local cluster (default: one per core)")


def _cluster_options(command: argparse.ArgumentParser) -> None:
    """The options of a closed cluster, on every command that takes --scheduler."""
    command.add_argument(
        "--cluster",
        type=Path,
        metavar="FILE",
        help="a cluster profile, e.g. deploy/slurm.yaml: workers as SLURM jobs (see deploy/README.md)",
    )
    command.add_argument(
        "--tls-ca-file",
        type=Path,
        help="with --scheduler tls://...: the certificate authority that signed the cluster's certificates (PEM)",
    )
    command.add_argument(
        "--tls-cert", type=Path, help="with --scheduler tls://...: this client's certificate, signed by that authority (PEM)"
    )
    command.add_argument(
        "--tls-key", type=Path, help="with --scheduler tls://...: the key of --tls-cert (unless the certificate file holds it)"
    )
    command.add_argument(
        "--dashboard",
        nargs="?",
        const="127.0.0.1:8787",
        metavar="ADDRESS",
        help="serve the local cluster's Dask dashboard at ADDRESS (HOST:PORT or a port; without a value 127.0.0.1:8787; default: no "
        "dashboard)",
    )


def _security(args: argparse.Namespace):  # -> distributed.Security | None (only the engine imports distributed)
    from scalable_assoc.engine.cluster import tls_security

    return tls_security(args.tls_ca_file, args.tls_cert, args.tls_key)


def _simulate(args: argparse.Namespace) -> None:
    from scalable_assoc.simulate import simulate_cohorts, simulate_study

    if args.cohorts > 1:
        several = simulate_cohorts(
            args.out, cohorts=args.cohorts, participants=args.participants, seed=args.seed, n_species=args.species, n_pathways=args.pathways
        )
        for name, cohort in several.studies.items():
            print(
                f"simulated {name}: {cohort.n_participants} participants, species spelled as {several.spellings[name]}, plan "
                f"{cohort.plan_path}"
            )
        print(f"  truth: {several.truth_path}; feature spellings: {several.mapping_path}")
        print("  shared feature list: features.tsv in every cohort folder, named by each plan.yaml (features: features.tsv)")
        out = several.out_dir
        print("next, per cohort: scalable-assoc run OUT/cohort_1/plan.yaml --out OUT/cohort_1/results".replace("OUT", str(out)))
        print(f"  then: scalable-assoc sumstats {out}/cohort_1/results --cohort cohort_1 --out {out}/cohort_1.parquet --sufficient")
        print(f"  then: scalable-assoc meta {out}/cohort_*.parquet --out {out}/meta --feature-map {several.mapping_path}")
        return
    study = simulate_study(args.out, participants=args.participants, seed=args.seed, n_species=args.species, n_pathways=args.pathways)
    print(f"simulated {study.n_participants} participants ({study.n_controls} controls) in {study.out_dir}")
    print("  features: " + ", ".join(f"{layer} {n}" for layer, n in study.n_features.items()))
    print(f"  planted effects: {study.n_planted} (truth.tsv)")
    print(f"  plan: {study.plan_path}")
    print(f"next: scalable-assoc run {study.plan_path}")


def _start_worker_server(args: argparse.Namespace) -> None:
    """For a ``run`` on a local cluster: start the server its workers are forked from, first thing (see ``main``).

    The server's imports (distributed, the task modules: about a second) then
    overlap this process's (pandas, zarr, distributed, the engine: about a
    second too) instead of starting after the first 0.5 s of them.
    """
    if args.command == "run" and args.scheduler is None and args.cluster is None:
        from scalable_assoc.engine.worker_server import WORKER_PRELOAD, start_worker_server  # imports no distributed

        start_worker_server(WORKER_PRELOAD)


def _import_run_modules() -> None:
    """Import what ``run`` needs with the cyclic garbage collector paused, then keep those objects out of its collections.

    Modules those imports load but the run never uses load at their first use instead
    (:mod:`scalable_assoc.engine.deferred_imports`).

    The run's imports create ~140,000 long-lived objects, and the collector traversed
    all of them again in each of 3 full collections (0.13 s of the command's own
    process on the reference machine); frozen (:func:`gc.freeze`), later collections
    skip them too. Only when this process is the command (``main`` without ``argv``):
    a frozen object is never collected, which a process calling ``main`` repeatedly
    should not get.
    """
    import gc

    from scalable_assoc.engine.deferred_imports import defer_unused_imports

    enabled = gc.isenabled()
    gc.disable()
    try:
        defer_unused_imports()  # NumPy's submodules SciPy's import loads (here only for alpha metrics or PERMANOVA)
        import scalable_assoc.engine.run
        import scalable_assoc.io.runstate
        import scalable_assoc.plan.schema
        import scalable_assoc.report.console
        import scalable_assoc.report.progress_console  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _run(args: argparse.Namespace) -> None:
    from scalable_assoc.engine.run import run_study
    from scalable_assoc.plan.schema import load_plan
    from scalable_assoc.report.console import run_report

    plan = load_plan(args.plan, allow_outside_paths=args.allow_outside_paths)
    out = args.out or plan.source.parent / "results"
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder for the results")
    summary = run_study(
        plan,
        out,
        scheduler=args.scheduler,
        workers=args.workers,
        chunk_features=args.chunk_features,
        intersect_samples=args.intersect_samples,
        features=args.features,
        min_cases=args.min_cases,
        covariate_rows=args.covariate_rows,
        force=args.force,
        security=_security(args),
        dashboard=args.dashboard,
        no_workers_timeout=args.no_workers_timeout,
        cluster_profile=args.cluster,
    )
    print(run_report(summary.out_dir, summary.results, summary.survival, list(plan.adjustments), plan.fdr.alpha, args.top))
    print(f"done in {summary.seconds:.1f}s ({summary.chunks_total} chunks, {summary.chunks_reused} reused)")
    if not args.no_report:
        from scalable_assoc.report.html import report_is_current, write_report

        if report_is_current(summary.out_dir):  # an up-to-date run keeps its report
            print(f"report: {summary.out_dir / 'report.html'} (up to date)")
        else:
            print(f"report: {write_report(summary.out_dir)}")


def _report(args: argparse.Namespace) -> None:
    from scalable_assoc.report.html import write_report

    path = write_report(args.run_dir, args.out, top=args.top, features_top=args.features_top)
    print(f"wrote {path} and the figures in {args.run_dir / 'figures'}")


def _benchmark_methods(args: argparse.Namespace) -> None:
    from scalable_assoc.engine.methods_benchmark import benchmark_methods
    from scalable_assoc.simulate.scenarios import load_scenarios

    grid = load_scenarios(args.scenarios)  # a bad file is reported (exit 2) before a cluster starts
    result = benchmark_methods(
        args.out,
        scenarios=grid,
        replicates=args.replicates,
        scheduler=args.scheduler,
        workers=args.workers,
        security=_security(args),
        dashboard=args.dashboard,
        cluster_profile=args.cluster,
        force=args.force,
    )
    columns = ["scenario", "method", "replicates", "power", "fdr", "fdr_controlled", "auc", "null_share_p05", "calibrated"]
    shown = result.summary[[c for c in columns if c in result.summary.columns]]
    print(shown.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(
        f"done in {result.seconds:.1f}s ({result.replicates_run} replicates run, {result.replicates_reused} reused); "
        f"outputs in {result.out_dir}"
    )


def _ingest(args: argparse.Namespace) -> None:
    from scalable_assoc.io.ingest import ingest_table
    from scalable_assoc.plan.schema import RANK_PREFIXES

    if args.rank is not None and args.rank not in RANK_PREFIXES:
        raise UserInputError(f"--rank {args.rank!r} is not a MetaPhlAn rank; use one of {', '.join(RANK_PREFIXES)}")
    given = (("stratified", args.stratified), ("missing", args.missing), ("h5ad_layer", args.h5ad_layer))
    options = {key: value for key, value in given if value not in (False, "zero", None)}
    rank, rank_given = args.rank or "species", args.rank is not None
    store = ingest_table(args.table, args.out, args.format, rank, args.chunk_features, rank_given=rank_given, layer=args.layer, **options)
    print(f"wrote {store.path}: {store.n_samples} samples x {store.n_features} features, {store.chunk_features} features per chunk")


def _inspect(args: argparse.Namespace) -> None:
    from scalable_assoc.io.inspect import inspect_table

    summary = inspect_table(args.path, format=args.format, rank=args.rank, stratified=args.stratified, missing=args.missing)
    print(summary.to_json() if args.json else summary.to_text())


def _sumstats(args: argparse.Namespace) -> None:
    from scalable_assoc.engine.export import export_sumstats
    from scalable_assoc.results.sumstats import DisclosureRules, sidecar_path

    rules = DisclosureRules(args.min_cell_count, args.max_parameter_fraction, args.min_cases)
    security = _security(args) if args.sufficient else None  # the cluster options matter only for the cross-products
    sidecar = export_sumstats(
        args.run_dir,
        args.cohort,
        args.out,
        rules=rules,
        sufficient=args.sufficient,
        sign_key=args.sign_key,
        scheduler=args.scheduler,
        workers=args.workers,
        security=security,
        dashboard=args.dashboard,
        cluster_profile=args.cluster,
    )
    withheld = sidecar["withheld"]["summary"]
    print(f"wrote {args.out} ({sidecar['files']['summary']['rows']} rows) and {sidecar_path(args.out)}")
    print(
        f"  withheld {withheld['rows_withheld']} rows: "
        + (", ".join(f"{k}: {v}" for k, v in withheld["withheld_by_reason"].items()) or "none")
    )
    if "sufficient" in sidecar["files"]:
        print(
            f"  cross-products: {sidecar['files']['sufficient']['name']} ({sidecar['files']['sufficient']['rows']} rows, "
            f"{sidecar['withheld']['sufficient']['rows_withheld']} withheld)"
        )
    if "signature" in sidecar:
        print(f"  signed ({sidecar['signature']['algorithm']}, key fingerprint {sidecar['signature']['key_fingerprint']})")


def _keygen(args: argparse.Namespace) -> None:
    from scalable_assoc.results.signing import load_signing_key, write_key_pair

    private, public = write_key_pair(args.out)
    print(f"wrote {private} (private: keep it in the cohort, sign with 'sumstats --sign-key {private}') and {public}")
    print(f"  give {public} to the consortium: 'meta/pool --verify-key {public}'; fingerprint {load_signing_key(private).fingerprint}")


def _mapping(path: Path | None) -> dict[str, str] | None:
    from scalable_assoc.results.harmonise import read_mapping

    return read_mapping(path) if path is not None else None


def _meta(args: argparse.Namespace) -> None:
    from scalable_assoc.engine.mapper import ClusterMapper
    from scalable_assoc.process_memory import without_huge_pages
    from scalable_assoc.results.consortium import meta_analyse, open_cohorts

    without_huge_pages()  # gigabytes of fresh arrays: huge-page faults cost more system time than they save
    cohorts = open_cohorts(args.files, need_sufficient=False, verify_keys=args.verify_key)
    profile = None
    if args.cluster is not None:
        from scalable_assoc.engine.profiles import load_cluster_profile
        from scalable_assoc.engine.run import WORK_DIR

        profile = load_cluster_profile(args.cluster).with_shared_directory(args.out / WORK_DIR / "slurm")
    with ClusterMapper(args.scheduler, args.workers, security=_security(args), dashboard=args.dashboard, profile=profile) as mapper:
        summary = meta_analyse(
            cohorts,
            args.out,
            method=args.method,
            hksj=args.hksj,
            min_cohorts=args.min_cohorts,
            leave_one_out_estimates=args.leave_one_out,
            mapping=_mapping(args.feature_map),
            allow_mismatch=args.allow_mismatch,
            mapper=mapper,
            alpha=args.alpha,
        )
    print(f"wrote {summary.out_dir / 'meta_results.parquet'}: {len(summary.results)} rows, {_significance(summary.manifest, args.alpha)}")


def _pool(args: argparse.Namespace) -> None:
    from scalable_assoc.results.consortium import open_cohorts, pool_cohorts

    summary = pool_cohorts(
        open_cohorts(args.files, need_sufficient=True, verify_keys=args.verify_key),
        args.out,
        min_cohorts=args.min_cohorts,
        mapping=_mapping(args.feature_map),
        allow_mismatch=args.allow_mismatch,
        alpha=args.alpha,
    )
    print(f"wrote {summary.out_dir / 'pooled_results.parquet'}: {len(summary.results)} rows, {_significance(summary.manifest, args.alpha)}")


def _significance(manifest: dict, given: float | None) -> str:
    alpha = manifest["settings"]["alpha"]
    source = "--alpha" if given is not None else "the plan's fdr.alpha"
    return f"{manifest['significant']} with q < {alpha:g} ({source})"


#: ``scalable-assoc status`` exit codes, for schedulers (README "Scheduled runs").
STATUS_EXIT_CODES = {"finished": 0, "failed": 1, "running": 75, "interrupted": 130}


def _status(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict

    from scalable_assoc.io.runstate import read_status

    status = read_status(args.out)
    if status is None:
        raise UserInputError(
            f"{args.out} holds no run of scalable-assoc (no {args.out}/.scalable_assoc/status.json); give the --out folder of a run"
        )
    if args.json:
        print(json.dumps({k: v for k, v in asdict(status).items() if k != "extra"}, sort_keys=True))
    else:
        line = f"{args.out}: {status.state}, {status.chunks_done}/{status.chunks_total} chunks, started {status.started}"
        if status.finished:
            line += f", ended {status.finished}"
        print(line + (f"; error: {status.error}" if status.error else ""))
    return STATUS_EXIT_CODES[status.state]


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalable-assoc`` console script; returns the exit status.

    Called without ``argv`` (as the console script or ``python -m scalable_assoc.cli``,
    reading this process's command line), a ``run`` that succeeded ends the process
    here (see :func:`_end_process`) rather than returning.
    """
    args = build_parser().parse_args(argv)
    _start_worker_server(args)  # before any heavy import, this module's below included
    if argv is None and args.command == "run":
        _import_run_modules()
    from scalable_assoc.errors import ClusterFailure, Terminated
    from scalable_assoc.io.runstate import PACKAGE_LOGGER, FolderInUse

    handlers = {
        "simulate": _simulate,
        "run": _run,
        "ingest": _ingest,
        "inspect": _inspect,
        "sumstats": _sumstats,
        "meta": _meta,
        "pool": _pool,
        "status": _status,
        "keygen": _keygen,
        "report": _report,
        "benchmark-methods": _benchmark_methods,
    }
    previous = _stop_cleanly_on_sigterm()
    package = logging.getLogger(PACKAGE_LOGGER)
    console = _log_to_stderr(package)
    try:
        code = _on_fresh_line(console, handlers[args.command], args)
    except FolderInUse as error:
        print(f"scalable-assoc {args.command}: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except ClusterFailure as error:
        print(f"scalable-assoc {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return error.exit_code
    except UserInputError as error:
        # One paragraph whatever the message carries (library errors quoted inside may span lines).
        message = " ".join(str(error).split())
        print(f"scalable-assoc {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        how = "stopped (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted"
        print(f"scalable-assoc {args.command}: {how}; run the same command again to resume", file=sys.stderr)
        return interrupt.exit_code if isinstance(interrupt, Terminated) else 130
    finally:
        package.removeHandler(console)
        console.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    status = code if isinstance(code, int) else 0
    if argv is None and status == 0 and args.command == "run":
        _end_process(status)
    return status


def _end_process(status: int) -> None:
    """End this process with ``status`` as the interpreter would, but without tearing its objects down one by one.

    After a run the interpreter's own exit spent 0.2-0.3 s (of a 3 s command on the
    reference study) clearing modules and freeing the objects of pandas, dask and
    distributed, which the operating system frees at once with the process. Everything
    before that is done here in the interpreter's order: wait for every non-daemon
    thread (a cluster still closing, executors' threads told to stop), run the ``atexit`` handlers (logging's flush and
    close, multiprocessing's and distributed's clean-ups), flush stdout and stderr.
    Every output of the run was written (atomically) and its cluster closed before
    this; the fork server and resource tracker end when their pipes close with this
    process, as they do at a normal exit.
    """
    import atexit
    import os

    # What the interpreter runs at exit before its teardown, in its order (CPython's functions, with no public names):
    # stop the executors' threads and wait for every non-daemon thread, then the atexit handlers.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, as at a normal exit: nothing more to say
            pass
    os._exit(status)


def _log_to_stderr(package: logging.Logger) -> logging.Handler:
    """The package's messages (INFO and above: progress, notes, warnings) on stderr; stdout is kept for results.

    Progress is a live bar when stderr is a terminal, plain lines at least every 10 s otherwise (see ``report.progress_console``).
    """
    from scalable_assoc.report.progress_console import ConsoleFormat, ConsoleHandler

    handler = ConsoleHandler(sys.stderr)
    handler.setFormatter(ConsoleFormat())
    package.addHandler(handler)
    if package.getEffectiveLevel() > logging.INFO:
        package.setLevel(logging.INFO)
    return handler


def _on_fresh_line(console: logging.Handler, command, args: argparse.Namespace):  # -> what command returns
    """``command(args)``, after which an error message or the results start on a line of their own, not after a live bar."""
    try:
        return command(args)
    finally:
        end_line = getattr(console, "end_line", None)
        if end_line is not None:
            end_line()


def _raise_terminated(signum: int, frame: object) -> None:
    from scalable_assoc.errors import Terminated

    raise Terminated()


def _stop_cleanly_on_sigterm():  # -> the previous handler, None when not in the main thread
    """SIGTERM (systemd, SLURM, Kubernetes stopping the job) ends a command the way Ctrl-C does: status written, lock released, exit 143."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
