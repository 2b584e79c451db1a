"""limma-voom and limma-trend through R (``Rscript`` and the Bioconductor package limma), for the methods benchmark.

The benchmark compares our models with limma where R and limma are installed
(:func:`limma_unavailable` says why not otherwise). :func:`run_limma` fits every job in
ONE ``Rscript`` process (R's start-up and loading limma take about a second): it writes
each job's counts and design as TSV files in a work folder (R's arrow is not assumed),
runs the package's ``limma_methods.R`` on them and reads back, per job and method, the
exposure's coefficient and p-value.

- voom: ``voom(counts, design)`` (library sizes = column sums, no normalisation factors),
  then ``lmFit`` and ``eBayes``.
- trend: log2-CPM with a prior count (edgeR's ``cpm(log=TRUE, prior.count)`` formula:
  the prior scaled by library size), ``lmFit``, ``eBayes(trend=TRUE)``.

The design is an intercept plus the job's covariates (the exposure among them). Features
are fitted as limma fits them: filter features without reads (and samples without reads)
before, as the engine does for its own models; limma-voom gives an all-zero feature a
beta and a p-value (limma-trend gives beta 0, p 1).
"""

from __future__ import annotations

import importlib.resources
import logging
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from scalable_assoc.errors import DataError

logger = logging.getLogger(__name__)

#: The methods :func:`run_limma` knows, and the ``model`` each reports.
LIMMA_MODELS = {"voom": "limma_voom", "trend": "limma_trend"}
#: Prior count of limma-trend's log2-CPM (the value of the limma User's Guide's limma-trend example).
TREND_PRIOR_COUNT = 3.0
#: Characters of R's standard error shown in an error message.
STDERR_TAIL = 2000
_SCRIPT = "limma_methods.R"


@dataclass(frozen=True)
class LimmaJob:
    """One limma fit: read counts, the covariates of the design (an intercept is added), the exposure tested.

    ``counts``: ``(n, F)`` int64 read counts, samples in rows. ``feature_names``: the ``F``
    names. ``design``: ``n`` rows of numeric covariates (no missing values, no intercept
    column), the exposure among its columns. ``methods``: any of ``voom``, ``trend``.
    """

    counts: np.ndarray
    feature_names: Sequence[str]
    design: pd.DataFrame
    exposure: str
    methods: tuple[str, ...] = ("voom", "trend")


