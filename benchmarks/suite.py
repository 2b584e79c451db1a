"""The benchmark suite: us next to a per-feature loop and limma, scaling in features,
participants and workers, and every model next to its reference, in one run.

    python benchmarks/suite.py [--quick] [--data-dir DIR] [--only reference,features,participants,workers,models]

Every case runs in its own process (a CLI run, a Python case of this script, an
Rscript); the suite samples the whole process tree (the process and every Dask
worker, nanny or R child) every 50 ms with psutil for its peak resident memory (the
sum of the tree's RSS), takes its CPU time from the kernel's accounting of waited
children (user + system, workers included) and its wall time. Python cases also
report the time of the computation alone (``inner``), best of three where cheap.

Writes ``benchmarks/results/<date>-<host>.json`` and ``.md`` (``-quick`` with
``--quick``). Simulated data go to a temporary folder (or ``--data-dir``, where
they are kept and reused by a later run), never into the repository.
"""

from __future__ import annotations

import os

# One BLAS thread everywhere (Dask's nannies set the same in every worker; R inherits it).
for _variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse
import importlib.metadata
import json
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Every command the suite starts (the scalable-assoc console script included) and the suite itself import
# the package from this checkout, not an older installed copy: a stale install would be measured silently.
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from suite_whole_run import SCRIPT_GROUPS, console_script, ingested_plan, limma_check, limma_study, script_group  # noqa: E402

FULL = {
    "reference": {"participants": 7656, "species": 400, "pathways": 650, "statsmodels_sample": 1000, "lm_sample": 8},
    "features": {"participants": 7656, "sizes": [1_000, 10_000, 100_000]},
    "participants": {"features": 2_000, "sizes": [7_656, 50_000, 200_000]},
    "models": ["--participants", "7656", "--species", "400", "--sample", "100"],
    "limma_cli": {"participants": 7656, "species": 5000},
}
QUICK = {
    "reference": {"participants": 2000, "species": 100, "pathways": 100, "statsmodels_sample": 100, "lm_sample": 3},
    "features": {"participants": 2000, "sizes": [1_000, 2_000, 5_000]},
    "participants": {"features": 500, "sizes": [2_000, 5_000, 10_000]},
    "models": ["--participants", "2000", "--species", "100", "--sample", "10"],
    "limma_cli": {"participants": 2000, "species": 500},
}
GROUPS = ("reference", "limma_cli", "features", "participants", "workers", "models", *SCRIPT_GROUPS)
#: The scaling plans: 2 exposures x 2 adjustment sets (4 analyses per feature), lm (``min_prevalence`` 0.05 here).
SCALE_PLAN = """\
name: scale-{label}
data:
  metadata: {metadata}
  layers:
    wide: {{path: {store}}}
preprocess: {{min_prevalence: {min_prevalence}, transform: clr, pseudocount: half_min}}
exposures:
  MDD:  {{cases: "MDD == 1", controls: "no_disorder == 1"}}
  ssri: {{cases: "ssri == 1", controls: "ssri == 0"}}
covariates: {{categorical: [sex]}}
adjustments:
  base: [age, sex, bmi, bristol_stool, read_depth]
  meds: [base, any_ptd, ppi, laxatives, metformin]
fdr: {{method: bh, by: [layer, exposure, adjustment], alpha: 0.05}}
"""


# ---------------------------------------------------------------------------------------
# Measuring a process tree
# ---------------------------------------------------------------------------------------
def measure(command: list[str], log: Path, interval: float = 0.05) -> dict:
    """Run ``command``; wall time, CPU time and peak RSS of its whole process tree."""
    load_before = os.getloadavg()[0]
    machine_before = psutil.cpu_times()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_seen: dict[int, float] = {}
    peak_of: dict[int, int] = {}
    peak = 0
    started = time.perf_counter()
    with log.open("ab") as handle:
        handle.write(f"\n$ {' '.join(command)}\n".encode())
        handle.flush()
        process = psutil.Popen(command, stdout=handle, stderr=handle)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    tree = [process, *process.children(recursive=True)]
                except psutil.NoSuchProcess:
                    break
                total = 0
                for member in tree:
                    try:
                        rss = member.memory_info().rss
                        total += rss
                        peak_of[member.pid] = max(peak_of.get(member.pid, 0), rss)
                        times = member.cpu_times()
                        cpu_seen[member.pid] = times.user + times.system
                    except psutil.NoSuchProcess:
                        continue
                peak = max(peak, total)
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        wall = time.perf_counter() - started
        done.set()
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit status {code}; see {log}")
    # Waited children are counted by the kernel (workers reaped by their parent included);
    # the polled sum covers any process that outlived its parent's wait.
    cpu = max(waited_cpu, sum(cpu_seen.values()))
    # Other processes on the machine share its cores: the CPU they used during the case, in
    # cores (busy CPU time of the whole machine minus the case's own, over the wall time).
    machine_after = psutil.cpu_times()
    busy = sum(
        getattr(machine_after, f) - getattr(machine_before, f)
        for f in ("user", "nice", "system", "irq", "softirq", "steal")
        if hasattr(machine_after, f)
    )
    children = [p for p in peak_of if p != process.pid]
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 2),
        "peak_rss_mb": round(peak / 2**20, 1),
        "peak_rss_main_mb": round(peak_of.get(process.pid, 0) / 2**20, 1),
        "peak_rss_largest_child_mb": round(max((peak_of[p] for p in children), default=0) / 2**20, 1),
        "other_processes_cores": round(max(busy - cpu, 0.0) / wall, 2),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def run_case(name: str, params: dict, log: Path, scratch: Path) -> dict:
    """Run one Python case of this script in its own process; its measurements and its own result."""
    result_path = scratch / f"case-{name}-{time.monotonic_ns()}.json"
    measured = measure([sys.executable, __file__, "--case", name, "--params", json.dumps(params), "--result", str(result_path)], log)
    return {**measured, "result": json.loads(result_path.read_text())}


def run_cli(plan: Path, out: Path, log: Path, workers: int | None = None, report: bool = False) -> dict:
    """``scalable-assoc run`` into a fresh output folder; without the HTML report unless ``report`` (its time is in bench_report.py)."""
    if out.exists():
        shutil.rmtree(out)
    command = [console_script(), "run", str(plan), "--out", str(out)]
    if not report:
        command.append("--no-report")
    if workers:
        command += ["--workers", str(workers)]
    measured = measure(command, log)
    manifest = json.loads((out / "manifest.json").read_text())
    measured["run_timings"] = {k: round(v, 2) for k, v in manifest["timings_seconds"].items()}
    measured["features_kept"] = sum(v["features_kept"] for v in manifest["layers"].values())
    measured["analyses"] = len(manifest["analyses"])
    measured["workers"] = manifest.get("dask", {}).get("workers", workers)
    return measured


