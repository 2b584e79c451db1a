"""Time the whole command on the reference study with the code of two git revisions, back to back.

For restructuring: did a change slow the run down? Each round runs ``simulate``
once per revision's code (outside the timer) and then ``scalable-assoc run`` into a
new output folder (cold: tables converted, cluster started) with each revision,
alternating so drift in the machine's load falls on both. It prints the wall
times and their medians, and, with ``--models``, runs ``bench_models.py --sample
10`` (the kernels against statsmodels) with each revision's code.

Usage (from the repository root)::

    python benchmarks/compare_revisions.py --baseline <rev> [--rounds 3] [--participants 7656] [--models]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _cli(code: Path, *args: str) -> float:
    env = dict(os.environ, PYTHONPATH=str(code))
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scalable_assoc.cli", *args], env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--participants", type=int, default=7656)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", action="store_true", help="also run bench_models.py --sample 10 with each revision")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        baseline = folder / "baseline-code"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(baseline), args.baseline], check=True, capture_output=True
        )
        codes = {"baseline": baseline, "current": ROOT}
        times: dict[str, list[float]] = {name: [] for name in codes}
        try:
            study = folder / "study"
            _cli(ROOT, "simulate", "--out", str(study), "--participants", str(args.participants), "--seed", "0")
            for round_ in range(args.rounds):
                for name, code in codes.items() if round_ % 2 == 0 else reversed(codes.items()):
                    seconds = _cli(
                        code,
                        "run",
                        str(study / "plan.yaml"),
                        "--out",
                        str(folder / f"{name}-{round_}"),
                        "--workers",
                        str(args.workers),
                        "--top",
                        "0",
                    )
                    times[name].append(seconds)
                    print(f"round {round_ + 1} {name}: {seconds:.2f} s", flush=True)
            if args.models:
                for name, code in codes.items():
                    print(f"--- bench_models.py --sample 10 with the {name} code", flush=True)
                    env = dict(os.environ, PYTHONPATH=str(code))
                    subprocess.run([sys.executable, str(code / "benchmarks" / "bench_models.py"), "--sample", "10"], env=env, check=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(baseline)], check=False, capture_output=True)
    for name, values in times.items():
        print(f"{name}: median {statistics.median(values):.2f} s over {len(values)} runs ({', '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