def limma_unavailable(timeout: float = 120.0) -> str | None:
    """None when ``Rscript`` is on PATH and ``library(limma)`` loads; else the reason (to log as ``limma-... skipped: <reason>``)."""
    rscript = shutil.which("Rscript")
    if rscript is None:
        return "Rscript is not on PATH (install R, e.g. Debian's r-base-core)"
    try:
        done = subprocess.run(
            [rscript, "--vanilla", "-e", "suppressPackageStartupMessages(library(limma))"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"Rscript could not be run: {error}"
    if done.returncode != 0:
        return f"the R package limma does not load (install Bioconductor limma, e.g. Debian's r-bioc-limma): {_tail(done.stderr)}"
    return None


def _tail(text: str) -> str:
    text = text.strip()
    return text if len(text) <= STDERR_TAIL else "..." + text[-STDERR_TAIL:]


def _check_job(index: int, job: LimmaJob) -> None:
    """Refuse a malformed job before R sees it, naming it."""
    counts = np.asarray(job.counts)
    name = f"limma job {index} (exposure '{job.exposure}')"
    if counts.ndim != 2 or counts.shape[1] != len(job.feature_names):
        raise DataError(f"{name}: counts have shape {counts.shape}, expected (samples, {len(job.feature_names)} features)")
    if not np.issubdtype(counts.dtype, np.integer) or (counts.size and counts.min() < 0):
        raise DataError(f"{name}: counts must be non-negative integers")
    if len(job.design) != counts.shape[0]:
        raise DataError(f"{name}: the design has {len(job.design)} rows, the counts {counts.shape[0]} samples")
    if job.exposure not in job.design.columns:
        raise DataError(f"{name}: the exposure is not a design column ({', '.join(map(str, job.design.columns))})")
    values = job.design.to_numpy(dtype=np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{name}: the design has missing or infinite values")
    unknown = [m for m in job.methods if m not in LIMMA_MODELS]
    if unknown or not job.methods:
        raise DataError(f"{name}: methods must be among {', '.join(LIMMA_MODELS)}, got {list(job.methods)}")
    if any("\t" in str(c) or "\n" in str(c) for c in job.design.columns):
        raise DataError(f"{name}: design column names must not contain tabs or newlines")


def _write_inputs(jobs: Sequence[LimmaJob], workdir: Path) -> None:
    rows = []
    for index, job in enumerate(jobs):
        folder = workdir / f"job_{index:05d}"
        folder.mkdir(parents=True, exist_ok=True)
        for stale in ("done", "error.txt", "voom.tsv", "trend.tsv"):
            (folder / stale).unlink(missing_ok=True)
        pd.DataFrame(np.asarray(job.counts, dtype=np.int64)).to_csv(folder / "counts.tsv", sep="\t", header=False, index=False)
        job.design.to_csv(folder / "design.tsv", sep="\t", index=False, float_format="%.17g")
        rows.append(
            {
                "job": folder.name,
                "samples": job.counts.shape[0],
                "features": job.counts.shape[1],
                "exposure": job.exposure,
                "methods": ",".join(job.methods),
                "prior_count": repr(TREND_PRIOR_COUNT),
            }
        )
    pd.DataFrame(rows).to_csv(workdir / "jobs.tsv", sep="\t", index=False)


def _read_outputs(index: int, job: LimmaJob, folder: Path, stderr: str) -> pd.DataFrame:
    name = f"limma job {index} (exposure '{job.exposure}')"
    error = folder / "error.txt"
    if error.exists():
        raise DataError(f"{name} failed in R: {error.read_text().strip()}")
    if not (folder / "done").exists():
        raise DataError(f"{name} did not finish in R: {_tail(stderr)}")
    frames = []
    for method in job.methods:
        table = pd.read_csv(folder / f"{method}.tsv", sep="\t", dtype=np.float64, na_values=["NA", "NaN"])
        if len(table) != len(job.feature_names):
            raise DataError(f"{name}: R returned {len(table)} rows for {method}, expected {len(job.feature_names)}")
        frames.append(
            pd.DataFrame(
                {
                    "model": LIMMA_MODELS[method],
                    "feature": pd.Series(list(job.feature_names), dtype=object),
                    "beta": table["logFC"].to_numpy(dtype=np.float64),
                    "p": table["P.Value"].to_numpy(dtype=np.float64),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def run_limma(jobs: Sequence[LimmaJob], workdir: Path, timeout: float | None = None) -> list[pd.DataFrame]:
    """Fit every job with limma in one ``Rscript`` process; per job a frame of its methods' results.

    Each frame has one row per (method, feature), methods in the job's order, features in
    input order: ``model`` (str: limma_voom | limma_trend), ``feature`` (str), ``beta``
    (float64: limma's logFC of the exposure, log2 units per unit of the exposure), ``p``
    (float64: limma's moderated-t P.Value). The caller sets ``method``, ``transform``,
    ``adjustment`` and ``q``. Inputs and outputs stay in ``workdir`` (one folder per job).

    Raises :class:`~scalable_assoc.errors.DataError` naming the job for a malformed job or
    one that fails in R (with R's message), or with the tail of R's standard error when the
    R process fails.
    """
    if not jobs:
        return []
    for index, job in enumerate(jobs):
        _check_job(index, job)
    rscript = shutil.which("Rscript")
    if rscript is None:
        raise DataError("limma: Rscript is not on PATH")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _write_inputs(jobs, workdir)
    with importlib.resources.as_file(importlib.resources.files("scalable_assoc.io") / _SCRIPT) as script:
        try:
            done = subprocess.run(
                [rscript, "--vanilla", str(script), str(workdir)], capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as error:
            raise DataError(f"limma: R did not finish {len(jobs)} jobs within {timeout} s") from error
    if done.returncode != 0:
        # R prints some fatal errors (e.g. a script it cannot open) on standard output.
        raise DataError(f"limma: Rscript exited with status {done.returncode}: {_tail(done.stderr + done.stdout)}")
    if done.stderr.strip():
        logger.debug("limma R messages: %s", _tail(done.stderr))
    return [_read_outputs(index, job, workdir / f"job_{index:05d}", done.stderr) for index, job in enumerate(jobs)]
