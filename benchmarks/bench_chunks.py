"""Per-chunk costs of a run's two passes over a store, against their floors, and the whole run with 1 and 2 workers.

A run reads every chunk of a layer twice: the filter pass (task ``sum_block``:
read, CLR log, per-sample sums) and the fit pass (``model_block``: read and
transform; ``fit_chunk``: the OLS kernel and the chunk's Parquet file). On a
simulated store (scale_store.py; 7,656 participants, the suite's scaling plan:
2 exposures x 2 adjustment sets, lm on CLR) this script times, per chunk, in one
process with one BLAS thread (as a Dask worker runs them):

| stage | ours | before (the code this replaced, kept here) | floor |
|---|---|---|---|
| read | ``read_block`` | | decompression of the chunk's bytes alone (the store's codec) |
| transform | ``apply_transform`` (CLR) | ``log(x + c) - mean`` with two temporaries | ``np.log`` in place alone |
| sums task | ``sum_block`` | boolean column gather + masked sums | decompression + in-place log + row sums |
| kernel | ``prepare_block`` + ``fit_design_batch`` | previous ``prepare_block`` | one product ``[1 Q b]' Y`` of the 4 designs |
| fit task | ``model_block`` + ``fit_chunk`` | | decompression + log + the product |

"before" and "ours" are compared on every chunk timed (largest relative difference; the sums
differ in the last bits because the old column gather left the block column-major, which
summed each row in another order). Then the
CLI (``python -m scalable_assoc.cli run --workers 1|2 --no-report``, as a
subprocess: wall from outside, CPU and peak RSS of the process tree, phases from
its manifest.json). Aims: 100,000 features x 4 analyses <= 20 s with 2 workers;
1 -> 2 workers >= 1.8x.

    python benchmarks/bench_chunks.py --json OUT.json [--quick] [--data-dir DIR] [--chunks 8] [--no-cli]

Full: 100,000 features (a 5.8 GB store, ~2.5 min to write the first time);
--quick: 5,000. Data go to ``--data-dir`` (kept and reused) or a temporary folder.
"""

from __future__ import annotations

import os

for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import json
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from bench_startup import first_task_cases  # the scripts beside this one
from numcodecs import Blosc, Zstd
from scale_store import write_simulated_store
from suite import SCALE_PLAN, measure, simulate_metadata

from scalable_assoc.engine.chunks import chunk_tasks
from scalable_assoc.engine.prepare import prepare_study, write_design
from scalable_assoc.engine.tasks import factorise, fit_chunk, model_block, sum_block
from scalable_assoc.io.atomic import write_parquet, write_tsv_table
from scalable_assoc.io.store import read_block
from scalable_assoc.models.ols import PreparedBlock, fit_design_batch, prepare_block
from scalable_assoc.plan.schema import load_plan
from scalable_assoc.stats.transforms import apply_transform, select_features

PARTICIPANTS = 7656
#: The setup of bench_startup's first task on distributed's own cluster: the start no run on new worker processes avoids.
BARE_CLUSTER = "distributed, 2 worker processes"
SIZES = {"full": 100_000, "quick": 5_000}


# ---------------------------------------------------------------------------------------
# "before": the implementations this benchmark's changes replaced, for side-by-side times
# ---------------------------------------------------------------------------------------
def before_sample_summaries(block: np.ndarray, pseudocount: float) -> tuple[np.ndarray, np.ndarray]:
    observed = ~np.isnan(block)
    values = np.log(np.where(observed, block, 1.0) + pseudocount)
    return np.where(observed, values, 0.0).sum(axis=1), observed.sum(axis=1)


def before_sum_block(path: Path, start: int, stop: int, positions: np.ndarray, kept: np.ndarray, pseudocount: float):
    raw = read_block(path, start, stop, None)[positions][:, kept]
    return before_sample_summaries(raw, pseudocount)


def before_clr(block: np.ndarray, pseudocount: float, total: np.ndarray, count: np.ndarray) -> np.ndarray:
    return np.log(block + pseudocount) - (total / count)[:, None]


