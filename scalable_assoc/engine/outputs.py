"""A run's output files: what they are, writing them from the finished chunks, and reading a finished run back ("up to date")."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from scalable_assoc import __version__
from scalable_assoc.engine.alpha import assemble_alpha_results
from scalable_assoc.engine.chunks import ChunkTask
from scalable_assoc.engine.filters import LayerFilter, feature_table
from scalable_assoc.engine.prepare import PreparedStudy
from scalable_assoc.errors import DataError
from scalable_assoc.io.atomic import file_checksum, write_parquet, write_tsv, write_tsv_table
from scalable_assoc.io.ingest import input_checksum
from scalable_assoc.io.runstate import read_status
from scalable_assoc.plan.schema import MODELS, Plan
from scalable_assoc.results.alpha_names import ALPHA_VALUES_FILE
from scalable_assoc.results.columns import COVARIATE_SCHEMA
from scalable_assoc.results.gather import (
    assemble_table,
    concat_chunks,
    read_chunk,
    results_frame,
    results_table,
    significant_table,
    sorted_by_family_q,
    sorted_table_by_family_q,
)
from scalable_assoc.results.summary import adjustment_summary, joint_presence_abundance, survival_readout

logger = logging.getLogger(__name__)

#: The report's figures (scalable_assoc.report), drawn from the output files; removed with them.
FIGURES_DIR = "figures"
OUTPUT_FILES = (
    "manifest.json",
    "permanova.parquet",  # engine/permanova.py (plan diversity.beta)
    "permanova.tsv",
    ALPHA_VALUES_FILE,  # engine/alpha.py (plan diversity.alpha): per-sample metrics, for the report
    "results.parquet",
    "all_results.tsv",
    "significant_results.tsv",
    "adjustment_summary.tsv",
    "adjustment_survival.tsv",
    "features.parquet",
    "features.tsv",
    "joint_results.parquet",
    "joint_results.tsv",
    "covariate_results.parquet",
    "covariate_results.tsv",
    # written after the run by the command (scalable_assoc.report), from the files above
    "report.html",
)
WORK_DIR = ".scalable_assoc"


@dataclass
class RunSummary:
    """What a finished run produced (paths are inside ``out_dir``)."""

    out_dir: Path
    results: pd.DataFrame
    adjustment: pd.DataFrame
    survival: pd.DataFrame
    manifest: dict
    chunks_total: int
    chunks_reused: int
    seconds: float


def remove_outputs(out_dir: Path) -> None:
    """An earlier run's results must not outlive a run that then fails: they would look like its answer."""
    for name in OUTPUT_FILES:
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / FIGURES_DIR, ignore_errors=True)


def up_to_date(plan: Plan, out: Path, options: dict[str, object], features: Path | None) -> RunSummary | None:
    """The finished run in ``out`` when it was made by this version from this plan, these inputs and options; else None.

    Inputs are compared by content (SHA-256), so a touched but unchanged file
    does not count as a change, and an edited one always does.
    """
    status = read_status(out)
    if status is None or status.state != "finished":
        return None
    try:
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    # The cheap comparisons first, the inputs' checksums next, the outputs last.
    if manifest.get("version") != __version__ or manifest.get("plan_hash") != plan.content_hash():
        return None
    if any(manifest.get(key) != value for key, value in options.items()):
        return None
    inputs = manifest.get("inputs", {})
    expected = {"metadata": plan.metadata, **{f"layer:{layer.name}": layer.path for layer in plan.layers}}
    store_layers = {f"layer:{layer.name}": (layer.name, layer.store_layer) for layer in plan.layers}
    listed = features if features is not None else plan.features
    recorded = manifest.get("features")
    if set(inputs) != set(expected) or (listed is None) != (recorded is None):
        return None
    if listed is not None and (not listed.is_file() or recorded.get("sha256") != file_checksum(listed)):
        return None
    for key, path in expected.items():
        if not path.exists():
            return None
        try:
            # A layer of a store made by 'ingest --layer' is checked by that layer's checksum, as prepare records it.
            checksum = input_checksum(path, *store_layers[key]) if key in store_layers else file_checksum(path)
        except DataError:  # the store no longer holds the layer: the run is not up to date; preparing says why
            return None
        if inputs[key].get("sha256") != checksum:
            return None
    try:
        results = pd.read_parquet(out / "results.parquet")
        adjustment = pd.read_csv(out / "adjustment_summary.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
        survival = pd.read_csv(out / "adjustment_survival.tsv", sep="\t", keep_default_na=False, na_values=["NA"])
    except (OSError, ValueError):
        return None
    return RunSummary(
        out, results, adjustment, survival, manifest, int(manifest.get("chunks_total", 0)), int(manifest.get("chunks_total", 0)), 0.0
    )


def exposure_row_order(study: PreparedStudy) -> list[str]:
    """The results' exposure values in plan order: a categorical exposure's omnibus row, then its levels."""
    order: list[str] = []
    for exposure in study.plan.exposures:
        order.append(exposure.name)
        for layer in study.layers:
            for analysis in layer.analyses:
                if analysis.key.exposure == exposure.name:
                    order += [f"{exposure.name}[{level}]" for level in analysis.levels[1:]]
    return list(dict.fromkeys(order))


def covariate_results(study: PreparedStudy, paths: list[Path]) -> pd.DataFrame:
    """Covariate coefficient rows of every chunk, in plan order (layer, exposure, adjustment, feature), terms in design order."""
    tables = [pq.read_table(path, schema=COVARIATE_SCHEMA) for path in paths]
    frame = (pa.concat_tables(tables) if tables else COVARIATE_SCHEMA.empty_table()).to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype()}.get
    )
    feature_rank = np.zeros(len(frame), dtype=np.int64)
    term_rank = np.zeros(len(frame), dtype=np.int64)
    for layer in study.layers:
        rows = (frame["layer"] == layer.spec.name).to_numpy()
        feature_rank[rows] = pd.Index(layer.store.feature_ids).get_indexer(frame.loc[rows, "feature"])
        for analysis in layer.analyses:
            names = layer.designs[analysis.design_key].names
            these = (
                rows & (frame["exposure"] == analysis.key.exposure).to_numpy() & (frame["adjustment"] == analysis.key.adjustment).to_numpy()
            )
            term_rank[these] = pd.Index(names).get_indexer(frame.loc[these, "term"])
    codes = [
        pd.Categorical(frame[column], categories=categories, ordered=True).codes
        for column, categories in (
            ("layer", [layer.spec.name for layer in study.layers]),
            ("exposure", [e.name for e in study.plan.exposures]),
            ("adjustment", list(study.plan.adjustments)),
        )
    ]
    order = np.lexsort((term_rank, feature_rank, codes[2], codes[1], codes[0]))
    return frame.iloc[order].reset_index(drop=True)