#: Whole runs of the reference and limma groups, each repeated: this VM's speed drifts 20-30% within minutes.
WHOLE_RUN_REPEATS = 3


def median_cli_run(plan: Path, out: Path, log: Path, repeats: int = WHOLE_RUN_REPEATS) -> dict:
    """:func:`run_cli` ``repeats`` times (each into a fresh folder: a cold run converts again); the run of median wall time.

    The median, not the best: a run is what a user waits for, and one fast minute of the machine should not decide an
    aim. Every run's wall time is kept (``walls_s``) for the table.
    """
    return median_run([run_cli(plan, out, log) for _ in range(repeats)])


def _limma_cli_inputs(cases: dict, folder: Path, log: Path, data: Path) -> None:
    """The limma group's parts read from a cold run's output: the matrix and designs for R, the parse and encode floors."""
    cases["limma_cli_export"] = run_case("limma_export", {"folder": str(folder)}, log, data)
    # The rows a run keeps (species), as the conversion parses only those.
    parse_params = {"tables": [str(folder / "study" / "species.tsv")], "rank_prefix": "s__"}
    cases["limma_cli_parse_floor"] = run_case("parse_floor", parse_params, log, data)
    converted = sorted((folder / "out" / ".scalable_assoc" / "stores").glob("species-*.zarr"))
    if converted:
        cases["limma_cli_encode_floor"] = run_case("store_encode", {"store": str(converted[0])}, log, data)


def median_run(runs: list[dict]) -> dict:
    """The run of median wall time among ``runs``, with every run's wall time (``walls_s``, ascending) for the table."""
    median = median_by(runs, lambda r: r["wall_s"])
    median["walls_s"] = sorted(r["wall_s"] for r in runs)
    return median


