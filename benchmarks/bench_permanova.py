"""PERMANOVA (Aitchison, 999 permutations) at biobank sizes, beside vegan's ``adonis2`` on the same data.

    python benchmarks/bench_permanova.py --sizes 7656 50000 [--features 400] [--vegan-max 7656] [--dir DIR]

For each size, simulates ``n`` participants x ``--features`` compositional abundances (log-normal
with about 60% zeros, a binary exposure shifting 20 features, age and sex as covariates), writes
them as CSV, and times in a subprocess each (peak RSS of its process tree sampled every 0.2 s):

- ours: ``scalable_assoc.stats.permanova.permanova_euclidean`` on the CLR coordinates (half the
  smallest non-zero value as pseudocount), the marginal exposure term given age and sex, 999
  permutations, the features in chunks as a run's tasks take them; memory O(n x features);
- vegan (``Rscript``, r-cran-vegan): ``adonis2(dist(clr) ~ age + sex + exposure, by = "margin",
  permutations = 999)``, for sizes up to ``--vegan-max`` (beyond it vegan needs the n x n
  distances: 8 n^2 bytes for its Gower matrix plus 4 n^2 for ``dist``, 30 GB at 50,000), with
  ``--vegan-permutations`` permutations (default 999; fewer where 999 would take hours: its time is
  linear in them, and F and R2 do not depend on them).

Prints a Markdown table (size, tool, seconds, peak RSS, F, R2, p) and checks that F and R2 agree
to 1e-8 where both ran.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

OURS = """
import json, sys, time
import numpy as np
start = time.perf_counter()
from scalable_assoc.stats.permanova import permanova_euclidean
data = np.loadtxt(sys.argv[1], delimiter=",", skiprows=1)
covariates, exposure, x = data[:, 1:3], data[:, 3], data[:, 4:]
pseudo = x[x > 0].min() / 2
logs = np.log(x + pseudo)
clr = logs - logs.mean(axis=1, keepdims=True)
read = time.perf_counter() - start
result = permanova_euclidean(clr, covariates, exposure, permutations=999, seed=1, feature_block=100)
print(json.dumps({"seconds": time.perf_counter() - start, "read_seconds": read, "f": result.f, "r2": result.r2, "p": result.p}))
"""

VEGAN = """
suppressMessages(library(vegan))
args <- commandArgs(TRUE)
start <- Sys.time()
data <- read.csv(args[1])
x <- as.matrix(data[, -(1:4)])
logs <- log(x + min(x[x > 0]) / 2)
clr <- logs - rowMeans(logs)
read <- as.numeric(Sys.time() - start, units = "secs")
set.seed(1)
fit <- adonis2(dist(clr) ~ age + sex + exposure, data = data, by = "margin", permutations = as.integer(args[2]))
cat(sprintf('{"seconds": %.3f, "read_seconds": %.3f, "f": %.15g, "r2": %.15g, "p": %.6g}\\n',
            as.numeric(Sys.time() - start, units = "secs"), read, fit["exposure", "F"], fit["exposure", "R2"], fit["exposure", "Pr(>F)"]))
"""


def simulate(path: Path, n: int, features: int, seed: int = 0) -> None:
    """Write ``id, age, sex, exposure, f0 .. f{features-1}`` for ``n`` participants (CSV)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = rng.integers(0, 2, n).astype(float)
    exposure = (rng.random(n) < 0.2).astype(float)
    means = rng.normal(0, 1.5, features)
    log_values = means + rng.normal(0, 1, (n, features)) + 0.005 * (age[:, None] - 50)
    log_values[:, :20] += 0.4 * exposure[:, None]
    values = np.exp(log_values) * (rng.random((n, features)) > 0.6)
    table = np.column_stack([np.arange(n), age, sex, exposure, np.round(values, 6)])
    header = ",".join(["id", "age", "sex", "exposure", *(f"f{i}" for i in range(features))])
    np.savetxt(path, table, delimiter=",", header=header, comments="", fmt="%.6g")


def measured(command: list[str]) -> dict:
    """Run ``command``; its JSON line, plus the peak RSS (MiB) of its process tree."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    parent, peak = psutil.Process(process.pid), 0
    while process.poll() is None:
        try:
            tree = [parent, *parent.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.2)
    out, _ = process.communicate()
    if process.returncode:
        raise SystemExit(f"{command[0]} failed ({process.returncode})")
    return {**json.loads(out.strip().splitlines()[-1]), "peak_mib": peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[7656, 50000])
    parser.add_argument("--features", type=int, default=400)
    parser.add_argument("--vegan-max", type=int, default=7656)
    parser.add_argument(
        "--vegan-permutations", type=int, default=999, help="fewer for vegan at large n: its time is linear in them (F, R2 unchanged)"
    )
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    folder = args.dir or Path(tempfile.mkdtemp(prefix="bench-permanova-"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for n in args.sizes:
        data = folder / f"permanova-{n}x{args.features}.csv"
        if not data.exists():
            simulate(data, n, args.features)
        ours = measured([sys.executable, "-c", OURS, str(data)])
        rows.append((n, "scalable_assoc (kernel, one process)", ours))
        if n <= args.vegan_max:
            script = folder / "vegan.R"
            script.write_text(VEGAN)
            vegan = measured(["Rscript", str(script), str(data), str(args.vegan_permutations)])
            rows.append((n, f"vegan adonis2 ({args.vegan_permutations} permutations)", vegan))
            for statistic in ("f", "r2"):
                assert abs(ours[statistic] - vegan[statistic]) <= 1e-8 * abs(vegan[statistic]), (statistic, ours, vegan)
    print("| participants | tool | seconds (read) | peak RSS MiB | F | R2 | p |\n|---|---|---|---|---|---|---|")
    for n, tool, found in rows:
        print(
            f"| {n:,} | {tool} | {found['seconds']:.1f} ({found['read_seconds']:.1f}) | {found['peak_mib']:.0f} | "
            f"{found['f']:.6g} | {found['r2']:.4g} | {found['p']:.3g} |"
        )
    (folder / "results.json").write_text(json.dumps([{"n": n, "tool": t, **f} for n, t, f in rows], indent=1))


if __name__ == "__main__":
    main()
