"""Check that a code change leaves results bit-identical and chunk ids unchanged.

Runs the simulated reference study (``simulate`` then ``run``, default sizes) with
the code of a baseline git revision and with the working tree, then compares:

- every output table (``results.parquet``, ``features.parquet``, ``joint_results.parquet``):
  identical Arrow tables, floats bit for bit;
- the chunk files' names (the chunk ids), so that a run made before the change
  resumes after it;
- the simulated input files, byte for byte (the simulator's output).

Usage (from the repository root)::

    python benchmarks/check_identical.py --baseline <rev> [--participants N] [--keep DIR]

Exit status 0 when identical, 1 with the differences listed otherwise. The
baseline is checked out with ``git worktree`` into a temporary folder and run
with ``PYTHONPATH`` pointing at it; both runs use this interpreter and one
local cluster of 2 workers each.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
TABLES = ("results.parquet", "features.parquet", "joint_results.parquet")


def _run(code: Path, folder: Path, participants: int) -> None:
    env = dict(os.environ, PYTHONPATH=str(code))
    cli = [sys.executable, "-m", "scalable_assoc.cli"]
    subprocess.run(
        [*cli, "simulate", "--out", str(folder / "study"), "--participants", str(participants), "--seed", "0"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*cli, "run", str(folder / "study" / "plan.yaml"), "--out", str(folder / "results"), "--workers", "2", "--top", "0"],
        env=env,
        check=True,
        capture_output=True,
    )


def _differences(baseline: Path, current: Path) -> list[str]:
    found = []
    for name in TABLES:
        old, new = baseline / "results" / name, current / "results" / name
        if old.is_file() != new.is_file():
            found.append(f"{name}: present in only one run")
        elif old.is_file() and not pq.read_table(old).equals(pq.read_table(new)):
            found.append(f"{name}: tables differ")
    chunks = [{p.name for p in (run / "results" / ".scalable_assoc" / "chunks").glob("*.parquet")} for run in (baseline, current)]
    if chunks[0] != chunks[1]:
        found.append(f"chunk ids differ: {len(chunks[0] - chunks[1])} only in the baseline, {len(chunks[1] - chunks[0])} only now")
    inputs = sorted(p.name for p in (baseline / "study").iterdir() if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(baseline / "study", current / "study", inputs, shallow=False)
    found += [f"simulated {name} differs" for name in mismatch + errors]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", required=True, help="git revision to compare the working tree with")
    parser.add_argument("--participants", type=int, default=7656)
    parser.add_argument("--keep", type=Path, help="keep both runs in this folder")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        where = args.keep or Path(scratch)
        checkout = Path(scratch) / "baseline-code"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(checkout), args.baseline], check=True, capture_output=True
        )
        try:
            _run(checkout, where / "baseline", args.participants)
            _run(ROOT, where / "current", args.participants)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(checkout)], check=False, capture_output=True)
        found = _differences(where / "baseline", where / "current")
    for line in found:
        print(line)
    print("identical" if not found else f"{len(found)} difference(s)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
