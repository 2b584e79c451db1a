"""Per-sample sums stored at ingest: what they cost when a store is written, and the filter pass they save in a run.

    python benchmarks/bench_ingest_sums.py --json OUT.json [--quick] [--dir DIR] [--features N ...]

Side by side, each in its own subprocess (wall, CPU = user + sys, peak RSS):

* ingest of the simulated reference study's tables (species, pathways, gbm; 7,656
  participants) and of simulated stores (``scale_store.write_simulated_store``;
  20,000 and 100,000 features, ``--quick`` 2,000) with the per-sample sums and the
  sparse copy of rare features, and without them (the writer of
  ``scalable_assoc.io.store`` with its sums writer replaced by a no-op, and its one
  pass over each block by the per-feature summary and sample totals alone): time,
  store size, blocks summed again for the final half-minimum pseudocount;
* a run (CLR, half-minimum pseudocount, 4 analyses per feature; min_prevalence 0.15,
  which removes the simulated features of prevalence 0.08-0.15, about 8%, so the
  stored sums are composed with the removed features' sparse cells)
  on the simulated store with the sums and on the same values without them (the
  filter phase then sums in a pass over every block): manifest ``timings_seconds``
  ``filter`` and ``fit``, and the largest relative difference of beta, se and p
  between the two runs' results.

Aim: with the sums, the filter phase is at most 10% of the fit phase.

What that phase holds, with the sums: the client's own reads and arithmetic, no
task and no wait for the cluster: the stored prevalence counts and sums, the
removed features' cells in the sparse copy and their sums. The copy is stored in
order of increasing prevalence (``scalable_assoc.io.rare_cells``), so a prevalence
filter's removed features are its leading chunks: at 20,000 features 1.4 of the
4.9 million cells, read in 6 chunks of 2^18 cells (7-11 ms) and summed (11-15 ms).
In feature order (stores written before) their cells lay in every chunk, and the
whole copy (42 MB of zstd) was decompressed: 115-155 ms of a 0.18-0.26 s phase.
The figure follows the removed features (``features_removed``, and none at
100,000 features in the chunks group, whose min_prevalence 0.05 removes nothing)
and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from suite import SCALE_PLAN  # the scaling plan of the suite (the scripts beside this one)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: min_prevalence 0.15 removes the simulated features of prevalence 0.08-0.15 (about 8%), so the stored sums
#: are composed with the removed features' sparse cells.
MIN_PREVALENCE = 0.15

#: Run in a subprocess: write one store (a table or a simulated store), with or without the sums.
WRITE = """
import json, sys, time
from pathlib import Path
sys.path.insert(0, {here!r})
import scalable_assoc.io.store as store_module

class NoSums:
    def __init__(self, *args): pass
    def pseudocount_ahead(self): return None
    def add_block(self, *args): pass
    def finish(self): return {{}}, {{}}  # the attributes and the arrays to write: none

def summary_only(block, pseudocount, workspace):
    # what the store needs without the sums: the per-feature summary and each sample's total
    from scalable_assoc.stats.sample_sums import BlockStatistics, summary_and_totals
    summary, total = summary_and_totals(block)
    return BlockStatistics(summary, total, None, None, None, None, None, None)

kind, source, destination, with_sums, features = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1", int(sys.argv[5])
if not with_sums:
    store_module._SampleSumsWriter = NoSums
    store_module.block_statistics = summary_only
started = time.perf_counter()
if kind == "table":
    from scalable_assoc import ingest_table
    store = ingest_table(source, destination)
else:
    import pandas as pd
    from scale_store import write_simulated_store
    ids = pd.read_csv(source, sep="\\t", usecols=["sample_id"])["sample_id"].astype(str).tolist()
    store = write_simulated_store(destination, ids, features)
wall = time.perf_counter() - started
import zarr
again = dict(zarr.open_group(store.path, mode="r").attrs).get(store_module.SAMPLE_SUMS_KEY, {{}}).get("blocks_summed_again")
print(json.dumps({{"wall_s": wall, "features": store.n_features, "samples": store.n_samples, "chunk_features": store.chunk_features,
                  "blocks": len(store.block_bounds()), "blocks_summed_again": again}}))
"""


def folder_mb(path: Path) -> float:
    """Bytes on disk of a folder's files, in MB."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def child(args: list[str]) -> tuple[dict, float, float, float]:
    """Run a Python subprocess: its JSON (last stdout line), wall and CPU seconds (user + sys), peak RSS of its process tree (MB).

    The peak is sampled every 50 ms (``ru_maxrss`` of a child keeps its parent's high-water mark across exec).
    """
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    peak = 0.0
    handle = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [handle, *handle.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.05)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode:
        raise RuntimeError(f"{args[:3]} failed:\n{stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, cpu, peak


def _env() -> dict:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = f"{ROOT}:{HERE}" + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def write_case(kind: str, source: Path, destination: Path, with_sums: bool, features: int = 0) -> dict:
    """One store written in a subprocess, with or without the sums: the case's row."""
    shutil.rmtree(destination, ignore_errors=True)
    code = WRITE.format(here=str(HERE))
    result, _, cpu, peak = child(["-c", code, kind, str(source), str(destination), "1" if with_sums else "0", str(features)])
    return {
        **result,
        "wall_s": round(result["wall_s"], 2),  # the write alone, without the subprocess's start-up
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak, 1),
        "store_mb": round(folder_mb(destination), 1),
    }


