"""Meta-analysis and the pooled model at consortium scale: ``scalable-assoc meta`` and ``pool`` as commands.

    python benchmarks/bench_meta.py --json OUT.json [--quick] [--dir DIR] [--keep]

Writes valid cohort exports directly (no runs): for each of 5 cohorts a summary-statistics
file (``cohort_k.parquet``, the columns ``scalable-assoc sumstats`` writes), its
cross-products (``cohort_k.sufficient.parquet``) and the sidecar (``cohort_k.json``, with
the files' SHA-256), as one consortium plan would give them:

- meta: ``features`` x 4 exposures x 5 adjustment sets x 4 models (``lm``, ``lm_nonzero``,
  ``prevalence``, ``lmm``) rows per cohort; full size 125,000 features = 10 million rows,
  ``--quick`` 200,000 rows. Each cohort lacks about 3% of the features (withheld or not
  profiled) and 1% of the other rows, so most rows are shared by all five;
- pool: ``features`` x 4 exposures x 5 adjustment sets ``lm`` analyses per cohort, 4 to 8
  terms (exposure, age, ``sex[female]``/``sex[male]`` levels, further covariates per set);
  full size 100,000 features (2 million cross-product rows per cohort), ``--quick`` 5,000.

Times as subprocesses (wall, CPU of the process tree, peak RSS of the tree sampled every
0.1 s): ``scalable-assoc meta FILE... --out DIR --method reml`` and ``scalable-assoc pool
FILE... --out DIR``, whole commands (reading, checks, combining, writing). The aims: meta
REML of 5 cohorts x 10 million rows in at most 60 s, the pooled model at 100,000 features in
at most 30 s, on 2 cores. ``--before REV`` also times the same commands from a git revision
(its package extracted by ``git archive``), side by side. R's ``metafor::rma.uni`` (REML, one
row per call, as a per-row loop would) is timed on 2,000 rows and scaled to the meta size
when R has metafor; otherwise skipped with a message.

The floor (case ``meta_floor``, ``floor`` of the ``meta_reml`` aim, as the suite shows floors) is what the machine needs at
least for the meta command: pyarrow reading the columns it reads from every cohort, plus one
vectorised REML step over every row (timed, on every CPU) times the mean steps per row the
package's kernel takes on these rows (counted on a sample). If the aim is missed while the floor
is near it, the rest of the command (lining up keys, writing outputs) is not what stops it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the floor case runs this checkout's kernel in process, as the commands run its package
    sys.path.insert(0, str(ROOT))
COHORTS = 5
EXPOSURES = ("MDD", "anxiety", "ibs", "ssri_use")
ADJUSTMENTS = ("base", "diet", "drugs", "full", "lifestyle")
MODELS = ("lm", "lm_nonzero", "prevalence", "lmm")
#: Covariate terms each adjustment set adds to ``exposure, age, sex[female], sex[male]`` (the pool's designs have 4 to 8 terms).
EXTRA_TERMS = {
    "base": (),
    "diet": ("bmi",),
    "drugs": ("bmi", "ppi"),
    "full": ("bmi", "ppi", "metformin", "bristol"),
    "lifestyle": ("bmi", "smoking", "alcohol"),
}
LAYER = "species"
FORMAT = "scalable_assoc.sumstats/1"
META_AIM_S = 60.0
POOL_AIM_S = 30.0


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _analysis() -> dict:
    """The analysis every cohort ran (as ``analysis_spec`` records it)."""
    return {
        "layers": {
            LAYER: {"transform": "clr", "pseudocount": 1e-6, "min_prevalence": 0.05, "presence_threshold": 0.0, "models": list(MODELS)}
        },
        "exposures": {e: {"cases": f"{e} == 1", "controls": f"{e} == 0", "column": None} for e in EXPOSURES},
        "adjustments": {a: ["age", "sex", *EXTRA_TERMS[a]] for a in ADJUSTMENTS},
        "categorical": ["sex"],
        "cluster": None,
        "fdr_by": ["layer", "exposure", "adjustment"],
    }


def _feature_names(features: int) -> np.ndarray:
    return np.array([f"s__Species_{i:06d}" for i in range(features)], dtype=object)


def _string_column(names: np.ndarray, codes: np.ndarray) -> pa.Array:
    """``names[codes]`` as a plain (large) string column, as pandas writes a sumstats file."""
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(names, pa.large_string())).cast(pa.large_string())


def _kept_features(rng: np.random.Generator, features: int) -> np.ndarray:
    return rng.random(features) >= 0.03


def write_summary(path: Path, features: int, cohort: int, seed: int = 0) -> int:
    """One cohort's summary file: ``features`` x exposures x adjustments x models rows (some left out); returns its rows."""
    rng = np.random.default_rng(seed * 100 + cohort)
    truth = np.random.default_rng(seed).normal(0.0, 0.05, (features, len(EXPOSURES)))
    grid = (len(ADJUSTMENTS), len(MODELS), len(EXPOSURES), features)
    a, m, e, f = (g.ravel() for g in np.indices(grid, dtype=np.int32))
    keep = _kept_features(rng, features)[f] & (rng.random(f.size) >= 0.01)
    a, m, e, f = a[keep], m[keep], e[keep], f[keep]
    rows = f.size
    n = rng.integers(1500, 8000)
    se = 0.02 + 0.1 * rng.random(rows) * (1.0 + m)
    beta = truth[f, e] + rng.normal(0.0, 0.03, rows) + rng.normal(0.0, se)
    z = np.abs(beta / se)
    from scipy.stats import norm

    cases = rng.integers(50, 500)
    table = pa.table(
        {
            "layer": _string_column(np.array([LAYER], dtype=object), np.zeros(rows, np.int32)),
            "feature": _string_column(_feature_names(features), f),
            "exposure": _string_column(np.array(EXPOSURES, dtype=object), e),
            "adjustment": _string_column(np.array(ADJUSTMENTS, dtype=object), a),
            "model": _string_column(np.array(MODELS, dtype=object), m),
            "beta": beta,
            "se": se,
            "p": 2.0 * norm.sf(z),
            "n": np.full(rows, n, dtype=np.int64),
            "n_cases": np.full(rows, cases, dtype=np.int64),
            "n_controls": np.full(rows, n - cases, dtype=np.int64),
            "prevalence": rng.random(rows),
        }
    )
    pq.write_table(table, path)
    return rows


