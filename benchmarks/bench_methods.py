"""Runtime of the methods benchmark's default grid (``scalable-assoc benchmark-methods``) on 2 workers.

Full: the shipped grid (8 scenarios x 20 replicates of 1,500 participants x 200
features, each replicate a run of 4 layers x [lm, lm_nonzero, prevalence] (+ lmm) x 2
adjustment sets, and limma-voom/-trend when R has limma) through the CLI as a
subprocess (wall from outside, CPU and peak RSS of the process tree). Aim: the default
grid within 15 minutes on 2 cores.

--quick: 2 replicates per scenario, and side by side the same through the library with
one replicate's run at a time (``concurrent_runs=1``) against the default two at once, the
two tables compared (they must be identical).

    python benchmarks/bench_methods.py --json OUT.json [--quick] [--keep DIR]

``--keep DIR`` writes the grid's outputs to DIR (kept) instead of a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd
from suite import measure  # the script beside this one

AIM_KEY = "methods_default_grid"
AIM_TEXT = "default grid <= 15 min on 2 cores"
TARGET_S = 900.0

_LIBRARY = """
import sys
from scalable_assoc.engine.methods_benchmark import benchmark_methods
if __name__ == "__main__":
    benchmark_methods(sys.argv[1], replicates=int(sys.argv[2]), workers=2, concurrent_runs=int(sys.argv[3]))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=Path)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--keep", type=Path, help="folder for the grid's outputs (kept)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="bench_methods_"))
    try:
        out = args.keep or scratch / "grid"
        log = scratch / "log.txt"
        command = [sys.executable, "-m", "scalable_assoc.cli", "benchmark-methods", "--out", str(out), "--workers", "2", "--force"]
        if args.quick:
            command += ["--replicates", "2"]
        cases = []
        grid = measure(command, log)
        summary = pd.read_csv(out / "methods_summary.tsv", sep="\t")
        manifest = json.loads((out / "manifest.json").read_text())
        replicates = sum(manifest["replicates"].values())
        cases.append(
            {
                "case": "default_grid" if not args.quick else "default_grid_2_replicates",
                "what": f"scalable-assoc benchmark-methods --workers 2: {len(manifest['scenarios'])} scenarios, {replicates} replicates, "
                f"{summary['method'].nunique()} methods (limma: {manifest['limma']})",
                **grid,
                "replicates": replicates,
                "seconds_per_replicate": round(grid["wall_s"] / replicates, 3),
            }
        )
        if args.quick:
            script = scratch / "library.py"
            script.write_text(_LIBRARY)
            tables = {}
            for concurrent in (1, 2):
                folder = scratch / f"library-{concurrent}"
                measured = measure([sys.executable, str(script), str(folder), "2", str(concurrent)], log)
                tables[concurrent] = pd.read_parquet(folder / "methods_benchmark.parquet")
                what = f"library, 2 replicates, {concurrent} run(s) at once"
                cases.append({"case": f"concurrent_runs_{concurrent}", "what": what, **measured})
            pd.testing.assert_frame_equal(tables[1], tables[2])
            cases[-1]["identical_to_concurrent_runs_1"] = True
        wall = cases[0]["wall_s"]
        aims = [
            {
                "key": AIM_KEY,
                "aim": AIM_TEXT,
                "value": float(wall),
                "target": TARGET_S,
                "unit": "s",
                "met": bool(wall <= TARGET_S),
                **({"note": "quick: 2 replicates per scenario, not the full grid"} if args.quick else {}),
            }
        ]
        args.json.write_text(json.dumps({"cases": cases, "aims": aims}, indent=2))
        print(json.dumps({"cases": cases, "aims": aims}, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