def before_prepare_block(block: np.ndarray) -> PreparedBlock:
    missing = np.isnan(block)
    values = np.where(missing, 0.0, block)
    counts = block.shape[0] - missing.sum(axis=0)
    means = np.divide(values.sum(axis=0), counts, out=np.zeros(block.shape[1]), where=counts > 0)
    values -= means
    values[missing] = 0.0
    return PreparedBlock(values, missing)


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------
def timed(function: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """Best wall and best CPU (user + system of this process, threads included) of ``repeats`` calls, and the last result."""
    walls, cpus = [], []
    result = None
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        result = function()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), result


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Setup:
    """The store, plan, filter, per-sample sums and factorised designs of the scaling case."""

    def __init__(self, data: Path, features: int, n_chunks: int) -> None:
        metadata = simulate_metadata(data / f"meta-{PARTICIPANTS}", PARTICIPANTS)
        ids = pd.read_csv(metadata, sep="\t", usecols=["sample_id"])["sample_id"].astype(str).tolist()
        self.store_path = data / f"store-{PARTICIPANTS}x{features}.zarr"
        started = time.perf_counter()
        store = write_simulated_store(self.store_path, ids, features)
        self.store_seconds = time.perf_counter() - started
        self.plan = data / f"plan-{PARTICIPANTS}x{features}.yaml"
        self.plan.write_text(
            SCALE_PLAN.format(label=f"{PARTICIPANTS}x{features}", metadata=metadata, store=self.store_path, min_prevalence=0.05)
        )
        work = data / f"chunks-work-{features}"
        shutil.rmtree(work, ignore_errors=True)
        self.study = prepare_study(load_plan(self.plan), work / "stores")
        self.layer = self.study.layers[0]
        self.bounds = store.block_bounds()
        self.positions = self.layer.sample_positions
        preprocess = self.layer.spec.preprocess
        summaries = [store.stored_feature_summary(start, stop) for start, stop in self.bounds]
        self.kept, self.pseudocount = select_features(
            [s for s in summaries if s is not None], preprocess.min_prevalence, preprocess.pseudocount
        )
        # Per-sample sums over the timed chunks only, scaled to the layer: the values are what matter for the times.
        parts = [
            sum_block(self.store_path, *self.bounds[i], self.positions, self.kept[i], "clr", self.pseudocount) for i in range(n_chunks)
        ]
        scale = len(self.bounds) / n_chunks
        self.totals = (np.sum([p[0] for p in parts], axis=0) * scale, np.sum([p[1] for p in parts], axis=0) * scale)
        self.tasks = [t for t in chunk_tasks(self.study, 8) if t.block_index < n_chunks]
        self.designs = {key: factorise(write_design(work / "designs", d)) for key, d in self.layer.designs.items()}
        self.chunks_dir = work / "chunks"
        self.chunks_dir.mkdir(parents=True, exist_ok=True)
        self.kept_ids = [
            tuple(np.asarray(self.layer.store.feature_ids[start:stop])[mask])
            for (start, stop), mask in zip(self.bounds, self.kept, strict=True)
        ]

    def chunk_bytes(self, index: int) -> bytes:
        """The stored bytes of chunk ``index``: the compressed chunk then 4 bytes of crc32c."""
        return (self.store_path / "abundance" / "c" / "0" / str(index)).read_bytes()

    def fit_inputs(self, index: int):
        """Designs, rows, exposures and binary flags of the chunk's one task (4 analyses, one per design)."""
        task = next(t for t in self.tasks if t.block_index == index)
        keys = list(dict.fromkeys(a.design_key for a in task.analyses))
        groups = [[a for a in task.analyses if a.design_key == key] for key in keys]
        return (
            task,
            [self.designs[k] for k in keys],
            [np.stack([a.exposure for a in g]) for g in groups],
            [np.array([a.binary for a in g]) for g in groups],
        )


def chunk_codec(store_path: Path) -> Blosc | Zstd:
    """The compressor of the store's abundance chunks (from its metadata: stores written before Blosc hold zstd frames)."""
    codecs = json.loads((store_path / "abundance" / "zarr.json").read_text())["codecs"]
    return Blosc() if any(codec.get("name") == "blosc" for codec in codecs) else Zstd()