class _SystemMemoryPool(contextlib.ContextDecorator):
    """Arrow allocates in the C library's heap (``malloc``) inside, not in pyarrow's default pool (mimalloc); restored after.

    On a VM that hands freed memory back to its host, memory first touched
    costs a fault into the host: mimalloc's fresh segments cost the gather at
    100,000 features 0.5-0.85 s of system CPU in a new process (0.25-0.28 s
    with ``malloc``, for twice as many page faults of the small kind), on top of
    about 1.0 s of user CPU, the same with either. Only the client's threads
    that gather run Arrow code meanwhile; a buffer is always freed by the pool
    that allocated it, whichever pool is the default then.

    The default pool is the process's, so entries are counted across threads:
    the first switches, the last out restores. Two runs gathering at once in one
    process (threads calling :func:`~scalable_assoc.run_study`) then leave the
    default as they found it, whichever ends first.
    """

    _lock = threading.Lock()
    _entered = 0
    _previous: pa.MemoryPool | None = None

    def __enter__(self) -> None:
        cls = _SystemMemoryPool
        with cls._lock:
            if cls._entered == 0:
                cls._previous = pa.default_memory_pool()
                pa.set_memory_pool(pa.system_memory_pool())
            cls._entered += 1

    def __exit__(self, *_: object) -> None:
        cls = _SystemMemoryPool
        with cls._lock:
            cls._entered -= 1
            if cls._entered == 0 and cls._previous is not None:
                pa.set_memory_pool(cls._previous)
                cls._previous = None


def system_memory_pool() -> _SystemMemoryPool:
    """A context (and decorator) in which Arrow allocates from the C library's heap: see :class:`_SystemMemoryPool`."""
    return _SystemMemoryPool()


class FinishedChunks:
    """The result rows of finished chunks, read by the client as their fit tasks finish, for the gather.

    During the fit phase the client only waits on the workers, so reading each
    chunk's file there takes that work (0.4 s of the gather at 100,000 features,
    183 files) off the time after the last fit. A chunk not read here (done by an
    earlier run, every feature filtered out, or a file not readable yet) is read
    by the gather, which then raises any error as before.
    """

    def __init__(self, chunks_dir: Path) -> None:
        self.chunks_dir = chunks_dir
        self.tables: dict[str, pa.Table] = {}

    def read(self, task: ChunkTask) -> None:
        """Read the rows file of a chunk whose task finished (the file is complete: it was renamed into place before)."""
        try:
            with system_memory_pool():  # the gather's rows: see system_memory_pool
                self.tables[task.chunk_id] = read_chunk(task.rows_file(self.chunks_dir), encoded_labels=True)
        except (OSError, pa.ArrowException) as error:  # a shared filesystem may show the file later; the gather reads it again
            logger.debug("chunk %s not read after its fit (%s); the gather reads it", task.chunk_id, error)

    def table(self, task: ChunkTask) -> pa.Table:
        """The chunk's rows, labels encoded (:data:`~scalable_assoc.results.gather.ENCODED_PARTIAL_SCHEMA`), read now if not before."""
        table = self.tables.pop(task.chunk_id, None)
        return table if table is not None else read_chunk(task.rows_file(self.chunks_dir), encoded_labels=True)


