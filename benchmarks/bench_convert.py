"""Converting abundance tables (TSV -> Zarr store): pyarrow's streaming reader beside the previous pandas reader.

    python benchmarks/bench_convert.py --json OUT.json [--quick] [--data-dir DIR]

Simulates studies with ``scalable-assoc simulate`` (full: the reference study, 7,656
participants, and a 50,000-participant one; ``--quick``: 1,000 participants) and converts
each table (species.tsv: a MetaPhlAn merged table; pathways.tsv and gbm.tsv: wide tables;
only species and pathways at 50,000) with ``scalable_assoc.ingest_table`` (what ``run``
does on first use of a table layer, and ``scalable-assoc ingest``), each conversion in
its own process, twice:

- ours: the readers as they are (pyarrow's CSV reader, :mod:`scalable_assoc.io.text_values`);
- previous: the same readers with ``text_values.FAST_PATH = False``, so pandas reads
  every table as before (the fallback the readers keep for whatever pyarrow declines).

Per conversion: wall and CPU seconds of ``ingest_table`` (the file's checksum, the
first passes, parsing, writing the store), the process's peak RSS (``VmHWM``: its
whole life, imports included; not ``ru_maxrss``, which keeps the parent's peak across
exec) and its RSS before converting. The two stores are compared
bit for bit (``identical``). Aims: the reference study's three tables converted in at
most 1 s (ours, wall, summed); at 50,000 participants the converting process's peak at
most 4 store chunks + 200 MB (a store chunk: features per chunk x participants x 8 bytes).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CONVERT = """
import json, resource, sys, time
from pathlib import Path
import psutil
import scalable_assoc.io.text_values as text_values
from scalable_assoc.io.ingest import ingest_table
text_values.FAST_PATH = sys.argv[3] == "ours"
before = psutil.Process().memory_info().rss
wall, cpu = time.perf_counter(), time.process_time()
store = ingest_table(Path(sys.argv[1]), Path(sys.argv[2]))
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
# This process's own high-water mark: ru_maxrss keeps the parent's across exec (the benchmark script's, which
# has read whole stores to compare them by then: every later conversion showed that peak instead of its own).
peak_kb = next((int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")), None)
peak_kb = peak_kb if peak_kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak_kb / 1024,
                  "rss_before_mb": before / 2**20, "samples": store.n_samples, "features": store.n_features,
                  "chunk_features": store.chunk_features}))
"""


def simulate(folder: Path, participants: int) -> Path:
    """The study's folder, simulated once (reused when its plan is there)."""
    if not (folder / "plan.yaml").is_file():
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "scalable_assoc.cli", "simulate", "--out", str(folder), "--participants", str(participants)]
        subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL)
    return folder


def convert(table: Path, store: Path, reader: str) -> dict:
    """One conversion in a fresh process; its measurements."""
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", CONVERT, str(table), str(store), reader]
    done = subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def identical(first: Path, second: Path, chunk_features: int) -> bool:
    """Whether two stores hold the same abundance bits, read a chunk at a time."""
    import zarr

    a, b = zarr.open_array(first / "abundance", mode="r"), zarr.open_array(second / "abundance", mode="r")
    if a.shape != b.shape:
        return False
    for start in range(0, a.shape[1], chunk_features):
        x, y = np.asarray(a[:, start : start + chunk_features]), np.asarray(b[:, start : start + chunk_features])
        if not np.array_equal(x.view(np.uint64), y.view(np.uint64)):
            return False
    return True


def measure(study: Path, tables: list[str], work: Path, participants: int) -> list[dict]:
    """Both readers on each table (ours first, then previous), with the stores compared."""
    cases = []
    for name in tables:
        table = study / name
        results = {reader: convert(table, work / f"{name}-{reader}.zarr", reader) for reader in ("ours", "previous")}
        same = identical(work / f"{name}-ours.zarr", work / f"{name}-previous.zarr", results["ours"]["chunk_features"])
        for reader, result in results.items():
            chunk_bytes = 8 * result["chunk_features"] * result["samples"]
            cases.append(
                {
                    "case": f"convert {name} ({participants:,} participants, {reader})",
                    "what": f"ingest_table of {name} ({table.stat().st_size / 1e6:.0f} MB) into a store, "
                    + ("pyarrow's streaming reader" if reader == "ours" else "pandas reader (previous; FAST_PATH off)"),
                    "participants": participants,
                    "table": name,
                    "reader": reader,
                    "table_mb": table.stat().st_size / 1e6,
                    "chunk_bytes": chunk_bytes,
                    "identical_to_previous": same,
                    **result,
                }
            )
            print(
                f"{name:14s} {participants:>6} {reader:8s} wall {result['wall_s']:6.2f} s  cpu {result['cpu_s']:6.2f} s  "
                f"peak {result['peak_rss_mb']:6.0f} MB (before {result['rss_before_mb']:4.0f})  identical {same}",
                flush=True,
            )
        shutil.rmtree(work / f"{name}-ours.zarr", ignore_errors=True)
        shutil.rmtree(work / f"{name}-previous.zarr", ignore_errors=True)
    return cases


def aims(cases: list[dict], reference: int, large: int | None) -> list[dict]:
    """The two aims, from the cases measured (the reference-size one on the smaller study with --quick)."""
    ours = [c for c in cases if c["reader"] == "ours"]
    total = sum(c["wall_s"] for c in ours if c["participants"] == reference)
    out = [
        {
            "key": "convert_reference_tables_s",
            "aim": f"reference tables ({reference:,} participants: species, pathways, gbm) converted in <= 1 s",
            "value": total,
            "target": 1.0,
            "unit": "s",
            "met": total <= 1.0,
        }
    ]
    big = [c for c in ours if c["participants"] == large]
    if big:
        peak = max(c["peak_rss_mb"] for c in big)
        chunk = max(c["chunk_bytes"] for c in big)
        target = (4 * chunk + 200e6) / 2**20
        out.append(
            {
                "key": "convert_50k_peak_rss_mb",
                "aim": f"client peak while converting {large:,}-participant tables <= 4 store chunks + 200 MB (a chunk: {chunk:,} bytes)",
                "value": peak,
                "target": target,
                "unit": "MB",
                "met": peak <= target,
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="1,000 participants only")
    parser.add_argument("--data-dir", type=Path, help="keep the simulated studies here (reused by the next run)")
    args = parser.parse_args()
    folder = args.data_dir or Path(tempfile.mkdtemp(prefix="bench_convert."))
    folder.mkdir(parents=True, exist_ok=True)
    reference, large = (1000, None) if args.quick else (7656, 50_000)
    start = time.perf_counter()
    try:
        work = folder / "stores"
        work.mkdir(exist_ok=True)
        cases = measure(simulate(folder / f"study-{reference}", reference), ["species.tsv", "pathways.tsv", "gbm.tsv"], work, reference)
        if large:
            cases += measure(simulate(folder / f"study-{large}", large), ["species.tsv", "pathways.tsv"], work, large)
        found = aims(cases, reference, large)
        result = {"cases": cases, "aims": found, "seconds": time.perf_counter() - start}
    finally:
        if args.data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    args.json.write_text(json.dumps(result, indent=2))
    for aim in found:
        print(f"{'met' if aim['met'] else 'MISSED'}: {aim['aim']}: {aim['value']:.2f} {aim['unit']} (target {aim['target']:.2f})")


if __name__ == "__main__":
    main()