def write_sufficient(path: Path, features: int, cohort: int, seed: int = 0) -> int:
    """One cohort's cross-products: per exposure x adjustment (``lm``) and kept feature, positive definite ``Szz``; returns rows."""
    rng = np.random.default_rng(seed * 100 + 50 + cohort)
    keep = _kept_features(np.random.default_rng(seed * 100 + cohort), features)
    kept = np.flatnonzero(keep)
    m = kept.size
    names = _feature_names(features)
    pieces = []
    for exposure in EXPOSURES:
        for adjustment in ADJUSTMENTS:
            terms = ["exposure", "age", "sex[female]", "sex[male]", *EXTRA_TERMS[adjustment]]
            c = len(terms)
            n = rng.integers(1500, 8000, m)
            base = rng.normal(0.0, 1.0, (3 * c, c))
            sigma = base.T @ base / (3 * c)
            # sex[female] + sex[male] = 1: the two dummies are collinear, as a cohort's export is (the pool drops one level)
            sigma[3, :] = -sigma[2, :]
            sigma[:, 3] = -sigma[:, 2]
            sigma[3, 3] = sigma[2, 2]
            jitter = rng.random((m, c)) * 0.05
            zz = n[:, None, None] * (sigma[None] + jitter[:, :, None] * np.eye(c)[None])
            zz[:, 3, :] = -zz[:, 2, :]
            zz[:, :, 3] = -zz[:, :, 2]
            coef = rng.normal(0.0, 0.1, (m, c))
            zy = np.einsum("mab,mb->ma", zz, coef)
            yy = np.einsum("ma,ma->m", zy, coef) + n * rng.uniform(0.5, 2.0, m)
            upper_rows, upper_cols = np.triu_indices(c)
            packed = zz[:, upper_rows, upper_cols]
            q = packed.shape[1]

            def lists(values: np.ndarray, width: int) -> pa.Array:
                offsets = pa.array(np.arange(0, (m + 1) * width, width, dtype=np.int32))
                return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(values).ravel(), pa.float64()))

            cases = (n * 0.1).astype(np.int64)
            pieces.append(
                pa.table(
                    {
                        "layer": _string_column(np.array([LAYER], dtype=object), np.zeros(m, np.int32)).cast(pa.string()),
                        "feature": _string_column(names, kept).cast(pa.string()),
                        "exposure": pa.array([exposure] * m, pa.string()),
                        "adjustment": pa.array([adjustment] * m, pa.string()),
                        "analysis_id": pa.array([f"{exposure}-{adjustment}"] * m, pa.string()),
                        "n": pa.array(n, pa.int64()),
                        "n_cases": pa.array(cases, pa.int64()),
                        "n_controls": pa.array(n - cases, pa.int64()),
                        "terms": pa.ListArray.from_arrays(
                            pa.array(np.arange(0, (m + 1) * c, c, dtype=np.int32)), pa.array(terms * m, pa.string())
                        ),
                        "zz": lists(packed, q),
                        "zy": lists(zy, c),
                        "yy": pa.array(yy, pa.float64()),
                    }
                )
            )
    table = pa.concat_tables(pieces)
    pq.write_table(table, path)
    return table.num_rows


