"""Start-up: what each dependency's import costs, the engine's import, the local cluster's start, and command to first task.

Every case runs in a fresh process (imports are cached within a process), so
each number is what a new ``scalable-assoc`` command pays:

1. ``import X`` for numpy, pandas, scipy.special, scipy.stats, dask, distributed,
   zarr, pyarrow and matplotlib: the module's own cumulative time from
   ``python -X importtime`` (``import_us`` of its top line), beside the wall and
   CPU time of the whole process (interpreter start included; ``python -c pass``
   is the baseline case);
2. ``import scalable_assoc.engine.run`` (what ``scalable-assoc run`` imports),
   beside the same plus ``scipy.stats`` (what the engine imported before its
   p-values moved to ``scipy.special``);
3. the local cluster alone (``engine.cluster.local_cluster``: scheduler, two
   worker processes, TLS credentials) started and closed in a fresh process;
   the temporary TLS credentials alone (RSA, as ``Security.temporary``, against
   the EC key ``engine.cluster.temporary_security`` makes);
4. a cold ``scalable-assoc run`` of the reference study (simulated into a
   scratch folder; 7,656 participants, ``--quick``: 1,500): its manifest's
   ``first_task`` (seconds from the process start to the first task result,
   see ``engine/run.py``), ``first_part`` (to the first layers handed to the
   cluster: prepared, and the cluster up), the first task's round trip after
   that hand-over (``first_task`` minus ``first_part``), and the phases;
5. the same study's run from its stores, converted beforehand (the three tables
   added to one store by ``scalable-assoc ingest --layer``, as the suite's
   reference group does; a new output folder each time): its ``first_task`` is
   start-up with no table to convert (imports, plan, metadata and designs, the
   cluster's start, the first task).

Aims: command to first task <= 1.5 s, of the cold run (``first_task``) and of
the run from converted stores. The cold run's first task minus its ``prepare``
phase is no aim any more: since layers go to the cluster as their tables are
converted, the first task comes back within the prepare phase (0.06-0.3 s
"left"), so the difference measured nothing of start-up.

    python benchmarks/bench_startup.py --json OUT.json [--quick] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The dependencies whose import is timed, each in a fresh process.
DEPENDENCIES = ("numpy", "pandas", "scipy.special", "scipy.stats", "dask", "distributed", "zarr", "pyarrow", "matplotlib")
#: Aim 7 of the speed issue.
FIRST_TASK_TARGET = 1.5

CLUSTER_START = """
import sys, time
from scalable_assoc.engine.cluster import _close_quietly, local_cluster
started = time.perf_counter()
cluster, client = local_cluster(2)
up = time.perf_counter() - started
_close_quietly(client, cluster)
print(f"{up:.6f}")
"""

#: Command to first task with no study: the process's start to one trivial task's result (as the manifest's
#: first_task, see scalable_assoc.progress.process_age_seconds), on distributed's own LocalCluster of two worker
#: processes (the floor of any run on new worker processes), on the same in threads of this process, on ours after
#: importing what ``scalable-assoc run`` imports (its fork server started only then, so the server's imports follow
#: this process's), and on ours in the order ``run`` follows (the server first, its imports beside this process's).
FIRST_TASK = """
import os, time
{setup}
client.submit(sum, [1, 2]).result()
after_name = open("/proc/self/stat", "rb").read().rsplit(b")", 1)[1].split()
print(f"{{time.clock_gettime(time.CLOCK_BOOTTIME) - int(after_name[19]) / os.sysconf('SC_CLK_TCK'):.6f}}")
client.close()
"""
FIRST_TASK_SETUPS = {
    "distributed, 2 worker processes": (
        "from distributed import Client, LocalCluster\n"
        "client = Client(LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None))"
    ),
    "distributed, 2 threads in the process": (
        "from distributed import Client, LocalCluster\n"
        "client = Client(LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None))"
    ),
    "ours: the run's imports + local_cluster(2)": (
        # As the CLI's run imports them: NumPy's submodules SciPy loads and nothing uses are deferred first.
        "from scalable_assoc.engine.deferred_imports import defer_unused_imports\ndefer_unused_imports()\n"
        "import scalable_assoc.engine.run\nfrom scalable_assoc.engine.cluster import local_cluster\ncluster, client = local_cluster(2)"
    ),
    # The order `scalable-assoc run` follows: the workers' fork server first (its imports overlap this process's), then
    # the run's imports, then the cluster forked from that server (in a run, started once the metadata is checked).
    "ours, in run's order: fork server, the run's imports, local_cluster(2)": (
        "from scalable_assoc.engine.worker_server import WORKER_PRELOAD, start_worker_server\n"
        "start_worker_server(WORKER_PRELOAD)\n"
        "from scalable_assoc.engine.deferred_imports import defer_unused_imports\ndefer_unused_imports()\n"
        "import scalable_assoc.engine.run\nfrom scalable_assoc.engine.cluster import local_cluster\n"
        "cluster, client = local_cluster(2, preload=WORKER_PRELOAD)"
    ),
}

CREDENTIALS = """
import time
from distributed.security import Security
from scalable_assoc.engine.cluster import temporary_security
def best(make, n=5):
    times = []
    for _ in range(n):
        started = time.perf_counter(); make(); times.append(time.perf_counter() - started)
    return min(times)