@system_memory_pool()
def write_outputs(
    study: PreparedStudy,
    tasks: list[ChunkTask],
    chunks_dir: Path,
    filters: dict[str, LayerFilter],
    out: Path,
    covariate_rows: bool,
    alpha_rows: pa.Table | None = None,
    finished: FinishedChunks | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Gather every chunk into the results (FDR per family), write every output file but the manifest; returns results, summary, survival.

    ``results.parquet`` keeps plan order (runs compare row by row); the TSV is
    for reading: by q within family. ``alpha_rows`` (:mod:`scalable_assoc.engine.alpha`)
    follow the feature rows, with q-values from families of their own.
    ``finished`` holds chunk rows already read during the fit phase (in any order:
    the rows are gathered in the order of ``tasks``); the others are read here.
    Arrow allocates in the C library's heap meanwhile (:func:`system_memory_pool`).
    """
    plan = study.plan
    chunks = finished if finished is not None else FinishedChunks(chunks_dir)
    partial = concat_chunks([chunks.table(t) for t in tasks])
    table = assemble_table(
        partial,
        [layer.spec.name for layer in study.layers],
        exposure_row_order(study),
        list(plan.adjustments),
        {layer.spec.name: layer.store.feature_ids for layer in study.layers},
        plan.fdr.by,
        MODELS,
    )
    del partial  # its rows are in ``table`` now
    results = results_frame(table)
    if alpha_rows is not None:  # alpha diversity rows: their own FDR families, after the feature rows
        alpha = assemble_alpha_results(study, alpha_rows, exposure_row_order(study), MODELS)
        if len(alpha):
            results = pd.concat([results, alpha], ignore_index=True)
            table = pa.concat_tables([table, results_table(alpha).replace_schema_metadata(None)])
    # Two threads: Arrow's sort, take and writers release the GIL, so the by-q files are sorted and written on a
    # second thread while this one builds the summaries (pandas); results.parquet is written by whichever thread is
    # free first. Each file is written whole or not at all (io/atomic), and leaving the pool waits for the second
    # thread, so no writer outlives this call.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs") as pool:
        by_q = pool.submit(_write_by_q_files, out, table, results, plan.fdr.by, plan.fdr.alpha)
        plan_order = pool.submit(_write_plan_order, out, table, results)
        summary = adjustment_summary(results, list(plan.adjustments), plan.fdr.alpha)
        survival = survival_readout(summary, list(plan.adjustments))
        write_tsv(out / "adjustment_summary.tsv", summary)
        write_tsv(out / "adjustment_survival.tsv", survival)
        features = feature_table(study, filters)
        write_parquet(out / "features.parquet", features)
        write_tsv(out / "features.tsv", features)
        if all(any(model in layer.spec.models for layer in study.layers) for model in ("lm_nonzero", "prevalence")):
            joint = joint_presence_abundance(results, plan.fdr.by)
            write_parquet(out / "joint_results.parquet", joint)
            write_tsv(out / "joint_results.tsv", joint)
        if covariate_rows:
            covariates = covariate_results(study, [path for t in tasks if (path := t.covariates_file(chunks_dir)) is not None])
            write_parquet(
                out / "covariate_results.parquet", pa.Table.from_pandas(covariates, schema=COVARIATE_SCHEMA, preserve_index=False)
            )
            write_tsv(out / "covariate_results.tsv", covariates)
        if plan_order.cancel():  # not started: the second thread is still on the by-q files
            _write_plan_order(out, table, results)
    by_q.result()  # re-raise the second thread's errors here
    if not plan_order.cancelled():
        plan_order.result()
    return results, summary, survival


def _write_plan_order(out: Path, table: pa.Table, results: pd.DataFrame) -> None:
    """``results.parquet``: the results table in plan order, with the pandas metadata of ``results`` (the same bytes as from the frame)."""
    write_parquet(out / "results.parquet", table.replace_schema_metadata(results_table(results.iloc[:0]).schema.metadata))


def _write_by_q_files(out: Path, table: pa.Table, results: pd.DataFrame, fdr_by: Sequence[str], alpha: float) -> None:
    """``all_results.tsv`` (by q within family) and ``significant_results.tsv`` (q < alpha, by q) from the results table.

    The files come from the Arrow table (no conversion of the whole frame back), the same bytes as from the frame.
    """
    write_tsv_table(out / "all_results.tsv", sorted_table_by_family_q(table, fdr_by), lambda: sorted_by_family_q(results, fdr_by))
    significant = significant_table(table, alpha)
    write_tsv_table(out / "significant_results.tsv", significant, lambda: results_frame(significant))
