"""The ``scalable-assoc`` command: parses arguments and calls the library, nothing more.

Bad input ends with a one-paragraph message on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from scalable_assoc import __version__
from scalable_assoc.errors import UserInputError


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scalable-assoc",
        description="Microbiome feature x phenotype association studies, batched and run on Dask.",
    )
    parser.add_argument("--version", action="version", version=f"scalable-assoc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="write a Lifelines-shaped cohort with known truth and a ready plan.yaml")
    simulate.add_argument("--out", required=True, type=Path, help="folder to write metadata.tsv, species.tsv, ..., plan.yaml")
    simulate.add_argument("--participants", type=_positive_int, default=7656)
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--species", type=_positive_int, default=400, help="number of species")
    simulate.add_argument("--pathways", type=_positive_int, default=650, help="number of pathways")

    run = commands.add_parser("run", help="run every analysis of a plan")
    run.add_argument("plan", type=Path, help="plan file (YAML)")
    run.add_argument("--out", type=Path, help="output folder (default: <plan folder>/results)")
    run.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: start a local cluster)")
    run.add_argument("--workers", type=_positive_int, help="worker processes of the local cluster (default: one per core)")
    run.add_argument("--chunk-features", type=_positive_int, help="features per store chunk when converting tables (default: ~32 MiB chunks)")
    run.add_argument("--intersect-samples", action="store_true", help="analyse only samples present in both metadata and abundance tables (warns)")
    run.add_argument("--top", type=int, default=5, help="top findings to print per layer")

    ingest = commands.add_parser("ingest", help="convert an abundance table into a feature-chunked Zarr store")
    ingest.add_argument("table", type=Path, help="MetaPhlAn merged table, wide TSV/CSV (samples as rows) or Parquet")
    ingest.add_argument("--out", required=True, type=Path, help="store to write (a folder ending in .zarr)")
    ingest.add_argument("--format", default="auto", choices=["auto", "metaphlan", "wide", "parquet"])
    ingest.add_argument("--rank", default="species", help="MetaPhlAn rank to keep (species, genus, ...)")
    ingest.add_argument("--chunk-features", type=_positive_int)
    return parser


def _simulate(args: argparse.Namespace) -> None:
    from scalable_assoc.simulate import simulate_study

    study = simulate_study(args.out, participants=args.participants, seed=args.seed, n_species=args.species, n_pathways=args.pathways)
    print(f"simulated {study.n_participants} participants ({study.n_controls} controls) in {study.out_dir}")
    print("  features: " + ", ".join(f"{layer} {n}" for layer, n in study.n_features.items()))
    print(f"  planted effects: {study.n_planted} (truth.tsv)")
    print(f"  plan: {study.plan_path}")
    print(f"next: scalable-assoc run {study.plan_path}")


def _run(args: argparse.Namespace) -> None:
    from scalable_assoc.engine.run import run_study
    from scalable_assoc.plan.schema import load_plan
    from scalable_assoc.report.console import run_report

    plan = load_plan(args.plan)
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
    )
    print(run_report(summary.out_dir, summary.results, summary.survival, list(plan.adjustments), plan.fdr.alpha, args.top))
    print(f"done in {summary.seconds:.1f}s ({summary.chunks_total} chunks, {summary.chunks_reused} reused)")


def _ingest(args: argparse.Namespace) -> None:
    from scalable_assoc.io.ingest import ingest_table
    from scalable_assoc.plan.schema import RANK_PREFIXES

    if args.rank not in RANK_PREFIXES:
        raise UserInputError(f"--rank {args.rank!r} is not a MetaPhlAn rank; use one of {', '.join(RANK_PREFIXES)}")
    store = ingest_table(args.table, args.out, args.format, args.rank, args.chunk_features)
    print(f"wrote {store.path}: {store.n_samples} samples x {store.n_features} features, {store.chunk_features} features per chunk")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scalable-assoc`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    handlers = {"simulate": _simulate, "run": _run, "ingest": _ingest}
    try:
        handlers[args.command](args)
    except UserInputError as error:
        # One paragraph whatever the message carries (library errors quoted inside may span lines).
        message = " ".join(str(error).split())
        print(f"scalable-assoc {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scalable-assoc {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