print(f"{best(Security.temporary):.6f} {best(temporary_security):.6f}")
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _reap_orphans() -> None:
    """Make this process the reaper of its orphaned descendants (Linux), so that their CPU counts in its children's times.

    The local cluster's workers are forked from multiprocessing's fork server, which
    outlives the command by a moment and is not waited for by it: without this, the
    workers' and the server's CPU would be missing from the command's.
    """
    import ctypes

    try:
        ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):  # not Linux: the fork server's CPU is not counted
        pass


def run_process(command: list[str], cwd: Path | None = None) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run ``command`` to its end: the result, wall seconds, CPU seconds (user + sys of it and all its descendants), peak RSS (MB).

    The peak RSS is that of the largest single process (``ru_maxrss`` of the children), not their sum.
    """
    before = os.times()
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), cwd=cwd)
    wall = time.perf_counter() - started
    while True:  # descendants left behind (the fork server) count once they have ended
        try:
            os.wait()
        except ChildProcessError:
            break
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    import resource

    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result, wall, cpu, peak


def import_case(module: str, repeats: int, what: str, statement: str | None = None) -> dict:
    """The best of ``repeats`` fresh processes importing ``module`` (or running ``statement``)."""
    code = statement or f"import {module}"
    best: dict | None = None
    for _ in range(repeats):
        result, wall, cpu, peak = run_process([sys.executable, "-X", "importtime", "-c", code])
        import_us = _import_us(result.stderr, module)
        case = {
            "case": f"import {module}" if statement is None else module,
            "what": what,
            "wall_s": wall,
            "cpu_s": cpu,
            "peak_rss_mb": peak,
        }
        case["import_s"] = import_us / 1e6 if import_us is not None else None
        if best is None or wall < best["wall_s"]:
            best = case
    assert best is not None
    return best


def _import_us(importtime: str, module: str) -> int | None:
    """Cumulative microseconds of ``module``'s line in ``-X importtime`` output; for a statement, the sum of the top-level lines."""
    total, found = 0, False
    for line in importtime.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match is None:
            continue
        cumulative, indent, name = int(match[1]), len(match[2]), match[3]
        if name == module:
            return cumulative
        if indent == 1:  # a top-level import of a statement
            total, found = total + cumulative, True
    return total if found else None


def cluster_case(repeats: int) -> dict:
    best: dict | None = None
    for _ in range(repeats):
        result, wall, cpu, peak = run_process([sys.executable, "-c", CLUSTER_START])
        up = float(result.stdout.split()[-1])
        case = {
            "case": "cluster start",
            "what": "local_cluster(2) in a fresh process: scheduler, 2 worker processes, TLS; seconds until the client is ready",
            "wall_s": up,
            "cpu_s": cpu,
            "peak_rss_mb": peak,
            "process_wall_s": wall,
        }
        if best is None or up < best["wall_s"]:
            best = case
    assert best is not None
    return best