def write_sidecar(summary: Path, cohort: int, rows: int, sufficient_rows: int | None) -> None:
    """The sidecar ``meta`` and ``pool`` check: format, analysis (and its hash), layers, files with SHA-256."""
    from scalable_assoc.results.compatibility import spec_hash

    analysis = _analysis()
    files = {"summary": {"name": summary.name, "sha256": _sha256(summary), "rows": rows}}
    if sufficient_rows is not None:
        sufficient = summary.with_name(summary.stem + ".sufficient.parquet")
        files["sufficient"] = {"name": sufficient.name, "sha256": _sha256(sufficient), "rows": sufficient_rows}
    sidecar = {
        "format": FORMAT,
        "cohort": f"cohort_{cohort}",
        "created": "2026-01-01T00:00:00+00:00",
        "package_version": "benchmark",
        "plan_name": "consortium",
        "plan_hash": "0" * 16,
        "analysis": analysis,
        "analysis_hash": spec_hash(analysis),
        "fdr": {"by": ["layer", "exposure", "adjustment"], "alpha": 0.05},
        "min_cases": {"plan": 10, "used": 10},
        "layers": {
            LAYER: {
                **analysis["layers"][LAYER],
                "pseudocount_used": 1e-6,
                "samples": 5000 + cohort,
                "transform_features": {"from": "feature list", "sha256": "f" * 64, "features": 1, "absent": 0},
            }
        },
        "disclosure": {"min_cell_count": 3, "max_parameter_fraction": 0.33, "min_cases": 0},
        "withheld": {},
        "files": files,
    }
    summary.with_suffix(".json").write_text(json.dumps(sidecar, indent=2) + "\n", encoding="utf-8")