def time_chunk(
    setup: Setup, index: int, repeats: int, add: Callable[[str, float, float], None], compare: Callable[[str, np.ndarray, np.ndarray], None]
) -> None:
    """Time every stage on chunk ``index`` (``add(name, wall, cpu)``) and compare ours with before (``compare``)."""
    codec = chunk_codec(setup.store_path)
    start, stop = setup.bounds[index]
    kept, pc, positions = setup.kept[index], setup.pseudocount, setup.positions
    stored = setup.chunk_bytes(index)
    shape = (len(positions), stop - start)

    # read: ours vs decompression alone
    wall, cpu, raw = timed(lambda: read_block(setup.store_path, start, stop, positions), repeats)
    add("read", wall, cpu)
    wall, cpu, decoded = timed(lambda: codec.decode(stored[:-4]), repeats)
    add("floor: decompression", wall, cpu)
    assert np.array_equal(np.frombuffer(decoded, dtype="<f8").reshape(shape), raw, equal_nan=True)

    # transform (CLR), on the kept raw block
    block = np.compress(kept, raw, axis=1)
    wall, cpu, ours = timed(lambda: apply_transform(block, "clr", pc, *setup.totals), repeats)
    add("transform", wall, cpu)
    wall, cpu, before = timed(lambda: before_clr(block, pc, *setup.totals), repeats)
    add("transform (before)", wall, cpu)
    compare("transform", ours, before)
    shifted, scratch = block + pc, np.empty_like(block)
    wall, cpu, _ = timed(lambda: np.log(shifted, out=scratch), repeats)
    add("floor: np.log in place", wall, cpu)

    # sums task: ours vs before vs floor
    wall, cpu, ours_sums = timed(lambda: sum_block(setup.store_path, start, stop, positions, kept, "clr", pc), repeats)
    add("sums task", wall, cpu)
    wall, cpu, before_sums = timed(lambda: before_sum_block(setup.store_path, start, stop, positions, kept, pc), repeats)
    add("sums task (before)", wall, cpu)
    compare("sums", ours_sums[0], before_sums[0])
    compare("counts", ours_sums[1], before_sums[1])

    def floor_sums() -> np.ndarray:
        values = np.frombuffer(codec.decode(stored[:-4]), dtype="<f8").reshape(shape).copy()
        values += pc
        np.log(values, out=values)
        return values.sum(axis=1)

    wall, cpu, _ = timed(floor_sums, repeats)
    add("floor: decompress + log + sums", wall, cpu)

    # kernel: prepare + fit of the chunk's 4 designs; floor: their one product with the block
    task, designs, exposures, binary = setup.fit_inputs(index)

    def kernel(prepare: Callable[[np.ndarray], PreparedBlock]):
        prepared = prepare(ours)
        return fit_design_batch([d.design for d in designs], [d.rows for d in designs], exposures, binary, prepared)

    wall, cpu, fits = timed(lambda: kernel(prepare_block), repeats)
    add("kernel", wall, cpu)
    wall, cpu, fits_before = timed(lambda: kernel(before_prepare_block), repeats)
    add("kernel (before prepare_block)", wall, cpu)
    for name in ("beta", "se", "p"):
        compare(f"kernel {name}", np.stack([getattr(f, name) for f in fits]), np.stack([getattr(f, name) for f in fits_before]))
    widths = [1 + d.design.q.shape[1] + e.shape[0] for d, e in zip(designs, exposures, strict=True)]
    padded = np.zeros((ours.shape[0], sum(widths)))  # [1 Q b] of each design at its rows: the product's shape, not its values
    for d, first, width in zip(designs, np.cumsum([0, *widths[:-1]]), widths, strict=True):
        padded[d.rows, first : first + width] = 1.0
    wall, cpu, _ = timed(lambda: padded.T @ ours, repeats)
    add("floor: one X'Y", wall, cpu)

    wall, cpu, _ = timed(lambda: fit_task(setup, index, setup.chunks_dir), repeats)
    add("fit task", wall, cpu)


def fit_task(setup: Setup, index: int, chunks_dir: Path) -> dict:
    """The fit task of chunk ``index`` as a worker runs it: ``model_block`` then ``fit_chunk`` (writes its Parquet file)."""
    start, stop = setup.bounds[index]
    task, designs, _, _ = setup.fit_inputs(index)
    held = model_block(
        setup.store_path,
        start,
        stop,
        setup.positions,
        setup.kept[index],
        "transformed",
        "clr",
        setup.pseudocount,
        setup.totals,
        setup.layer.spec.presence_threshold,
    )
    output = chunks_dir / f"{task.chunk_id}.parquet"
    return fit_chunk(setup.layer.spec.name, held, setup.kept_ids[index], designs, task.analyses, output)