def first_task_cases(repeats: int, labels: Sequence[str] = tuple(FIRST_TASK_SETUPS)) -> list[dict]:
    """Command to first task without a study (see ``FIRST_TASK``), for the setups ``labels`` of :data:`FIRST_TASK_SETUPS`
    (default: every one): best of ``repeats`` fresh processes each."""
    cases = []
    for label in labels:
        setup = FIRST_TASK_SETUPS[label]
        best: dict | None = None
        for _ in range(repeats):
            result, wall, cpu, peak = run_process([sys.executable, "-c", FIRST_TASK.format(setup=setup)])
            case = {
                "case": f"first task, no study: {label}",
                "what": "a fresh process: start, imports, cluster, one trivial task; wall_s from the process's start to its result",
                "wall_s": float(result.stdout.split()[-1]),
                "cpu_s": cpu,
                "peak_rss_mb": peak,
                "process_wall_s": wall,
            }
            if best is None or case["wall_s"] < best["wall_s"]:
                best = case
        assert best is not None
        cases.append(best)
    return cases


def credentials_cases() -> list[dict]:
    result, _, _, _ = run_process([sys.executable, "-c", CREDENTIALS])
    rsa, ec = (float(v) for v in result.stdout.split())
    what = "temporary TLS key and self-signed certificate, best of 5"
    return [
        {
            "case": "TLS credentials RSA-2048 (distributed Security.temporary)",
            "what": what,
            "wall_s": rsa,
            "cpu_s": rsa,
            "peak_rss_mb": None,
        },
        {"case": "TLS credentials EC P-256 (temporary_security)", "what": what, "wall_s": ec, "cpu_s": ec, "peak_rss_mb": None},
    ]


def reference_study(data: Path, participants: int) -> Path:
    """The simulated reference study's plan in ``data`` (simulated there when missing)."""
    plan = data / "plan.yaml"
    if not plan.is_file():
        simulate = [sys.executable, "-m", "scalable_assoc.cli", "simulate", "--out", str(data), "--participants", str(participants)]
        run_process(simulate)
    return plan


def stores_plan(data: Path) -> Path:
    """A plan of the study in ``data`` naming its tables converted beforehand: one store, a layer each (``ingest --layer``).

    Both are written into ``data`` (converted again each time): a plan may name files in its own folder only.
    """
    from suite_whole_run import ingested_plan  # the suite's own conversion of the reference study (the scripts beside this one)

    def ingest(command: list[str]) -> dict:
        _, wall, cpu, peak = run_process(command)
        return {"wall_s": wall, "cpu_s": cpu, "peak_rss_mb": peak, "peak_rss_main_mb": peak}

    cli = [sys.executable, "-m", "scalable_assoc.cli"]
    plan, _ = ingested_plan(data, data / "converted.zarr", data / "plan-stores.yaml", lambda command: ingest([*cli, *command[1:]]))
    return plan


def first_task_runs(plan: Path, scratch: Path, repeats: int, name: str, what: str) -> dict:
    """``repeats`` runs of ``plan`` (``scalable-assoc run --no-report``, a new output folder each): the one with the best first_task.

    ``wall_s`` is its manifest's ``first_task``; ``first_part_s`` its ``first_part`` (the first layers handed to the
    cluster), ``handover_to_first_task_s`` the difference (the first task's round trip once handed over).
    """
    best: dict | None = None
    for attempt in range(repeats):
        out = scratch / f"run-{attempt}"
        shutil.rmtree(out, ignore_errors=True)
        _, wall, cpu, peak = run_process([sys.executable, "-m", "scalable_assoc.cli", "run", str(plan), "--out", str(out), "--no-report"])
        timings = json.loads((out / "manifest.json").read_text())["timings_seconds"]
        shutil.rmtree(out, ignore_errors=True)
        first, part = timings.get("first_task"), timings.get("first_part")
        case = {
            "case": name,
            "what": what,
            "wall_s": first,
            "cpu_s": cpu,
            "peak_rss_mb": peak,
            "process_wall_s": wall,
            "first_part_s": part,
            "handover_to_first_task_s": round(first - part, 3) if first is not None and part is not None else None,
            "timings_seconds": timings,
        }
        if best is None or (case["wall_s"] or 1e9) < (best["wall_s"] or 1e9):
            best = case
    assert best is not None
    return best


def cold_run_case(data: Path, scratch: Path, participants: int, repeats: int) -> dict:
    """A cold ``scalable-assoc run --no-report`` of the reference study (a new output folder each time); the best first_task."""
    return first_task_runs(
        reference_study(data, participants),
        scratch,
        repeats,
        "cold run: command to first task",
        f"scalable-assoc run of the reference study ({participants} participants), new output folder; "
        "wall_s is the manifest's first_task (process start to first task result)",
    )


