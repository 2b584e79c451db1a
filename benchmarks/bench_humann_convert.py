"""Does a large HUMAnN merged table convert into a store with flat memory?

    python benchmarks/bench_humann_convert.py --gigabytes 1 10 [--samples 3000] [--dir /work/bench-10g] [--stratified]

For each size, writes a HUMAnN-like gene-families table (``# Gene Family`` header,
``S00001_Abundance-RPKs`` ... columns, an ``UNMAPPED`` row, then per gene family a
community row ``UniRef90_A0000001`` followed by 0-3 per-species rows
``UniRef90_A0000001|g__Genus.s__Species`` or ``|unclassified``; about 90% of the cells
``0``, the rest floats as HUMAnN writes them) of about that many gigabytes, streamed
to disk (never whole in memory: each line is a join of pre-formatted 100-column
segments chosen at random, so writing runs at disk speed). Then converts it with
``scalable_assoc.ingest_table`` in a subprocess (community rows; with ``--stratified``
also ``stratified=True``), sampling the subprocess's RSS every 0.2 s, and prints a
Markdown table: file size, rows, samples, features kept, wall time, MB/s, peak RSS,
RSS at 10% / 50% / 90% of the wall time, store size.

Files go to ``--dir`` (default: a temporary folder) and are removed at the end unless
``--keep``; a table already there with the same size and seed is reused.
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
import psutil

SEGMENT = 100  # columns per pre-formatted segment
SEGMENTS = 512  # distinct segments
SPECIES = [f"g__Genus{g}.s__Genus{g}_species{s}" for g in range(40) for s in range(3)] + ["unclassified"]

CONVERT = """
import json, sys, time
from pathlib import Path
from scalable_assoc import ingest_table
start = time.perf_counter()
store = ingest_table(Path(sys.argv[1]), Path(sys.argv[2]), fmt="humann", stratified=sys.argv[3] == "1")
print(json.dumps({"seconds": time.perf_counter() - start, "features": store.n_features, "samples": store.n_samples}))
"""


def segments(rng: np.random.Generator, zero_fraction: float, width: int = SEGMENT) -> list[str]:
    """``SEGMENTS`` strings of ``width`` tab-led cells each: ``0`` or a float as HUMAnN prints it."""
    out = []
    for _ in range(SEGMENTS):
        present = rng.random(width) >= zero_fraction
        values = np.exp(rng.normal(2.0, 2.0, width))
        out.append("".join(f"\t{v:.6g}" if p else "\t0" for v, p in zip(values, present, strict=True)))
    return out


def write_table(path: Path, gigabytes: float, n_samples: int, seed: int = 0, zero_fraction: float = 0.9) -> dict:
    """Write the table (streamed, in ~8 MB writes); return its size, rows and community rows."""
    target = int(gigabytes * 1e9)
    rng = np.random.default_rng(seed)
    pool = segments(rng, zero_fraction)
    per_row = -(-n_samples // SEGMENT)
    tails = segments(rng, zero_fraction, n_samples - (per_row - 1) * SEGMENT)  # a row's last, possibly shorter, segment
    header = "# Gene Family\t" + "\t".join(f"S{i + 1:05d}_Abundance-RPKs" for i in range(n_samples)) + "\n"
    rows = community = written = 0
    start = time.perf_counter()

    def body(picks: np.ndarray) -> str:
        return "".join([pool[k] for k in picks[:-1]]) + tails[picks[-1]] + "\n"

    with open(path, "w", buffering=1 << 23) as handle:
        written += handle.write(header)
        written += handle.write("UNMAPPED" + body(rng.integers(0, SEGMENTS, per_row)))
        rows += 1
        family = 0
        while written < target:
            picks = rng.integers(0, SEGMENTS, (64, per_row))
            n_strata = rng.integers(0, 4, 16)
            p = 0
            lines = []
            for k in n_strata:
                family += 1
                name = f"UniRef90_A{family:07d}"
                lines.append(name + body(picks[p]))
                p += 1
                for species in rng.choice(len(SPECIES), k, replace=False):
                    lines.append(f"{name}|{SPECIES[species]}" + body(picks[p]))
                    p += 1
                community += 1
                rows += 1 + int(k)
            written += handle.write("".join(lines))
    seconds = time.perf_counter() - start
    return {"bytes": path.stat().st_size, "rows": rows, "community_rows": community, "write_seconds": seconds}


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def convert(table: Path, store: Path, stratified: bool, interval: float = 0.2) -> dict:
    """Convert in a subprocess; its wall time and RSS samples (every ``interval`` s, the process and its children)."""
    if store.exists():
        shutil.rmtree(store)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", CONVERT, str(table), str(store), "1" if stratified else "0"], stdout=subprocess.PIPE, env=env, text=True
    )
    watched = psutil.Process(process.pid)
    samples: list[tuple[float, int]] = []
    while process.poll() is None:
        try:
            rss = watched.memory_info().rss + sum(c.memory_info().rss for c in watched.children(recursive=True))
            samples.append((time.perf_counter() - start, rss))
        except psutil.Error:
            pass
        time.sleep(interval)
    wall = time.perf_counter() - start
    output = process.stdout.read() if process.stdout else ""
    if process.returncode:
        raise SystemExit(f"conversion failed ({process.returncode})")
    inner = json.loads(output.strip().splitlines()[-1])

    def at(fraction: float) -> int:
        moment = fraction * wall
        return min(samples, key=lambda s: abs(s[0] - moment))[1] if samples else 0

    return {
        "wall_seconds": wall,
        "inner_seconds": inner["seconds"],
        "features": inner["features"],
        "samples": inner["samples"],
        "peak_rss": max((r for _, r in samples), default=0),
        "rss_10": at(0.1),
        "rss_50": at(0.5),
        "rss_90": at(0.9),
        "store_bytes": folder_size(store),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, nargs="+", default=[10.0])
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--stratified", action="store_true", help="also convert the per-species rows (stratified=True)")
    parser.add_argument("--keep", action="store_true", help="keep the tables and stores")
    parser.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-humann-"))
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for gigabytes in args.gigabytes:
            table = folder / f"genefamilies-{gigabytes:g}g-{args.samples}.tsv"
            info_path = table.with_suffix(".json")
            if table.exists() and info_path.exists():
                info = json.loads(info_path.read_text())
            else:
                info = write_table(table, gigabytes, args.samples)
                info_path.write_text(json.dumps(info))
                mb_s = info["bytes"] / 1e6 / info["write_seconds"]
                size = f"{info['bytes'] / 1e9:.2f} GB, {info['rows']:,} rows"
                print(f"wrote {table} ({size}) in {info['write_seconds']:.0f} s ({mb_s:.0f} MB/s)")
            for stratified in (False, True) if args.stratified else (False,):
                store = folder / f"{table.stem}-{'strat' if stratified else 'comm'}.zarr"
                result = {"gigabytes": gigabytes, "stratified": stratified, **info, **convert(table, store, stratified)}
                results.append(result)
                print(json.dumps(result), flush=True)
                if not args.keep:
                    shutil.rmtree(store)
            if not args.keep:
                table.unlink()
                info_path.unlink()
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    mb = 1 / 2**20
    print("\n| file | rows | samples | rows kept | conversion | MB/s | peak RSS | RSS at 10% / 50% / 90% | store |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        kept = f"{r['features']:,} ({'per-species' if r['stratified'] else 'community'})"
        print(
            f"| {r['bytes'] / 1e9:.2f} GB | {r['rows']:,} | {r['samples']:,} | {kept} | {r['wall_seconds']:.0f} s | "
            f"{r['bytes'] / 1e6 / r['wall_seconds']:.0f} | {r['peak_rss'] * mb:,.0f} MiB | "
            f"{r['rss_10'] * mb:,.0f} / {r['rss_50'] * mb:,.0f} / {r['rss_90'] * mb:,.0f} MiB | {r['store_bytes'] / 1e6:,.0f} MB |"
        )


if __name__ == "__main__":
    main()