def make_cohorts(folder: Path, meta_features: int, pool_features: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Write the meta cohorts (``folder/meta``) and the pool cohorts (``folder/pool``); returns their summary files."""
    meta_files: list[Path] = []
    pool_files: list[Path] = []
    for kind, features in (("meta", meta_features), ("pool", pool_features)):
        (folder / kind).mkdir(parents=True, exist_ok=True)
        for k in range(1, COHORTS + 1):
            path = folder / kind / f"cohort_{k}.parquet"
            rows = write_summary(path, features, k, seed)
            extra = None
            if kind == "pool":
                extra = write_sufficient(path.with_name(path.stem + ".sufficient.parquet"), features, k, seed)
            write_sidecar(path, k, rows, extra)
            (meta_files if kind == "meta" else pool_files).append(path)
    return meta_files, pool_files


def measure(command: list[str], env: dict[str, str], label: str, cwd: Path = ROOT) -> dict:
    """Run ``command``; wall and CPU seconds (user + sys of the tree) and peak RSS (MB) of its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    process = psutil.Popen(command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak = 0
    while process.poll() is None:
        rss = 0
        try:
            tree = [process, *process.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for member in tree:
            try:
                rss += member.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        peak = max(peak, rss)
        time.sleep(0.1)
    out, err = process.communicate()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if process.returncode != 0:
        raise RuntimeError(f"{label} failed ({process.returncode}): {err.decode()[-2000:]}")
    # every process of the tree was waited for by its parent, so the children's rusage holds all of them
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "peak_rss_mb": round(peak / 2**20, 1), "stdout": out.decode().strip()}


def _environment(source: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(source)
    env.pop("SCALABLE_ASSOC_PROGRESS", None)
    return env


def _commands(files_meta: list[Path], files_pool: list[Path], out: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "scalable_assoc.cli"]
    return {
        "meta": [*cli, "meta", *map(str, files_meta), "--out", str(out / "meta"), "--method", "reml"],
        "pool": [*cli, "pool", *map(str, files_pool), "--out", str(out / "pool")],
    }


def _before_source(revision: str, scratch: Path) -> Path:
    """The package as it was at ``revision`` (``git archive``, no worktree), to time side by side."""
    target = scratch / "before"
    if not target.exists():
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "scalable_assoc"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def metafor_loop(rows: int, cohorts: int = COHORTS) -> dict | None:
    """R metafor rma.uni (REML) one row per call on ``rows`` random rows; None when R or metafor is missing."""
    if shutil.which("Rscript") is None:
        print("R is not installed: skipping the metafor comparison", file=sys.stderr)
        return None
    check = subprocess.run(["Rscript", "-e", "library(metafor)"], capture_output=True)
    if check.returncode != 0:
        print("R's metafor is not installed: skipping the metafor comparison", file=sys.stderr)
        return None
    script = f"""
suppressMessages(library(metafor))
set.seed(1)
k <- {cohorts}; r <- {rows}
y <- matrix(rnorm(r * k, 0, 0.1), r); v <- matrix(runif(r * k, 0.001, 0.02), r)
start <- Sys.time()
for (i in seq_len(r)) {{ fit <- try(rma.uni(yi = y[i, ], vi = v[i, ], method = "REML"), silent = TRUE) }}
cat(as.numeric(Sys.time() - start, units = "secs"), "\\n")
"""
    result = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True, check=True)
    return {"rows": rows, "seconds": float(result.stdout.split()[-1])}


def _stacked_estimates(tables: list[pa.Table], every: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(r, k)`` beta and se: row ``i`` of each cohort side by side (every ``every``-th row), NaN past a cohort's end.

    Not lined up by key (that is the real command's work); the values are the cohorts' own, so the
    REML steps a row needs are what the real rows need.
    """
    rows = max(t.num_rows for t in tables)
    picked = np.arange(0, rows, every)
    beta = np.full((picked.size, len(tables)), np.nan)
    se = np.full((picked.size, len(tables)), np.nan)
    for j, table in enumerate(tables):
        mine = picked[picked < table.num_rows]
        beta[: mine.size, j] = table.column("beta").to_numpy()[mine]
        se[: mine.size, j] = table.column("se").to_numpy()[mine]
    return beta, se


def _steps_per_row(beta: np.ndarray, se: np.ndarray) -> float:
    """Mean REML steps per row of the package's kernel on these rows (its step function counted, not timed)."""
    from scalable_assoc.stats import meta

    counted = [0]
    score = meta._reml_score

    def counting(y, v, t, work=None):  # type: ignore[no-untyped-def]
        counted[0] += t.size
        return score(y, v, t, work)

    meta._reml_score = counting  # type: ignore[assignment]
    try:
        meta.combine_estimates(beta, se, "reml")
    finally:
        meta._reml_score = score  # type: ignore[assignment]
    return counted[0] / max(1, beta.shape[0])


def _update_pass(beta: np.ndarray, se: np.ndarray, block_rows: int = 50_000) -> float:
    """Seconds of one REML step over every row, vectorised (the kernel's score and a Fisher step), in blocks on every CPU."""
    from scalable_assoc.results.coded_keys import thread_map, worker_threads
    from scalable_assoc.stats import meta

    def block(start: int) -> None:
        y = np.ascontiguousarray(np.nan_to_num(beta[start : start + block_rows]).T)
        v = np.ascontiguousarray(np.where(np.isfinite(se[start : start + block_rows]), se[start : start + block_rows], np.inf).T) ** 2
        work = meta._Workspace(y.shape[0], y.shape[1])
        t = np.zeros(y.shape[1])
        with np.errstate(divide="ignore", invalid="ignore"):  # rows of one cohort (past the other cohorts' ends)
            for repeat in range(2):  # the second step timed: the kernel's buffers are in use by then, as in a real run
                begin = time.perf_counter()
                score, expected, _ = meta._reml_score(y, v, t, work)
                np.maximum(t + score / expected, 0.0, out=t)
                if repeat:
                    timed.append(time.perf_counter() - begin)

    timed: list[float] = []
    thread_map(block, list(range(0, beta.shape[0], block_rows)))
    return sum(timed) / worker_threads()


def floor_case(meta_files: list[Path], iterations_sample: int = 200_000) -> dict:
    """What the machine needs at least for ``meta --method reml``: reading the columns the command reads, plus
    the REML update over all rows for as many steps per row as the package's kernel takes on these rows.

    The read is timed (pyarrow, key columns dictionary-encoded, as the command reads them, one file after
    another); the update is one vectorised pass over every row (timed, on every CPU) times the mean steps
    per row (counted on an evenly spaced sample of ``iterations_sample`` rows). Everything else the command
    does (checking files, lining up keys, p-values, FDR, writing Parquet and TSV) is left out.
    """
    keys = ["layer", "feature", "exposure", "adjustment", "model"]
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    tables = [pq.read_table(path, columns=[*keys, "beta", "se", "n"], read_dictionary=keys) for path in meta_files]
    read_s = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    read_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rows = max(t.num_rows for t in tables)
    beta, se = _stacked_estimates(tables)
    sample_beta, sample_se = _stacked_estimates(tables, every=max(1, rows // iterations_sample))
    del tables
    steps = _steps_per_row(sample_beta, sample_se)
    pass_s = _update_pass(beta, se)
    floor_s = read_s + pass_s * steps
    return {
        "case": "meta_floor",
        "what": (
            f"floor of meta REML: pyarrow read of the needed columns of {len(meta_files)} cohorts ({read_s:.1f} s) + one vectorised "
            f"REML step over {rows:,} rows x {len(meta_files)} cohorts ({pass_s:.2f} s) x {steps:.1f} steps per row"
        ),
        "wall_s": round(floor_s, 3),
        "cpu_s": round(read_cpu + pass_s * steps * _cpus(), 3),
        "peak_rss_mb": None,
        "read_s": round(read_s, 3),
        "update_pass_s": round(pass_s, 4),
        "steps_per_row": round(steps, 2),
    }


def _cpus() -> int:
    from scalable_assoc.results.coded_keys import worker_threads

    return worker_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="5 x 200,000 meta rows and 5,000 pool features")
    parser.add_argument("--dir", type=Path, help="where to write the cohorts (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder")
    parser.add_argument("--before", metavar="REV", help="also time the commands of this git revision")
    parser.add_argument("--meta-features", type=int, help="meta features (default 125,000; --quick 2,500)")
    parser.add_argument("--pool-features", type=int, help="pool features (default 100,000; --quick 5,000)")
    args = parser.parse_args()
    meta_features = args.meta_features or (2_500 if args.quick else 125_000)
    pool_features = args.pool_features or (5_000 if args.quick else 100_000)
    folder = (Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench_meta_"))).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        start = time.perf_counter()
        meta_files, pool_files = make_cohorts(folder, meta_features, pool_features)
        meta_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in meta_files)
        pool_rows = sum(pq.ParquetFile(p.with_name(p.stem + ".sufficient.parquet")).metadata.num_rows for p in pool_files)
        print(f"wrote the cohorts in {time.perf_counter() - start:.1f} s: meta {meta_rows:,} rows, pool {pool_rows:,} cross-product rows")
        sources = {"ours": ROOT}
        if args.before:
            sources["before"] = _before_source(args.before, folder)
        cases = []
        for who, source in sources.items():
            commands = _commands(meta_files, pool_files, folder / f"out_{who}")
            for kind, command in commands.items():
                result = measure(command, _environment(source), f"{who} {kind}", cwd=source)  # python -m imports from the folder it runs in
                what = (
                    f"scalable-assoc meta --method reml, {COHORTS} cohorts x {meta_rows // COHORTS:,} rows ({meta_features:,} features)"
                    if kind == "meta"
                    else f"scalable-assoc pool, {COHORTS} cohorts x {pool_features:,} features ({pool_rows // COHORTS:,} analyses each)"
                )
                cases.append({"case": f"{kind}_{who}", "what": f"{what} [{who}]", **result})
                print(
                    f"{kind:5} {who:7} wall {result['wall_s']:7.1f} s  cpu {result['cpu_s']:7.1f} s  peak {result['peak_rss_mb']:8.0f} MB"
                )
        floor = floor_case(meta_files)
        cases.append(floor)
        print(f"floor       wall {floor['wall_s']:7.1f} s  ({floor['what']})")
        r = metafor_loop(2_000)
        if r is not None:
            per_row = r["seconds"] / r["rows"]
            cases.append(
                {
                    "case": "meta_metafor_loop",
                    "what": f"R metafor rma.uni REML one row per call, {r['rows']} rows timed, scaled to {meta_rows // COHORTS:,} rows",
                    "wall_s": round(per_row * meta_rows / COHORTS, 1),
                    "cpu_s": round(per_row * meta_rows / COHORTS, 1),
                    "peak_rss_mb": None,
                    "measured_rows": r["rows"],
                    "measured_s": r["seconds"],
                }
            )
        ours = {c["case"]: c for c in cases}
        scale_meta = "" if not args.quick else " (quick size)"
        aims = [
            {
                "key": "meta_reml",
                "aim": f"meta REML 5 cohorts x 10M rows <= {META_AIM_S:.0f} s{scale_meta}",
                "value": ours["meta_ours"]["wall_s"],
                "target": META_AIM_S,
                "unit": "s",
                "met": ours["meta_ours"]["wall_s"] <= META_AIM_S,
                # what the machine needs at least (case meta_floor): reading the columns + the REML steps, nothing else
                "floor": {"value": floor["wall_s"], "what": floor["what"]},
            },
            {
                "key": "pool_100k_features",
                "aim": f"pooled model at 100,000 features <= {POOL_AIM_S:.0f} s{scale_meta}",
                "value": ours["pool_ours"]["wall_s"],
                "target": POOL_AIM_S,
                "unit": "s",
                "met": ours["pool_ours"]["wall_s"] <= POOL_AIM_S,
            },
        ]
        for case in cases:
            case.pop("stdout", None)
        args.json.write_text(json.dumps({"cases": cases, "aims": aims}, indent=2) + "\n", encoding="utf-8")
        print(json.dumps(aims, indent=2))
    finally:
        if not args.keep and not args.dir:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