def memory_as_a_worker() -> None:
    """This process's memory settings as a local cluster's worker has them: glibc thresholds, NumPy on 4 KB pages.

    Without them the timed rounds allocate every block-sized array afresh (glibc's default returns them to the
    kernel) on huge pages, whose first touches cost seconds where the machine hands free memory back to its host:
    the one-process rounds then read up to 1.4x slower than each of two, a "scaling" above 2.
    """
    from numpy._core.multiarray import _set_madvise_hugepage

    from scalable_assoc.engine.cluster import WORKER_MALLOC
    from scalable_assoc.process_memory import set_heap_thresholds

    set_heap_thresholds(int(WORKER_MALLOC["MALLOC_MMAP_THRESHOLD_"]), int(WORKER_MALLOC["MALLOC_TRIM_THRESHOLD_"]))
    _set_madvise_hugepage(False)


def concurrent_fit_tasks(setup: Setup, n_chunks: int, processes: int, rounds: int) -> tuple[float, float]:
    """Wall and CPU seconds of ``processes`` forked processes, started together, each fitting every timed chunk ``rounds`` times.

    Each process does the same work whatever their number, so ``processes x`` the
    one-process seconds over these seconds is how the machine's throughput grows
    with processes for exactly the work of a fit phase (decompression, transform,
    products, Parquet), without Dask: the most two workers can gain over one.
    Each process first fits every chunk once untimed, as a worker that has run a
    while (its heap grown, its pages faulted in), then all start at once; each
    writes its chunk files into its own folder. Wall: the slowest process's own
    time; CPU: the processes' CPU over the timed rounds.
    """
    context = multiprocessing.get_context("fork")
    warmed = context.Barrier(processes + 1)
    results = context.SimpleQueue()

    def work(number: int) -> None:
        memory_as_a_worker()
        folder = setup.chunks_dir / f"concurrent-{processes}-{number}"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(n_chunks):
            fit_task(setup, index, folder)
        warmed.wait()
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(rounds):
            for index in range(n_chunks):
                fit_task(setup, index, folder)
        results.put((time.perf_counter() - wall, time.process_time() - cpu))

    children = [context.Process(target=work, args=(number,)) for number in range(processes)]
    for child in children:
        child.start()
    warmed.wait()
    timed = [results.get() for _ in children]
    for child in children:
        child.join()
    if any(child.exitcode != 0 for child in children):
        raise RuntimeError(f"a fit-task process failed (exit codes {[child.exitcode for child in children]})")
    return max(wall for wall, _ in timed), sum(cpu for _, cpu in timed)