def median_by(runs: list[dict], value: Callable[[dict], float]) -> dict:
    """A copy of the run whose ``value`` is the median among ``runs`` (the upper one of an even count)."""
    return dict(sorted(runs, key=value)[len(runs) // 2])


def median_pair_ratio(theirs_s: list[float], ours_s: list[float]) -> float:
    """The median over pairs of ``theirs / ours`` seconds, each pair measured back to back.

    This VM's speed drifts 20-40% within the hour: an alternative timed minutes
    after our runs can gain or lose that much against them. Pairs measured in the
    same minute, alternately, give a ratio that drift moves much less.
    """
    return float(np.median([theirs / ours for theirs, ours in zip(theirs_s, ours_s, strict=True)]))


def repeats_text(case: dict) -> str:
    """The spread of a repeated whole run, e.g. "median of 3: 3.10-3.42 s"."""
    walls = case.get("walls_s", [case["wall_s"]])
    return f"median of {len(walls)}: {min(walls):.2f}-{max(walls):.2f} s"


# ---------------------------------------------------------------------------------------
# Python cases (each in its own process)
# ---------------------------------------------------------------------------------------
def _reference_data(folder: Path, plan: str = "plan.yaml"):
    from bench_reference_study import transformed_layers

    from scalable_assoc.engine.prepare import prepare_study
    from scalable_assoc.plan.schema import load_plan

    study = prepare_study(load_plan(folder / "study" / plan), folder / "out" / ".scalable_assoc" / "stores")
    return study, transformed_layers(study)


def _only(study, name: str):
    return SimpleNamespace(layers=[layer for layer in study.layers if layer.spec.name == name])


def case_kernel(params: dict) -> dict:
    """Our kernel in this process over every regression of the study, and over the species layer alone."""
    from bench_reference_study import time_kernel

    folder = Path(params["folder"])
    study, layers = _reference_data(folder)
    chunk = max(layer.store.chunk_features for layer in study.layers)
    runs = [time_kernel(study, layers, chunk) for _ in range(3)]
    species = _only(study, "species")
    species_runs = [time_kernel(species, layers, chunk) for _ in range(3)]
    export = export_for_r(species.layers[0], layers["species"], chunk, folder / "r")
    return {
        "kernel_s": min(r[0] for r in runs),
        "kernel_runs_s": [round(r[0], 4) for r in runs],
        "regressions": runs[0][1],
        "features": sum(v.shape[1] for v in layers.values()),
        "kernel_species_s": min(r[0] for r in species_runs),
        "regressions_species": species_runs[0][1],
        **export,
    }


def export_for_r(layer, values: np.ndarray, chunk: int, folder: Path) -> dict:
    """The species layer's transformed matrix and every analysis' design, for suite_r.R; our betas beside them."""
    from scalable_assoc.models.design import factorise_covariates
    from scalable_assoc.models.ols import fit_design_batch, prepare_block

    folder.mkdir(parents=True, exist_ok=True)
    complete = ~np.isnan(values).any(axis=0)
    values = values[:, complete]
    n, m = values.shape
    (folder / "dims.txt").write_text(f"{n} {m}\n")
    np.ascontiguousarray(values.T).astype("<f8").tofile(folder / "Y.bin")  # column-major, as R reads it (tofile writes C order)
    lines = ["id\tn_rows\tp\trows_file\tx_file"]
    for index, analysis in enumerate(layer.analyses):
        design = layer.designs[analysis.design_key]
        exog = np.column_stack([design.matrix, analysis.exposure])
        (design.rows.astype("<i4") + 1).tofile(folder / f"rows{index}.bin")
        np.ascontiguousarray(exog.T).astype("<f8").tofile(folder / f"X{index}.bin")
        lines.append(f"{index}\t{len(design.rows)}\t{exog.shape[1]}\trows{index}.bin\tX{index}.bin")
    (folder / "analyses.tsv").write_text("\n".join(lines) + "\n")
    # Our estimates on the same matrix, in the same order, to check limma against.
    block = prepare_block(values)
    beta = np.empty((m, len(layer.analyses)))
    se = np.empty_like(beta)
    for index, analysis in enumerate(layer.analyses):
        design = layer.designs[analysis.design_key]
        fit = fit_design_batch(
            [factorise_covariates(design.matrix, design.names)],
            [design.rows],
            [analysis.exposure[None, :]],
            [np.array([analysis.binary])],
            block,
        )[0]
        beta[:, index], se[:, index] = fit.beta[0], fit.se[0]
    np.save(folder / "ours_beta.npy", beta)
    np.save(folder / "ours_se.npy", se)
    return {"r_features": int(m), "r_features_dropped_for_missing": int((~complete).sum()), "r_analyses": len(layer.analyses)}


def floor_pass(study, layers: dict[str, np.ndarray], chunk: int) -> float:
    """Seconds for the least any per-design method does: one X'Y per participant subset and block.

    The designs of a participant subset are stacked (covariates and every exposure of
    every design on those participants) into one X, so each block's rows are gathered
    once per subset and multiplied once.
    """
    started = time.perf_counter()
    for layer in study.layers:
        values = layers[layer.spec.name]
        subsets: dict[bytes, tuple[np.ndarray, list[np.ndarray]]] = {}
        for analysis in layer.analyses:
            design = layer.designs[analysis.design_key]
            rows, columns = subsets.setdefault(design.rows.tobytes(), (design.rows, []))
            if not any(c is design.matrix for c in columns):
                columns.append(design.matrix)
            columns.append(analysis.exposure[:, None])
        stacked = [(rows, np.ascontiguousarray(np.hstack(columns).T)) for rows, columns in subsets.values()]
        for start in range(0, values.shape[1], chunk):
            block = values[:, start : start + chunk]
            for rows, xt in stacked:
                xt @ np.nan_to_num(block[rows])
    return time.perf_counter() - started


def case_floor(params: dict) -> dict:
    """The numpy floor over the same transformed matrices, and one read-and-sum pass."""
    study, layers = _reference_data(Path(params["folder"]))
    chunk = max(layer.store.chunk_features for layer in study.layers)
    floor = min(floor_pass(study, layers, chunk) for _ in range(3))
    floor_species = min(floor_pass(_only(study, "species"), layers, chunk) for _ in range(3))
    sums = []
    for _ in range(3):
        started = time.perf_counter()
        for values in layers.values():
            np.nansum(values, axis=0)
        sums.append(time.perf_counter() - started)
    subsets = {layer.designs[a.design_key].rows.tobytes() for layer in study.layers for a in layer.analyses}
    return {"floor_s": floor, "floor_species_s": floor_species, "read_sum_s": min(sums), "participant_subsets": len(subsets)}


def case_statsmodels(params: dict) -> dict:
    """statsmodels OLS per (feature, analysis), timed on a random sample and scaled."""
    from bench_reference_study import time_statsmodels

    study, layers = _reference_data(Path(params["folder"]))
    per_regression, sampled = time_statsmodels(study, layers, params["sample"])
    return {"per_regression_s": per_regression, "sampled": sampled}


def case_write_store(params: dict) -> dict:
    """Write one simulated scaling store (not a benchmark: its time is reported for information)."""
    import pandas as pd
    from scale_store import write_simulated_store

    ids = pd.read_csv(params["metadata"], sep="\t", usecols=["sample_id"])["sample_id"].astype(str).tolist()
    started = time.perf_counter()
    reused = (Path(params["store"]) / "zarr.json").is_file()
    store = write_simulated_store(Path(params["store"]), ids, params["features"], seed=params.get("seed", 0))
    return {"seconds": time.perf_counter() - started, "chunk_features": store.chunk_features, "samples": store.n_samples, "reused": reused}


def case_limma_export(params: dict) -> dict:
    """The limma comparison's transformed matrix and designs for suite_r.R, with our estimates beside them."""
    folder = Path(params["folder"])
    study, layers = _reference_data(folder, "plan-limma.yaml")
    layer = study.layers[0]
    return export_for_r(layer, layers[layer.spec.name], layer.store.chunk_features, folder / "r")


def value_lines(path: Path, rank_prefix: str | None = None) -> bytes:
    """A table's values, one per line: the header, ``#`` comment lines and each row's first field (its name) left out;
    with ``rank_prefix`` (``s__``) only the rows whose name's last ``|`` part starts with it, the rows a run keeps."""
    lines = [line for line in path.read_bytes().split(b"\n") if line and not line.startswith(b"#")][1:]
    if rank_prefix is not None:
        lines = [line for line in lines if line.split(b"\t", 1)[0].rsplit(b"|", 1)[-1].startswith(rank_prefix.encode())]
    return b"\n".join(line.split(b"\t", 1)[1] for line in lines).replace(b"\t", b"\n")


def case_parse_floor(params: dict) -> dict:
    """The least work of reading the tables' values from text: pyarrow's CSV parser over them as one float64 column, both cores.

    The same parser our conversion uses, on the most favourable layout (one value
    per line, no names, no checks, nothing written); the re-layout is not timed.
    Best of 3 (wall); CPU is the process's user + system time over the same parse.
    """
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    values = b"".join(value_lines(Path(path), params.get("rank_prefix")) + b"\n" for path in params["tables"])
    options = {
        "read_options": pa_csv.ReadOptions(column_names=["value"], use_threads=True),
        "convert_options": pa_csv.ConvertOptions(column_types={"value": pa.float64()}),
    }
    best = (float("inf"), float("inf"))
    parsed = 0
    for _ in range(3):
        cpu, started = time.process_time(), time.perf_counter()
        parsed = pa_csv.read_csv(pa.BufferReader(values), **options).num_rows
        best = min(best, (time.perf_counter() - started, time.process_time() - cpu))
    return {"parse_s": best[0], "parse_cpu_s": best[1], "values": parsed, "text_mb": round(len(values) / 1e6, 1)}


def case_store_encode(params: dict) -> dict:
    """The least work of writing a converted store's values: compressing each abundance chunk with the store's own
    compressor (numcodecs, one thread, as zarr's codec threads run it), nothing else (no copies, checksums, files).

    The chunks are read from the store a run converted (``params["store"]``) before timing. Best of 3 passes (CPU).
    """
    import numcodecs
    import zarr

    array = zarr.open_array(Path(params["store"]) / "abundance", mode="r")
    compressed = [codec.to_dict() for codec in array.metadata.codecs if codec.to_dict()["name"] in ("blosc", "zstd")]
    config = dict(compressed[0]["configuration"], id=compressed[0]["name"])
    if config["id"] == "blosc":
        config["shuffle"] = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[config["shuffle"]]
    codec = numcodecs.get_codec(config)
    width = array.chunks[1]
    chunks = [np.ascontiguousarray(array[:, start : start + width]) for start in range(0, array.shape[1], width)]
    best, stored = float("inf"), 0
    for _ in range(3):
        cpu = time.process_time()
        stored = sum(len(codec.encode(chunk)) for chunk in chunks)
        best = min(best, time.process_time() - cpu)
    raw = sum(chunk.nbytes for chunk in chunks)
    return {"encode_cpu_s": best, "codec": compressed[0], "raw_mb": round(raw / 1e6, 1), "stored_mb": round(stored / 1e6, 1)}


CASES = {
    "parse_floor": case_parse_floor,
    "store_encode": case_store_encode,
    "limma_export": case_limma_export,
    "kernel": case_kernel,
    "floor": case_floor,
    "statsmodels": case_statsmodels,
    "write_store": case_write_store,
}


# ---------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------
def machine() -> dict:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines() if line.startswith("model name")), "")
    os_name = platform.platform()
    release = Path("/etc/os-release")
    if release.is_file():
        fields = dict(line.split("=", 1) for line in release.read_text().splitlines() if "=" in line)
        os_name = f"{fields.get('PRETTY_NAME', '').strip(chr(34))} ({platform.platform()})"
    return {
        "host": socket.gethostname(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "cpu_model": model or platform.processor(),
        "os": os_name,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict:
    found = {"python": platform.python_version()}
    for package in ("scalable_assoc", "numpy", "scipy", "pandas", "dask", "distributed", "zarr", "statsmodels", "psutil"):
        try:
            found[package] = importlib.metadata.version(package.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    if shutil.which("Rscript"):
        text = subprocess.run(
            [
                "Rscript",
                "-e",
                'cat(R.version$major, ".", R.version$minor, " ", tryCatch(as.character(packageVersion("limma")), error = function(e) '
                '"absent"), sep = "")',
            ],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        found["R"] = text[0] if text else "unknown"
        found["limma"] = text[1] if len(text) > 1 else "absent"
    else:
        found["R"] = found["limma"] = "not installed"
    try:
        found["blas"] = next(
            i["internal_api"] + " " + i.get("version", "") for i in __import__("threadpoolctl").threadpool_info() if i["user_api"] == "blas"
        )
    except Exception:  # noqa: BLE001  (informational only)
        pass
    return found


def simulate_metadata(folder: Path, participants: int) -> Path:
    """A simulated cohort's metadata (the abundance of the scaling cases comes from scale_store)."""
    from scalable_assoc.simulate import simulate_study

    if not (folder / "metadata.tsv").is_file():
        simulate_study(folder, participants=participants, n_species=48, n_pathways=1)
    return folder / "metadata.tsv"


def scale_case(data: Path, log: Path, participants: int, features: int, workers: int | None = None) -> dict:
    metadata = simulate_metadata(data / f"meta-{participants}", participants)
    store = data / f"store-{participants}x{features}.zarr"
    written = run_case("write_store", {"metadata": str(metadata), "store": str(store), "features": features}, log, data)
    label = f"{participants}x{features}"
    plan = data / f"plan-{label}.yaml"
    plan.write_text(SCALE_PLAN.format(label=label, metadata=metadata, store=store, min_prevalence=0.05))
    measured = run_cli(plan, data / f"out-{label}-w{workers or 'default'}", log, workers=workers)
    measured.update(
        participants=participants,
        features=features,
        chunk_features=written["result"]["chunk_features"],
        matrix_mb=round(participants * features * 8 / 2**20, 1),
        store_write_s=None if written["result"]["reused"] else round(written["result"]["seconds"], 1),
        ms_per_feature=round(1e3 * measured["wall_s"] / features, 4),
        ns_per_value=round(1e9 * measured["wall_s"] / (features * participants), 2),
    )
    shutil.rmtree(data / f"out-{label}-w{workers or 'default'}", ignore_errors=True)
    return measured


def aim(key: str, label: str, value: float, target: float, higher_is_better: bool, unit: str = "x") -> dict:
    met = value >= target if higher_is_better else value <= target
    return {
        "key": key,
        "aim": label,
        "value": round(value, 2),
        "unit": unit,
        "target": target,
        "at_least": higher_is_better,
        "met": bool(met),
    }


def compile_package() -> int:
    """Write the package's bytecode (``__pycache__``), as installing it with pip does; the number of modules compiled.

    An editable install (``pip install -e``) under ``PYTHONDONTWRITEBYTECODE=1`` never caches bytecode: every
    process of every case (the command, the workers' fork server) compiled our 60-odd modules again, about 0.3 s
    of a start-up the dependencies (compiled by pip) did not pay. Compiled once here, every case starts as an
    installed package does.
    """
    import compileall

    import scalable_assoc

    folder = Path(scalable_assoc.__file__).parent
    compileall.compile_dir(folder, quiet=1)
    return sum(1 for _ in folder.rglob("*.py"))


def run_suite(args: argparse.Namespace) -> dict:
    sizes = QUICK if args.quick else FULL
    only = set(args.only.split(",")) if args.only else set(GROUPS)
    data = (args.data_dir or Path(tempfile.mkdtemp(prefix="scalable-assoc-suite-"))).resolve()
    data.mkdir(parents=True, exist_ok=True)
    log = data / "suite.log"
    report: dict = {
        "benchmark": "suite",
        "quick": args.quick,
        "date": date.today().isoformat(),
        "machine": machine(),
        "versions": versions(),
        "cases": {},
        "aims": [],
        "bytecode_compiled": compile_package(),
    }
    cases, aims = report["cases"], report["aims"]
    suite_started = time.perf_counter()

    def say(text: str) -> None:
        print(f"[{time.perf_counter() - suite_started:7.1f}s] {text}", flush=True)

    if "reference" in only:
        ref = sizes["reference"]
        folder = data / "reference"
        from scalable_assoc.simulate import simulate_study

        if not (folder / "study" / "plan.yaml").is_file():
            simulate_study(folder / "study", participants=ref["participants"], n_species=ref["species"], n_pathways=ref["pathways"])
        plan = folder / "study" / "plan.yaml"
        say("reference: CLI run, cold (TSV -> Zarr conversion included), each run followed by the statsmodels loop (sampled)")
        # Alternately, so that each cold run's ratio to the loop is measured in the same minute (median_pair_ratio).
        cold_runs, loop_runs = [], []
        for _ in range(WHOLE_RUN_REPEATS):
            cold_runs.append(run_cli(plan, folder / "out", log))
            loop_runs.append(run_case("statsmodels", {"folder": str(folder), "sample": ref["statsmodels_sample"]}, log, data))
        cases["ref_cli_cold"] = median_run(cold_runs)
        cases["ref_statsmodels"] = median_by(loop_runs, lambda r: r["result"]["per_regression_s"])
        say("reference: CLI run, cold, with the HTML report")
        cases["ref_cli_cold_report"] = run_cli(plan, folder / "out", log, report=True)
        say("reference: the three tables into one store (ingest --layer), then a second plan on it")
        stores_plan, cases["ref_ingest"] = ingested_plan(
            folder / "study", folder / "study.zarr", folder / "plan-stores.yaml", lambda command: measure(command, log)
        )
        cases["ref_cli_warm"] = median_cli_run(stores_plan, folder / "out-stores", log)
        say("reference: our kernel, one process")
        cases["ref_kernel"] = run_case("kernel", {"folder": str(folder)}, log, data)
        say("reference: numpy floor")
        cases["ref_floor"] = run_case("floor", {"folder": str(folder)}, log, data)
        say("reference: parsing floor of the three tables")
        tables = [str(folder / "study" / f"{name}.tsv") for name in ("species", "pathways", "gbm")]
        cases["ref_parse_floor"] = run_case("parse_floor", {"tables": tables}, log, data)
        kernel = cases["ref_kernel"]["result"]
        regressions = kernel["regressions"]
        statsmodels_s = cases["ref_statsmodels"]["result"]["per_regression_s"] * regressions
        cases["ref_statsmodels"]["scaled_s"] = round(statsmodels_s, 2)
        cases["ref_statsmodels"]["scaled_all_s"] = [round(r["result"]["per_regression_s"] * regressions, 2) for r in loop_runs]
        floor = cases["ref_floor"]["result"]
        ratios = {
            "statsmodels_over_kernel": statsmodels_s / kernel["kernel_s"],
            "statsmodels_over_cli_cold": median_pair_ratio(cases["ref_statsmodels"]["scaled_all_s"], [r["wall_s"] for r in cold_runs]),
            "statsmodels_over_cli_warm": statsmodels_s / cases["ref_cli_warm"]["wall_s"],
            "kernel_over_floor": kernel["kernel_s"] / floor["floor_s"],
            "kernel_over_read_sum": kernel["kernel_s"] / floor["read_sum_s"],
        }
        aims.append(aim("statsmodels", "kernel >= 100x the statsmodels loop", ratios["statsmodels_over_kernel"], 100, True))
        aims.append(aim("cold", "reference study, cold run (TSV inputs) <= 4 s", cases["ref_cli_cold"]["wall_s"], 4, False, " s"))
        aims.append(
            aim("cold_statsmodels", "reference study, cold run >= 20x the statsmodels loop", ratios["statsmodels_over_cli_cold"], 20, True)
        )
        aims.append(
            aim(
                "warm",
                "reference study, stores already converted (second plan) <= 2.5 s",
                cases["ref_cli_warm"]["wall_s"],
                2.5,
                False,
                " s",
            )
        )
        aims.append(aim("floor", "kernel within 3x of the numpy floor (X'Y per participant subset)", ratios["kernel_over_floor"], 3, False))
        if shutil.which("Rscript"):
            say("reference: R lm loop and limma lmFit (species layer)")
            r_out = folder / "r" / "result.json"
            cases["ref_r"] = measure(["Rscript", str(HERE / "suite_r.R"), str(folder / "r"), str(r_out), str(ref["lm_sample"])], log)
            r = json.loads(r_out.read_text())
            cases["ref_r"]["result"] = r
            m, a = kernel["r_features"], kernel["r_analyses"]
            ours_beta, ours_se = np.load(folder / "r" / "ours_beta.npy"), np.load(folder / "r" / "ours_se.npy")
            limma_beta = np.fromfile(folder / "r" / "limma_beta.bin", dtype="<f8").reshape((m, a), order="F")
            limma_se = np.fromfile(folder / "r" / "limma_se.bin", dtype="<f8").reshape((m, a), order="F")
            cases["ref_r"]["limma_vs_ours_max_rel_diff"] = {
                "beta": float(np.nanmax(np.abs(limma_beta - ours_beta) / np.maximum(np.abs(ours_beta), 1e-12))),
                "se": float(np.nanmax(np.abs(limma_se - ours_se) / ours_se)),
            }
            r_lm_s = r["lm_per_fit_seconds"] * m * a
            cases["ref_r"]["lm_scaled_s"] = round(r_lm_s, 2)
            ratios["limma_over_kernel_species"] = r["limma_seconds"] / kernel["kernel_species_s"]
            ratios["r_lm_over_kernel_species"] = r_lm_s / kernel["kernel_species_s"]
            ratios["limma_over_floor_species"] = r["limma_seconds"] / floor["floor_species_s"]
            aims.append(
                aim("limma", "kernel >= 10x limma lmFit (species layer, same designs)", ratios["limma_over_kernel_species"], 10, True)
            )
        report["reference_ratios"] = {k: round(v, 2) for k, v in ratios.items()}
        say("reference: " + ", ".join(f"{k} {v:.1f}" for k, v in ratios.items()))

    if "limma_cli" in only:
        spec = sizes["limma_cli"]
        folder = data / "limma_cli"
        say(f"limma_cli: simulating {spec['species']:,} species x {spec['participants']:,} participants, no missing values")
        plan = limma_study(folder, spec["participants"], spec["species"])
        with_r = shutil.which("Rscript") is not None
        say("limma_cli: our CLI, cold (TSV in, every output written)" + (", each run followed by limma lmFit alone" if with_r else ""))
        # Alternately, so that each run's ratio to lmFit is measured in the same minute (median_pair_ratio).
        ours_runs, r_runs = [], []
        for repeat in range(WHOLE_RUN_REPEATS):
            ours_runs.append(run_cli(plan, folder / "out", log))
            if repeat == 0:  # from the store this run converted (the next run converts afresh)
                _limma_cli_inputs(cases, folder, log, data)
            if with_r:
                r_out = folder / "r" / "result.json"
                r_runs.append(measure(["Rscript", str(HERE / "suite_r.R"), str(folder / "r"), str(r_out), "1", "1"], log))
                r_runs[-1]["result"] = json.loads(r_out.read_text())
        cases["limma_cli_ours"] = median_run(ours_runs)
        if with_r:
            lmfit_all = [r["result"]["limma_seconds"] for r in r_runs]
            cases["limma_cli_r"] = median_by(r_runs, lambda r: r["result"]["limma_seconds"])
            cases["limma_cli_r"]["limma_all_s"] = lmfit_all
            exported = cases["limma_cli_export"]["result"]
            cases["limma_cli_r"]["limma_vs_ours_max_rel_diff"] = limma_check(folder / "r", exported["r_features"], exported["r_analyses"])
            ratio = median_pair_ratio(lmfit_all, [r["wall_s"] for r in ours_runs])
            cases["limma_cli_r"]["limma_over_cli"] = round(ratio, 2)
            aims.append(
                aim(
                    "limma_cli",
                    f"whole CLI >= 3x limma lmFit alone ({exported['r_features']:,} features x {exported['r_analyses']} analyses)",
                    ratio,
                    3,
                    True,
                )
            )
            walls = ", ".join(f"{r['wall_s']:.2f}" for r in ours_runs)
            say(f"limma_cli: lmFit {', '.join(f'{s:.2f}' for s in lmfit_all)} s, our CLI {walls} s: {ratio:.2f}x (median of pairs)")
        else:
            say("limma_cli: Rscript not found, limma not measured")

    scale_dir = data / "scale"
    if "features" in only:
        spec = sizes["features"]
        cases["features"] = []
        for features in spec["sizes"]:
            say(f"features: {features} features x {spec['participants']} participants, 2 workers")
            cases["features"].append(scale_case(scale_dir, log, spec["participants"], features, workers=2))
        for previous, case in zip(cases["features"], cases["features"][1:], strict=False):
            # The fixed cost (start-up, one pass over a chunk's worth) cancels in the difference.
            case["marginal_ms_per_feature"] = round(
                1e3 * (case["wall_s"] - previous["wall_s"]) / (case["features"] - previous["features"]), 4
            )
        first, last = cases["features"][0], cases["features"][-1]
        aims.append(
            aim(
                "memory_features",
                f"peak memory at {last['features']:,} features within 1.5x of {first['features']:,}",
                last["peak_rss_mb"] / first["peak_rss_mb"],
                1.5,
                False,
            )
        )
        say("features: " + ", ".join(f"{c['features']}: {c['wall_s']:.1f} s, {c['peak_rss_mb']:.0f} MB" for c in cases["features"]))
    if "participants" in only:
        spec = sizes["participants"]
        cases["participants"] = []
        for participants in spec["sizes"]:
            say(f"participants: {participants} participants x {spec['features']} features, 2 workers")
            cases["participants"].append(scale_case(scale_dir, log, participants, spec["features"], workers=2))
        last = cases["participants"][-1]
        aims.append(
            aim(
                "memory_participants",
                f"peak memory at {last['participants']:,} participants below the matrix size ({last['matrix_mb']:,.0f} MB)",
                last["peak_rss_mb"] / last["matrix_mb"],
                1.0,
                False,
            )
        )
        say(
            "participants: "
            + ", ".join(f"{c['participants']}: {c['wall_s']:.1f} s, {c['peak_rss_mb']:.0f} MB" for c in cases["participants"])
        )
    if "workers" in only:
        spec = sizes["features"]
        largest = spec["sizes"][-1]
        # Interleaved, best of two each (other processes may share the machine): 1, 2, 1 workers,
        # with the 2-worker run of the feature series as the second 2-worker run.
        runs: dict[int, list[dict]] = {1: [], 2: [c for c in cases.get("features", []) if c["features"] == largest]}
        for workers in (1, 2, 1) if runs[2] else (1, 2, 1, 2):
            say(f"workers: {largest} features, {workers} worker(s)")
            runs[workers].append(scale_case(scale_dir, log, spec["participants"], largest, workers=workers))
        one, two = (min(runs[w], key=lambda r: r["wall_s"]) for w in (1, 2))
        cases["workers"] = {
            "one": one,
            "two": two,
            "all_runs": {
                str(w): [{k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "other_processes_cores", "run_timings")} for r in runs[w]]
                for w in runs
            },
        }
        speedup = one["wall_s"] / two["wall_s"]
        fit_speedup = one["run_timings"].get("fit", np.nan) / two["run_timings"].get("fit", np.nan)
        cases["workers"]["speedup_wall"] = round(speedup, 2)
        cases["workers"]["speedup_fit_phase"] = round(fit_speedup, 2)
        aims.append(aim("workers", f"2 workers >= 1.6x of 1 worker ({largest:,} features, whole run)", speedup, 1.6, True))
        say(f"workers: 1 -> 2 speed-up {speedup:.2f}x (fit phase {fit_speedup:.2f}x)")
    if "models" in only:
        say("models: benchmarks/bench_models.py")
        out = data / "models.json"
        cases["models"] = measure([sys.executable, str(HERE / "bench_models.py"), *sizes["models"], "--out", str(out)], log)
        cases["models"]["result"] = json.loads(out.read_text())
    for name in SCRIPT_GROUPS:
        if name in only:
            say(f"{name}: benchmarks/{SCRIPT_GROUPS[name][0]}")
            measured = script_group(name, args.quick, data / name, measure, log)
            if measured is not None:
                cases[f"script_{name}"] = measured
                aims.extend(
                    dict(found, key=f"{name}_{found['key']}", at_least=found.get("at_least")) for found in measured["result"]["aims"]
                )
    attach_floors(aims, cases)
    report["suite_seconds"] = round(time.perf_counter() - suite_started, 1)
    report["data_dir"] = str(data) if args.data_dir else "(temporary, removed)"
    if not args.data_dir:
        shutil.rmtree(data, ignore_errors=True)
    return report


# ---------------------------------------------------------------------------------------
# Floors: the least a run could take on this machine, from parts measured in the same suite
# ---------------------------------------------------------------------------------------
def _startup_case(cases: dict, name: str) -> dict | None:
    found = cases.get("script_startup", {}).get("result", {}).get("cases", [])
    return next((case for case in found if case.get("case") == name), None)


def attach_floors(aims: list[dict], cases: dict) -> None:
    """Give the whole-run aims of the reference and limma groups a ``floor``: the sum of parts no run can avoid.

    A run on new worker processes pays at least the first task of a bare cluster
    (the startup group: distributed's own LocalCluster of 2 worker processes, no
    study), reading its tables' values from text (``parse_floor``: pyarrow over the
    values alone, both cores) and our kernel over every regression split over 2
    workers. The parts are summed as if none overlapped another: on 2 cores they
    compete for the same CPU. Only aims whose parts were all measured get one.
    """
    bare = _startup_case(cases, "first task, no study: distributed, 2 worker processes")
    if bare is None:
        return
    start = bare["wall_s"]
    by_key = {found["key"]: found for found in aims}
    if "ref_kernel" in cases and "ref_parse_floor" in cases:
        kernel = cases["ref_kernel"]["result"]["kernel_s"] / 2
        parse = cases["ref_parse_floor"]["result"]["parse_s"]
        parts = f"first task on a bare 2-process cluster {start:.2f} s + our kernel on 2 workers {kernel:.2f} s"
        cold, warm = start + parse + kernel, start + kernel
        if "cold" in by_key:
            by_key["cold"]["floor"] = {"value": round(cold, 2), "what": f"{parts} + parsing the tables' values {parse:.2f} s"}
        if "warm" in by_key:
            by_key["warm"]["floor"] = {"value": round(warm, 2), "what": parts + " (nothing to parse)"}
        if "cold_statsmodels" in by_key and "ref_statsmodels" in cases:
            best = cases["ref_statsmodels"]["scaled_s"] / cold
            by_key["cold_statsmodels"]["floor"] = {
                "value": round(best, 2),
                "what": f"the statsmodels loop over the cold floor ({cold:.2f} s)",
            }
    if "limma_cli" in by_key and "limma_cli_r" in cases and "limma_cli_parse_floor" in cases:
        by_key["limma_cli"]["floor"] = _limma_cli_floor(cases, bare)


def _limma_cli_floor(cases: dict, bare: dict) -> dict:
    """The most the whole CLI could gain over lmFit on this machine: lmFit over the least a cold run's own work takes.

    A cold run must start its cluster (a bare 2-process cluster's first task: its wall, and its CPU in 3 processes),
    parse the kept rows' values (pyarrow over them as one column) and compress them as the store does
    (``store_encode``); on 2 cores these compete for the same CPU, so the run takes at least their CPU over 2 cores,
    and at least the cluster's start. Not counted: our kernel, the first pass over the text, the store's sums and
    sparse copy, our imports.
    """
    start, start_cpu = bare["wall_s"], bare["cpu_s"]
    parse = cases["limma_cli_parse_floor"]["result"]
    lmfit = cases["limma_cli_r"]["result"]["limma_seconds"]
    encode = cases.get("limma_cli_encode_floor", {}).get("result")
    if encode is None:  # the converted store was not found: the parts of the floor before the store was timed
        floor = start + parse["parse_s"]
        what = f"first task on a bare 2-process cluster {start:.2f} s + parsing the kept rows' values {parse['parse_s']:.2f} s"
        return {"value": round(lmfit / floor, 2), "what": f"lmFit {lmfit:.2f} s over {what} (our kernel not counted)"}
    cpu = start_cpu + parse["parse_cpu_s"] + encode["encode_cpu_s"]
    floor = max(start, cpu / 2)
    return {
        "value": round(lmfit / floor, 2),
        "seconds": round(floor, 2),
        "what": f"lmFit {lmfit:.2f} s over {floor:.2f} s, the CPU no cold run avoids on 2 cores: a bare 2-process cluster's "
        f"first task {start_cpu:.2f} s CPU ({start:.2f} s wall) + parsing the kept rows' values {parse['parse_cpu_s']:.2f} s + "
        f"compressing them as the store does {encode['encode_cpu_s']:.2f} s = {cpu:.2f} s CPU over 2 cores (our kernel, "
        "the first pass over the text, the store's sums and our imports not counted; the run's own CPU is in its row)",
    }


# ---------------------------------------------------------------------------------------
# The Markdown report
# ---------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    m, v, c = report["machine"], report["versions"], report["cases"]
    aims = {a["key"]: a for a in report["aims"]}

    def aim_cell(key: str) -> str:
        found = aims.get(key)
        if found is None:
            return ""
        verdict = "met" if found["met"] else "missed"
        bound = ">=" if found["at_least"] else "<="
        return f"{verdict} ({found['value']:g}{found['unit']}, aim {bound} {found['target']:g}{found['unit']})"

    lines = [
        f"# Benchmark suite, {report['date']}, {m['host']}{' (quick)' if report['quick'] else ''}",
        "",
        f"Machine: {m['cores_usable']} cores ({m['cpu_model']}), {m['memory_gb']} GB, {m['os']}; load average at start "
        f"{m['load_average_at_start']}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
        "Wall, CPU (user + system) and peak memory are of the whole process tree of each case (the process, Dask scheduler,",
        "nannies and workers, or Rscript), RSS summed over the tree, sampled every 50 ms; main is the process started",
        "(for a CLI run: the client, scheduler and nannies), largest child the largest Dask worker. `other load`: cores used by",
        "other processes on the machine during the case. `inner` is the computation alone, timed inside the process (best of 3).",
        f"The package's bytecode was compiled first ({report.get('bytecode_compiled', 0)} modules), as pip does on install.",
        f"CLI runs start `{console_script()}` (the console script beside the interpreter, not a version manager's shim).",
        f"Suite total {report['suite_seconds']:.0f} s.",
        "",
        "| case | what | wall s | CPU s | peak MB: tree (main, largest child) | other load | inner / result | aim |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def phases(case: dict) -> str:
        timings = case.get("run_timings", {})
        return "phases: " + ", ".join(f"{k} {v:.2f} s" for k, v in timings.items() if k != "total")

    def row(name: str, what: str, case: dict | None, inner: str, aim_text: str = "") -> None:
        if case is None:
            return
        memory = f"{case['peak_rss_mb']:,.0f} ({case.get('peak_rss_main_mb', 0):,.0f}, {case.get('peak_rss_largest_child_mb', 0):,.0f})"
        lines.append(
            f"| {name} | {what} | {case['wall_s']:.2f} | {case['cpu_s']:.1f} | {memory} | "
            f"{case.get('other_processes_cores', float('nan')):.2f} | {inner} | {aim_text} |"
        )

    def parse_floor_row(group: str, tables: str, case: dict | None) -> None:
        if case is not None:
            pf = case["result"]
            what = f"parsing floor: {tables} {pf['values']:,} values ({pf['text_mb']} MB of text), pyarrow, one column, both cores"
            row(group, what, case, f"{pf['parse_s']:.3f} s wall, {pf['parse_cpu_s']:.3f} s CPU (best of 3)")

    if "ref_kernel" in c:
        k, f, r = c["ref_kernel"]["result"], c["ref_floor"]["result"], report["reference_ratios"]
        lines.insert(
            -2,
            f"Reference study: {k['features']:,} features kept, {k['regressions']:,} regressions (lm, 7 exposures x 5 adjustment sets x 3 "
            "layers).\n",
        )
        row(
            "reference",
            "`scalable-assoc run --no-report`, cold (start-up, TSV -> Zarr, fits, FDR, outputs), 2 workers",
            c["ref_cli_cold"],
            f"{repeats_text(c['ref_cli_cold'])}; statsmodels loop / this: {r['statsmodels_over_cli_cold']:.1f}x "
            "(median of pairs, each run and a loop back to back); "
            f"{phases(c['ref_cli_cold'])}",
            aim_cell("cold") + "; " + aim_cell("cold_statsmodels"),
        )
        row(
            "reference",
            "the same with the HTML report (`run` without `--no-report`)",
            c.get("ref_cli_cold_report"),
            phases(c["ref_cli_cold_report"]) if "ref_cli_cold_report" in c else "",
        )
        row(
            "reference",
            "`scalable-assoc ingest --layer`: the three tables into one store (3 commands, summed)",
            c.get("ref_ingest"),
            "once per study; the next row's plan reads this store",
        )
        row(
            "reference",
            "`scalable-assoc run`, a second plan on the converted store, new output folder",
            c["ref_cli_warm"],
            f"{repeats_text(c['ref_cli_warm'])}; {phases(c['ref_cli_warm'])}",
            aim_cell("warm"),
        )
        row(
            "reference",
            "our kernel, one process, one core",
            c["ref_kernel"],
            f"{k['kernel_s']:.3f} s all; {k['kernel_species_s']:.3f} s species",
            aim_cell("statsmodels"),
        )
        row(
            "reference",
            f"numpy floor: one X'Y per participant subset ({f['participant_subsets']}) and block",
            c["ref_floor"],
            f"{f['floor_s']:.3f} s (kernel / floor {r['kernel_over_floor']:.2f}x); read+sum {f['read_sum_s']:.3f} s",
            aim_cell("floor"),
        )
        parse_floor_row("reference", "the three tables'", c.get("ref_parse_floor"))
        row(
            "reference",
            f"statsmodels OLS loop, {c['ref_statsmodels']['result']['sampled']} sampled, scaled",
            c["ref_statsmodels"],
            f"{c['ref_statsmodels']['scaled_s']:.1f} s ({1e3 * c['ref_statsmodels']['result']['per_regression_s']:.2f} ms each; median of "
            f"{', '.join(f'{v:.1f}' for v in c['ref_statsmodels'].get('scaled_all_s', [c['ref_statsmodels']['scaled_s']]))} s); / kernel "
            f"{r['statsmodels_over_kernel']:.0f}x",
        )
        if "ref_r" in c:
            rr = c["ref_r"]["result"]
            row(
                "reference",
                f"Rscript: limma lmFit x {rr['analyses']} designs (species, {rr['features']} features) + R lm() loop",
                c["ref_r"],
                f"lmFit {rr['limma_seconds']:.3f} s (/ our kernel {r['limma_over_kernel_species']:.1f}x); lm loop "
                f"{c['ref_r']['lm_scaled_s']:.1f} s scaled (/ kernel {r['r_lm_over_kernel_species']:.0f}x)",
                aim_cell("limma"),
            )
    if "limma_cli_ours" in c:
        exported = c["limma_cli_export"]["result"]
        row(
            "limma_cli",
            f"`scalable-assoc run`, cold, species layer ({exported['r_features']:,} features kept, no missing values), "
            f"{exported['r_analyses']} analyses, 2 workers",
            c["limma_cli_ours"],
            f"{repeats_text(c['limma_cli_ours'])}; {phases(c['limma_cli_ours'])}",
        )
        parse_floor_row("limma_cli", "the kept rows'", c.get("limma_cli_parse_floor"))
        if "limma_cli_encode_floor" in c:
            enc = c["limma_cli_encode_floor"]
            e = enc["result"]
            codec = e["codec"]["name"] + " " + " ".join(str(v) for k, v in e["codec"].get("configuration", {}).items() if k != "blocksize")
            row(
                "limma_cli",
                f"compression floor: the converted store's chunks ({e['raw_mb']} MB) compressed with its codec ({codec}), one thread",
                enc,
                f"{e['encode_cpu_s']:.3f} s CPU (best of 3), {e['stored_mb']} MB stored",
            )
        if "limma_cli_r" in c:
            lr = c["limma_cli_r"]
            row(
                "limma_cli",
                f"Rscript: limma lmFit x {lr['result']['analyses']} designs on the same transformed matrix (fitting only timed)",
                lr,
                f"lmFit {lr['result']['limma_seconds']:.2f} s (median of "
                f"{', '.join(f'{v:.2f}' for v in lr.get('limma_all_s', [lr['result']['limma_seconds']]))} s, one Rscript each); / our "
                f"whole CLI {lr['limma_over_cli']:.2f}x (median of pairs, each run and an lmFit back to back); beta, se max rel. diff "
                f"{lr['limma_vs_ours_max_rel_diff']['beta']:.1e}, {lr['limma_vs_ours_max_rel_diff']['se']:.1e}",
                aim_cell("limma_cli"),
            )
    for group, key, unit in (("features", "features", "features"), ("participants", "participants", "participants")):
        for case in c.get(group, []):
            last = case is c[group][-1]
            row(
                group,
                f"{case[key]:,} {unit} ({case['participants']:,} x {case['features']:,}, {case['matrix_mb']:,.0f} MB, chunks of "
                f"{case['chunk_features']}), CLI, 2 workers",
                case,
                f"{case['ms_per_feature']:.3f} ms/feature"
                + (f" ({case['marginal_ms_per_feature']:.3f} marginal)" if "marginal_ms_per_feature" in case else "")
                + f", {case['ns_per_value']:.1f} ns/value; phases: filter {case['run_timings'].get('filter', 0):.1f} s, fit "
                f"{case['run_timings'].get('fit', 0):.1f} s, gather {case['run_timings'].get('gather', 0):.1f} s",
                aim_cell(f"memory_{group}") if last else "",
            )
    if "workers" in c:
        w = c["workers"]
        row("workers", f"1 worker, {w['one']['features']:,} features", w["one"], f"fit phase {w['one']['run_timings'].get('fit', 0):.1f} s")
        row(
            "workers",
            f"2 workers, {w['two']['features']:,} features",
            w["two"],
            f"speed-up {w['speedup_wall']:.2f}x whole run, {w['speedup_fit_phase']:.2f}x fit phase",
            aim_cell("workers"),
        )
    if "models" in c:
        mr = c["models"]["result"]
        row(
            "models",
            f"`bench_models.py` (species layer, {mr['shape']['features']} features, {mr['shape']['analyses']} analyses, whole script)",
            c["models"],
            "see below",
        )
        lines += ["", "| model | fits | ours s | statsmodels loop s (scaled) | ratio |", "|---|---|---|---|---|"]
        for name, model in mr["models"].items():
            lines.append(
                f"| {name} | {model['regressions']:,} | {model['ours_seconds']:.2f} | {model['reference_scaled_seconds']:,.1f} | "
                f"{model['ratio']:,.0f}x |"
            )
    for name, (script, what, _, _) in SCRIPT_GROUPS.items():
        if f"script_{name}" not in c:
            continue
        measured = c[f"script_{name}"]
        lines += [
            "",
            f"**{name}**: {what} (`benchmarks/{script}`, whole script: {measured['wall_s']:.1f} s wall, "
            f"{measured['peak_rss_mb']:,.0f} MB peak).",
            "",
        ]
        lines += ["| case | what | wall s | CPU s | peak MB | details |", "|---|---|---|---|---|---|"]
        for case in measured["result"]["cases"]:
            shown = {"case", "what", "wall_s", "cpu_s", "peak_rss_mb"}
            details = "; ".join(f"{k} {v}" for k, v in case.items() if k not in shown)
            cells = [
                f"{case[k]:,.2f}" if isinstance(case.get(k), float | int) else str(case.get(k, ""))
                for k in ("wall_s", "cpu_s", "peak_rss_mb")
            ]
            lines.append(f"| {case.get('case', '')} | {case.get('what', '')} | {' | '.join(cells)} | {details} |")
    lines += ["", "| aim | measured | met | floor on this machine (what it is made of) |", "|---|---|---|---|"]
    lines += [
        f"| {a['aim']} | {a['value']:g}{a['unit']} | {'met' if a['met'] else 'missed'} | "
        + (f"{a['floor']['value']:g}{a['unit']}: {a['floor']['what']}" if a.get("floor") else "")
        + " |"
        for a in report["aims"]
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test of a few minutes")
    parser.add_argument("--data-dir", type=Path, help="keep the simulated data here (reused by a later run)")
    parser.add_argument("--only", help=f"comma-separated groups: {','.join(GROUPS)}")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        args.result.write_text(json.dumps(CASES[args.case](json.loads(args.params))))
        return
    report = run_suite(args)
    stem = f"{report['date']}-{report['machine']['host']}{'-quick' if args.quick else ''}"
    if args.only:
        stem += "-" + args.only.replace(",", "-")
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    # A second run of the same groups on one day gets a number rather than replacing the first's files.
    taken = stem
    for number in range(2, 1000):
        if not (out / f"{taken}.json").exists() and not (out / f"{taken}.md").exists():
            break
        taken = f"{stem}-{number}"
    stem = taken
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
    text = markdown(report)
    (out / f"{stem}.md").write_text(text)
    print(text)
    print(f"wrote {out / stem}.json and .md")


if __name__ == "__main__":
    main()