def run_case(plan: Path, out: Path) -> dict:
    """A CLI run (no report) in a subprocess: wall, CPU, peak RSS of its process tree and the manifest's phase timings."""
    shutil.rmtree(out, ignore_errors=True)
    _, wall, cpu, peak = child(["-m", "scalable_assoc.cli", "run", str(plan), "--out", str(out), "--no-report"])
    manifest = json.loads((out / "manifest.json").read_text())
    timings = manifest["timings_seconds"]
    layers = manifest["layers"].values()
    return {
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak, 1),
        "filter_s": timings.get("filter"),
        "fit_s": timings.get("fit"),
        # the filter phase with stored sums reads the sparse cells of these features
        "features_removed": sum(layer["features_total"] - layer["features_kept"] for layer in layers),
        "timings_seconds": timings,
    }


def largest_differences(a: Path, b: Path) -> dict:
    """Largest relative difference of beta, se and p between two runs' results (rows matched by their keys)."""
    import pandas as pd

    keys = ["layer", "feature", "exposure", "adjustment", "model"]
    merged = pd.read_parquet(a / "results.parquet").merge(pd.read_parquet(b / "results.parquet"), on=keys, suffixes=("_a", "_b"))
    out: dict[str, float | int | bool] = {"rows": len(merged)}
    for column in ("beta", "se", "p"):
        x, y = merged[f"{column}_a"].to_numpy(float), merged[f"{column}_b"].to_numpy(float)
        both = np.isfinite(x) & np.isfinite(y)
        out[f"max_rel_diff_{column}"] = float(np.max(np.abs(x[both] - y[both]) / np.maximum(np.abs(x[both]), 1e-300), initial=0.0))
        out[f"max_abs_diff_{column}"] = float(np.max(np.abs(x[both] - y[both]), initial=0.0))
        out[f"same_missing_{column}"] = bool((np.isfinite(x) == np.isfinite(y)).all())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed at the end)")
    parser.add_argument("--features", type=int, nargs="+", default=None, help="simulated store sizes (default 20,000 and 100,000)")
    parser.add_argument("--skip-tables", action="store_true", help="leave out the reference tables' ingest cases")
    args = parser.parse_args()
    work = (args.dir or Path(tempfile.mkdtemp(prefix="bench-ingest-sums-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sizes = args.features or ([2_000] if args.quick else [20_000, 100_000])
    cases: list[dict] = []
    aims: list[dict] = []
    try:
        from scalable_assoc.simulate import simulate_study

        study = work / "study"
        if not (study / "plan.yaml").is_file():
            simulate_study(study)
        metadata = study / "metadata.tsv"
        for table in () if args.skip_tables else ("species", "pathways", "gbm"):
            for with_sums in (False, True):
                row = write_case("table", study / f"{table}.tsv", work / f"{table}-{int(with_sums)}.zarr", with_sums)
                what = f"ingest {table}.tsv ({row['features']} x {row['samples']}) {'with' if with_sums else 'without'} sums"
                cases.append({"case": f"ingest_{table}_{'sums' if with_sums else 'plain'}", "what": what, **row})
                print(f"{what}: {row['wall_s']} s, {row['store_mb']} MB, summed again {row['blocks_summed_again']}", flush=True)
        for features in sizes:
            stores = {}
            for with_sums in (False, True):
                stores[with_sums] = work / f"sim-{features}-{int(with_sums)}.zarr"
                row = write_case("simulated", metadata, stores[with_sums], with_sums, features)
                what = f"write simulated store {features} x {row['samples']} {'with' if with_sums else 'without'} sums"
                cases.append({"case": f"ingest_sim{features}_{'sums' if with_sums else 'plain'}", "what": what, **row})
                print(f"{what}: {row['wall_s']} s, {row['store_mb']} MB, summed again {row['blocks_summed_again']}", flush=True)
            runs = {}
            for with_sums in (False, True):
                label = f"{features}-{int(with_sums)}"
                plan = work / f"plan-{label}.yaml"
                plan.write_text(
                    SCALE_PLAN.format(
                        label=f"ingest-sums-{label}", metadata=metadata, store=stores[with_sums], min_prevalence=MIN_PREVALENCE
                    )
                )
                row = run_case(plan, work / f"out-{label}")
                runs[with_sums] = work / f"out-{label}"
                what = f"run on {features} features {'with stored sums' if with_sums else 'with the sums pass (store without sums)'}"
                cases.append({"case": f"run_sim{features}_{'sums' if with_sums else 'pass'}", "what": what, **row})
                print(f"{what}: filter {row['filter_s']} s, fit {row['fit_s']} s, wall {row['wall_s']} s", flush=True)
            cases[-1].update(largest_differences(runs[False], runs[True]))
            with_sums_run = cases[-1]
            ratio = with_sums_run["filter_s"] / with_sums_run["fit_s"]
            aims.append(
                {
                    "key": f"filter_vs_fit_{features}",
                    "aim": "per-sample sums need no second read of the store (filter phase <= 10% of fit phase)",
                    "value": round(ratio, 3),
                    "target": 0.10,
                    "unit": "x",
                    "met": bool(ratio <= 0.10),
                }
            )
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    args.json.write_text(json.dumps({"benchmark": "ingest_sums", "quick": args.quick, "cases": cases, "aims": aims}, indent=2))


if __name__ == "__main__":
    main()