def stores_run_case(data: Path, scratch: Path, participants: int, repeats: int) -> dict:
    """The reference study's run from its stores, converted beforehand: start-up with no table to convert; the best first_task."""
    plan = stores_plan(data)
    return first_task_runs(
        plan,
        scratch,
        repeats,
        "run from converted stores: command to first task",
        f"scalable-assoc run of the reference study ({participants} participants) from one store holding its three tables "
        "(ingest --layer, beforehand), new output folder; wall_s is the manifest's first_task",
    )


def first_task_aim(key: str, aim: str, case: dict, floor: dict) -> dict:
    """An aim of command to first task <= FIRST_TASK_TARGET, on ``case``'s best first_task."""
    first = case["wall_s"]
    return {
        "key": key,
        "aim": aim,
        "value": float(first) if first is not None else float("nan"),
        "target": FIRST_TASK_TARGET,
        "unit": "s",
        "met": first is not None and first <= FIRST_TASK_TARGET,
        "floor": floor,
    }


def first_task_floor(no_study: list[dict]) -> dict:
    """The floor of command to first task on new worker processes: distributed's own cluster, no study, no imports of ours."""
    by_label = {case["case"].removeprefix("first task, no study: "): case["wall_s"] for case in no_study}
    bare = by_label["distributed, 2 worker processes"]
    others = "; ".join(f"{label}: {wall:.2f} s" for label, wall in by_label.items() if label != "distributed, 2 worker processes")
    return {
        "value": round(bare, 2),
        "what": f"a process starting distributed's own LocalCluster of 2 worker processes and running one trivial task: "
        f"{bare:.2f} s (no study, each a fresh process: {others})",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, required=True, help="write the cases and aims here")
    parser.add_argument("--quick", action="store_true", help="one repeat each and a small study (checks that every case runs)")
    parser.add_argument("--data-dir", type=Path, help="the simulated study (kept and reused); default: a temporary folder")
    args = parser.parse_args()
    _reap_orphans()
    repeats = 1 if args.quick else 3
    participants = 1500 if args.quick else 7656
    cases = [import_case("pass", repeats, "interpreter start alone (baseline of every process below)", statement="pass")]
    for module in DEPENDENCIES:
        cases.append(import_case(module, repeats, f"import {module} in a fresh process; import_s: its -X importtime cumulative time"))
    cases.append(import_case("scalable_assoc.engine.run", repeats, "what 'scalable-assoc run' imports (ours)"))
    cases.append(
        import_case(
            "scipy.stats + scalable_assoc.engine.run",
            repeats,
            "before: the engine with scipy.stats imported, as its p-values needed it (the alternative)",
            statement="import scipy.stats, scalable_assoc.engine.run",
        )
    )
    cases.append(import_case("scalable_assoc.cli", repeats, "the CLI module alone (imports the engine lazily)"))
    cases.append(cluster_case(repeats))
    no_study = first_task_cases(repeats)
    cases.extend(no_study)
    cases.extend(credentials_cases())
    with tempfile.TemporaryDirectory(prefix="bench-startup-", dir=args.data_dir.parent if args.data_dir else None) as tmp:
        data = args.data_dir or Path(tmp) / "study"
        cold = cold_run_case(data, Path(tmp), participants, repeats)
        stores = stores_run_case(data, Path(tmp), participants, repeats)
    cases.extend([cold, stores])
    floor = first_task_floor(no_study)
    aims = [
        first_task_aim(
            "startup_first_task",
            f"command to first task <= {FIRST_TASK_TARGET} s (cold 'scalable-assoc run' of the reference study)",
            cold,
            floor,
        ),
        first_task_aim(
            "startup_stores_first_task",
            f"command to first task <= {FIRST_TASK_TARGET} s, the reference study's run from its converted stores "
            "(start-up, no conversion)",
            stores,
            floor,
        ),
    ]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cases": cases, "aims": aims}, indent=2))
    for case in cases:
        extra = f"  import {case['import_s']:.3f}s" if case.get("import_s") is not None else ""
        wall = f"{case['wall_s']:.3f}s" if case["wall_s"] is not None else "-"
        print(f"{case['case']:60s} wall {wall:>9s}  cpu {case['cpu_s']:.3f}s{extra}")
    for aim in aims:
        print(f"aim {aim['key']}: {aim['value']:.2f} {aim['unit']} (target {aim['target']}) {'met' if aim['met'] else 'missed'}")


if __name__ == "__main__":
    main()