def machine_scaling(setup: Setup, n_chunks: int, rounds: int = 3) -> dict:
    """The fit task's throughput with 2 processes over 1 (best of 2 each, interleaved 1, 2, 1, 2), processes set up as workers."""
    best: dict[int, tuple[float, float]] = {}
    for processes in (1, 2, 1, 2):
        measured = concurrent_fit_tasks(setup, n_chunks, processes, rounds)
        best[processes] = min(best.get(processes, measured), measured)
    scaling = 2 * best[1][0] / best[2][0]
    return {
        "case": "floor: fit tasks in 1 vs 2 processes",
        "what": f"the fit task of {n_chunks} chunks x {rounds} in one process, then in each of 2 processes at once (no Dask); "
        "scaling = 2 x one / two",
        "wall_s": round(best[2][0], 3),
        "cpu_s": round(best[2][1], 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "one_process_s": round(best[1][0], 3),
        "one_process_cpu_s": round(best[1][1], 3),
        # CPU per unit of work with both processes busy over that of one alone: above 1, each core computes slower
        # when the other computes too (shared caches and memory bandwidth, or the host), whatever the scheduling.
        "cpu_per_work_two_over_one": round(best[2][1] / 2 / best[1][1], 3),
        "two_processes_s": round(best[2][0], 3),
        "scaling": round(scaling, 3),
    }


def chunk_cases(setup: Setup, n_chunks: int, repeats: int) -> tuple[list[dict], dict]:
    """Per-chunk times of each stage (ours, before, floor), summed over ``n_chunks`` chunks and reported per chunk."""
    totals: dict[str, list[float]] = {}
    largest: dict[str, float] = {}  # largest relative difference, ours vs before

    def compare(name: str, ours: np.ndarray, before: np.ndarray) -> None:
        ours, before = np.asarray(ours, dtype=np.float64), np.asarray(before, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            relative = np.abs(ours - before) / np.maximum(np.abs(before), np.finfo(float).tiny)
        worst = float(np.nanmax(relative)) if relative.size else 0.0
        if not np.array_equal(np.isnan(ours), np.isnan(before)):
            worst = float("inf")
        largest[name] = max(largest.get(name, 0.0), worst)

    def add(name: str, wall: float, cpu: float) -> None:
        entry = totals.setdefault(name, [0.0, 0.0])
        entry[0] += wall
        entry[1] += cpu

    for index in range(n_chunks):
        time_chunk(setup, index, repeats, add, compare)

    floors = {
        "read": "floor: decompression",
        "transform": "floor: np.log in place",
        "sums task": "floor: decompress + log + sums",
        "kernel": "floor: one X'Y",
    }
    cases = []
    width = setup.bounds[0][1] - setup.bounds[0][0]
    for name, (wall, cpu) in totals.items():
        case = {
            "case": f"per chunk: {name}",
            "what": f"{name}, mean of {n_chunks} chunks, {PARTICIPANTS} x {width} float64, best of {repeats}, one process, 1 BLAS thread",
            "wall_s": round(wall / n_chunks, 5),
            "cpu_s": round(cpu / n_chunks, 5),
            "peak_rss_mb": round(peak_rss_mb(), 1),
        }
        if name in floors:
            floor_cpu = totals[floors[name]][1]
            case["x_floor_cpu"] = round(cpu / floor_cpu, 2) if floor_cpu > 0 else None
        if name.endswith("(before)") or "(before" in name:
            ours_cpu = totals[name.split(" (before")[0]][1]
            case["before_over_ours_cpu"] = round(cpu / ours_cpu, 2) if ours_cpu > 0 else None
        cases.append(case)
    per_chunk_cpu = {name: values[1] / n_chunks for name, values in totals.items()}
    fit_floor = per_chunk_cpu["floor: decompression"] + per_chunk_cpu["floor: np.log in place"] + per_chunk_cpu["floor: one X'Y"]
    extras = {
        "largest_relative_difference_to_before": largest,
        "chunks": len(setup.bounds),
        "pass_floor_cpu_s": {
            "sums pass (decompress + log + sums) x chunks": round(per_chunk_cpu["floor: decompress + log + sums"] * len(setup.bounds), 2),
            "fit pass (decompress + log + X'Y) x chunks": round(fit_floor * len(setup.bounds), 2),
        },
        "pass_ours_cpu_s": {
            "sums pass": round(per_chunk_cpu["sums task"] * len(setup.bounds), 2),
            "fit pass": round(per_chunk_cpu["fit task"] * len(setup.bounds), 2),
        },
    }
    return cases, extras


def read_into_page_cache(path: Path) -> dict:
    """Read every file of the store at ``path`` once; its size (MB) and the seconds it took.

    Whichever run comes first would otherwise read the store from disk and the
    next from the page cache: a 1-worker run on a store not read since it was
    written took 16.1 s, the same run again 13.3 s (4 GB store, 23 GB of memory).
    Earlier rounds' 1 -> 2 workers ratios (2.05x) compared a 1-worker run
    reading the disk with a 2-worker run reading memory. After this both read
    memory, as repeated runs on a biobank's store do (a store larger than the
    page cache would be read from disk by both, each run evicting the other's pages).
    """
    started = time.perf_counter()
    total = 0
    buffer = bytearray(1 << 22)
    for file in sorted(f for f in path.rglob("*") if f.is_file()):
        with file.open("rb", buffering=0) as handle:
            while read := handle.readinto(buffer):
                total += read
    return {"store_mb": round(total / 2**20, 1), "seconds": round(time.perf_counter() - started, 2)}


def outputs_floor(results: Path, scratch: Path, repeats: int = 3) -> dict:
    """The least writing a run's results takes: its results table as ``results.parquet`` and as the TSV, by the run's own
    writers (:mod:`scalable_assoc.io.atomic`: Arrow, each file renamed into place), at once on two threads (as the
    gather writes them), best of ``repeats`` (wall seconds).

    Not counted: ordering the rows, q-values, the by-q sort, the adjustment summary and the other files.
    """
    table = pq.read_table(results)
    best, best_cpu = float("inf"), float("inf")
    with ThreadPoolExecutor(max_workers=2) as pool:
        for _ in range(repeats):
            started, cpu = time.perf_counter(), time.process_time()
            parquet = pool.submit(write_parquet, scratch / "floor-results.parquet", table)
            tsv = pool.submit(write_tsv_table, scratch / "floor-results.tsv", table, table.to_pandas)
            parquet.result()
            tsv.result()
            best, best_cpu = min(best, time.perf_counter() - started), min(best_cpu, time.process_time() - cpu)
    for name in ("floor-results.parquet", "floor-results.tsv"):
        (scratch / name).unlink(missing_ok=True)
    return {
        "case": "floor: writing the results",
        "what": f"the run's results table ({table.num_rows:,} rows) written as Parquet and TSV by Arrow, two threads at once, "
        f"best of {repeats}",
        "wall_s": round(best, 3),
        "cpu_s": round(best_cpu, 3),
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def cli_run(setup: Setup, data: Path, workers: int, keep_results: Path | None = None) -> dict:
    """The whole CLI run with ``workers`` workers, measured from outside; phases from its manifest.

    ``keep_results``: where its ``results.parquet`` is copied before the output folder is removed.
    """
    out = data / f"out-chunks-w{workers}"
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "scalable_assoc.cli",
        "run",
        str(setup.plan),
        "--out",
        str(out),
        "--workers",
        str(workers),
        "--no-report",
    ]
    measured = measure(command, data / "bench_chunks.log")
    manifest = json.loads((out / "manifest.json").read_text())
    if keep_results is not None:
        shutil.copyfile(out / "results.parquet", keep_results)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "case": f"run, {workers} worker{'s' if workers > 1 else ''}",
        "what": f"cli run --workers {workers} --no-report: {setup.layer.store.n_features:,} features x 4 analyses",
        **measured,
        "phases_s": {k: round(v, 2) for k, v in manifest["timings_seconds"].items()},
    }


def bound_serial_s(one_worker: dict) -> float:
    """Seconds of a 1-worker run outside its fit phase (process start, prepare, cluster, filter, gather): not divided by workers."""
    return one_worker["wall_s"] - one_worker["phases_s"]["fit"]


def speedup_bound(one_worker: dict, scaling: float, serial_s: float | None = None) -> float:
    """The most a second worker can speed up the whole run: the 1-worker run's fit phase divided by the machine's scaling
    (at most 2), the rest (``serial_s``; default: the 1-worker run's own other phases) as it is."""
    fit = one_worker["phases_s"]["fit"]
    serial = bound_serial_s(one_worker) if serial_s is None else serial_s
    # Two processes cannot do more than twice the work of one: a higher reading means the one-process rounds were slowed
    # (first touches of memory, the host), so the bound uses at most 2.
    return (serial + fit) / (serial + fit / min(scaling, 2.0))


def fit_speedup(runs: dict[int, dict]) -> float:
    return runs[1]["phases_s"]["fit"] / runs[2]["phases_s"]["fit"]


def best_runs(setup: Setup, data: Path, rounds: int = 2) -> tuple[dict[int, dict], Path]:
    """The CLI with 1 and 2 workers, interleaved (1, 2, 1, 2 ...), the faster of ``rounds`` runs each; the 2-worker
    run's results kept (for :func:`outputs_floor`). Each case lists every run's wall seconds (``walls_s``)."""
    kept = data / "results-chunks-w2.parquet"
    walls: dict[int, list[float]] = {1: [], 2: []}
    best: dict[int, dict] = {}
    for _ in range(rounds):
        for workers in (1, 2):
            run = cli_run(setup, data, workers, keep_results=kept if workers == 2 else None)
            walls[workers].append(run["wall_s"])
            if workers not in best or run["wall_s"] < best[workers]["wall_s"]:
                best[workers] = run
    for workers, run in best.items():
        run["walls_s"] = walls[workers]
        run["what"] += f", faster of {rounds} (interleaved with the other)"
    return best, kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True, help="write the cases and aims here")
    parser.add_argument("--quick", action="store_true", help=f"{SIZES['quick']:,} features instead of {SIZES['full']:,}")
    parser.add_argument("--data-dir", type=Path, help="where the store and metadata are written and reused (default: a temporary folder)")
    parser.add_argument("--chunks", type=int, default=None, help="chunks timed per stage (default 8; 3 with --quick)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="per-chunk costs only")
    args = parser.parse_args()
    features = SIZES["quick" if args.quick else "full"]
    data = (args.data_dir or Path(tempfile.mkdtemp(prefix="bench-chunks-"))).resolve()
    data.mkdir(parents=True, exist_ok=True)
    n_chunks = args.chunks or (3 if args.quick else 8)
    setup = Setup(data, features, n_chunks)
    n_chunks = min(n_chunks, len(setup.bounds))
    cases, extras = chunk_cases(setup, n_chunks, args.repeats)
    scaling = machine_scaling(setup, n_chunks)
    cases.append(scaling)
    aims = []
    if not args.no_cli:
        cached = read_into_page_cache(setup.store_path)
        runs, kept = best_runs(setup, data)
        writing = outputs_floor(kept, data)
        kept.unlink(missing_ok=True)
        start = first_task_cases(3, [BARE_CLUSTER])[0]  # distributed's own cluster: no study, no imports of ours
        cases += [*runs.values(), writing, start]
        speedup = runs[1]["wall_s"] / runs[2]["wall_s"]
        ours = speedup_bound(runs[1], scaling["scaling"])
        serial_floor = start["wall_s"] + writing["wall_s"]
        floor = speedup_bound(runs[1], scaling["scaling"], serial_floor)
        label = f"{features:,} features"
        extras["page_cache"] = cached
        aims = [
            {
                "key": "chunks_run_2_workers",
                "aim": f"{label} x 4 analyses <= 20 s with 2 workers" + ("" if features == SIZES["full"] else " (quick: a smaller store)"),
                "value": round(runs[2]["wall_s"], 2),
                "target": 20.0,
                "unit": "s",
                "met": bool(runs[2]["wall_s"] <= 20.0),
            },
            {
                "key": "chunks_worker_speedup",
                "aim": "1 -> 2 workers >= 1.8x",
                "value": round(speedup, 2),
                "target": 1.8,
                "unit": "x",
                "met": bool(speedup >= 1.8),
                "floor": {
                    "value": round(floor, 2),
                    "serial_floor_s": round(serial_floor, 2),
                    "what": f"the 1-worker run's fit phase ({runs[1]['phases_s']['fit']:.1f} s) at the machine's 2-process scaling "
                    f"of the fit tasks ({scaling['scaling']:.2f}x, no Dask; at most 2), plus what no run avoids, not divided: a bare "
                    f"cluster's first task {start['wall_s']:.2f} s + writing the results {writing['wall_s']:.2f} s. With this run's "
                    f"own other phases ({bound_serial_s(runs[1]):.1f} s: start, prepare, gather) in their place: {ours:.2f}x. "
                    f"Fit phase measured {fit_speedup(runs):.2f}x. The store ({cached['store_mb']:,.0f} MB) was read into the page "
                    "cache first, so both runs read memory",
                },
            },
        ]
    report = {
        "benchmark": "bench_chunks",
        "features": features,
        "participants": PARTICIPANTS,
        "store_write_s": round(setup.store_seconds, 1),
        **extras,
        "cases": cases,
        "aims": aims,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    for case in cases:
        print(
            f"{case['case']:45s} wall {case['wall_s']:9.4f} s  cpu {case['cpu_s']:9.4f} s",
            {k: v for k, v in case.items() if k in ("x_floor_cpu", "before_over_ours_cpu", "phases_s")},
        )
    print(json.dumps({k: extras[k] for k in extras}, indent=1))
    for item in aims:
        print(f"aim: {item['aim']}: {item['value']} {item['unit']} (target {item['target']}) {'met' if item['met'] else 'NOT met'}")


if __name__ == "__main__":
    main()
