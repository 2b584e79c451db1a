"""Functions that run inside Dask tasks, on workers (the client names them by :mod:`scalable_assoc.engine.task_refs`).

Each reads whole Zarr chunks by path (workers need the store on a shared
filesystem), calls the numeric kernels and returns small results, except
:func:`fit_chunk`, which writes its rows to one Parquet file per chunk id,
atomically, so a task that runs twice (a worker died after finishing) only
replaces its own file with an identical one.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa

from scalable_assoc.engine.blocks import ModelBlock, array_bytes
from scalable_assoc.engine.designs import DesignInput, PreparedAnalysis, read_design
from scalable_assoc.engine.task_refs import SoloChunk
from scalable_assoc.io.atomic import seal, write_parquet
from scalable_assoc.io.chunk_files import read_block
from scalable_assoc.models.design import CovariateDesign, factorise_covariates
from scalable_assoc.models.fits import FitStatus, SlopeFits, withhold_rare_carriers
from scalable_assoc.models.lmm import VarianceComponents, fit_random_intercept
from scalable_assoc.models.logistic import fit_logistic_designs
from scalable_assoc.models.ols import PreparedBlock, fit_design_batch
from scalable_assoc.models.ols_terms import fit_terms, level_dummies
from scalable_assoc.models.pooled import centred_cross_products, with_reference_dummies
from scalable_assoc.plan.schema import OlsOptions
from scalable_assoc.results.arrow_arrays import empty_table
from scalable_assoc.results.columns import COVARIATE_SCHEMA
from scalable_assoc.results.partials import AnalysisLabels, categorical_to_table, covariate_table, fits_to_table
from scalable_assoc.results.sumstats_format import SUFFICIENT_SCHEMA, cross_products_table
from scalable_assoc.stats.transforms import (
    FeatureSummary,
    apply_transform,
    feature_summary,
    nonzero_values,
    presence_indicator,
    sample_summaries,
)


def kept_columns(block: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """``block[:, kept]`` (``kept`` ``(m,)`` bool): the block itself when every feature is kept, else a copy.

    ``np.compress`` gathers the same columns several times faster than boolean
    indexing of a row-major block; callers never write into the result.
    """
    return block if kept.all() else np.compress(kept, block, axis=1)


def summarise_block(store_path: Path, start: int, stop: int, sample_positions: np.ndarray) -> FeatureSummary:
    """Prevalence counts and smallest positive value per feature of one block."""
    return feature_summary(read_block(store_path, start, stop, sample_positions))


def sum_block(
    store_path: Path,
    start: int,
    stop: int,
    sample_positions: np.ndarray,
    kept: np.ndarray,
    transform: str,
    pseudocount: float,
    nonzero_threshold: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample partial sums over the block's kept features (for CLR / TSS / AST).

    With ``nonzero_threshold`` the sums run over present values only (the CLR of
    the non-zero view, whose geometric mean is over the features a sample has).
    """
    raw = kept_columns(read_block(store_path, start, stop, sample_positions), kept)
    if nonzero_threshold is not None:
        raw = nonzero_values(raw, nonzero_threshold)
    return sample_summaries(raw, transform, pseudocount)


def _view_of(
    raw: np.ndarray,
    view: str,
    transform: str,
    pseudocount: float,
    sample_totals: tuple[np.ndarray, np.ndarray] | None,
    presence_threshold: float,
) -> np.ndarray:
    """One view of raw kept values (see :func:`model_block`)."""
    if view == "presence":
        return presence_indicator(raw, presence_threshold)
    total, count = sample_totals if sample_totals is not None else (None, None)
    if view == "nonzero":
        return apply_transform(nonzero_values(raw, presence_threshold), transform, 0.0, total, count)
    return apply_transform(raw, transform, pseudocount, total, count)


def model_block(
    store_path: Path,
    start: int,
    stop: int,
    sample_positions: np.ndarray,
    kept: np.ndarray,
    view: str,
    transform: str,
    pseudocount: float,
    sample_totals: tuple[np.ndarray, np.ndarray] | None,
    presence_threshold: float,
) -> ModelBlock:
    """One view of the block's kept features and where they are present, from one read of the store.

    Views, ``(n_used, kept.sum())``: ``transformed``, the layer's transform (lm,
    lmm); ``nonzero``, the transform of present values only, absent ones
    missing (lm_nonzero; CLR and log need no pseudocount); ``presence``, 1/0/NaN
    indicators of the raw values (prevalence).
    """
    raw = kept_columns(read_block(store_path, start, stop, sample_positions), kept)
    with np.errstate(invalid="ignore"):
        present = raw > presence_threshold
    return ModelBlock(_view_of(raw, view, transform, pseudocount, sample_totals, presence_threshold), present)


@dataclass(frozen=True)
class SharedDesign:
    """A factorised design and the positions of its participants among the layer's samples."""

    key: str
    rows: np.ndarray
    design: CovariateDesign
    clusters: np.ndarray | None

    def __sizeof__(self) -> int:
        design_arrays = (value for value in vars(self.design).values() if isinstance(value, np.ndarray))
        return array_bytes(self.rows, self.clusters, *design_arrays)


def factorise(path: Path) -> SharedDesign:
    """Rank check and QR of one shared design, read from the file the client wrote.

    Designs travel as files on the shared filesystem, not through the scheduler:
    at biobank scale each is participants x covariates doubles.
    """
    return shared_design(read_design(Path(path)))


def shared_design(design: DesignInput) -> SharedDesign:
    """Rank check and QR of one design in memory (``rows``, ``(n, k)`` covariates ``matrix``): the form fits take."""
    return SharedDesign(design.key, design.rows, factorise_covariates(design.matrix, design.names), design.clusters)


#: Bytes of factorised designs a worker process keeps for its next fit tasks (:class:`DesignCache`).
DESIGN_CACHE_BYTES = 512 * 2**20


class DesignCache:
    """Factorised designs by key, in one worker process: each factorised there once, the least recently used dropped first.

    A fit task names its designs by file (``designs/<key>.npz``, the key a hash of
    the design's content) and factorises here the ones this process has not. A
    design factorised beside the fits costs a few milliseconds of QR; as a task
    of its own it ran on either worker, travelled to the other (about a megabyte
    at 7,656 participants, a dozen transfers per reference run that fits waited
    for), and drew the fits towards the worker holding it, away from their block.
    Designs a task uses stay referenced by it while it runs; beyond ``max_bytes``
    the least recently used others are dropped (factorised again if needed later).
    """

    def __init__(self, max_bytes: int = DESIGN_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._designs: OrderedDict[str, SharedDesign] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # a worker may run tasks in several threads

    def get(self, path: Path) -> SharedDesign:
        """The factorised design of the file ``path`` (its name is the design's key)."""
        key = Path(path).stem
        with self._lock:
            found = self._designs.get(key)
            if found is not None:
                self._designs.move_to_end(key)
                return found
        design = factorise(Path(path))  # outside the lock: another thread's designs need not wait for this one
        with self._lock:
            if key not in self._designs:
                self._designs[key] = design
                self._bytes += design.__sizeof__()
                while self._bytes > self.max_bytes and len(self._designs) > 1:
                    _, dropped = self._designs.popitem(last=False)
                    self._bytes -= dropped.__sizeof__()
        return design

    def __len__(self) -> int:
        return len(self._designs)

    def clear(self) -> None:
        """Drop every design."""
        with self._lock:
            self._designs.clear()
            self._bytes = 0


#: This process's designs (a worker's, for its fit tasks).
WORKER_DESIGNS = DesignCache()


def forget_designs() -> None:
    """Drop this worker's designs (run by ``Client.run`` once a run's fits are done, on a cluster that outlives the run)."""
    WORKER_DESIGNS.clear()


@dataclass(frozen=True)
class DesignFits:
    """One design's fits over a block: the exposure slopes and, for mixed models, the REML variance components."""

    slopes: SlopeFits
    components: VarianceComponents | None = None


def _fit_linear(
    designs: list[SharedDesign], exposures: list[np.ndarray], binary: list[np.ndarray], block: ModelBlock, options: OlsOptions | None
) -> list[DesignFits]:
    """OLS for lm and lm_nonzero: classical standard errors, or cluster-robust ones when the plan asks (``se: cluster``).

    Designs carry cluster codes whenever the plan names a cluster column (the
    designs are shared with lmm); only ``options`` decides whether OLS uses them.
    """
    if options is None:
        raise ValueError("OLS models need their plan options (lm / lm_nonzero)")
    if options.cluster_robust and any(d.clusters is None for d in designs):
        raise ValueError("cluster-robust standard errors need cluster codes: the plan must name a cluster column")
    clusters = [d.clusters if options.cluster_robust else None for d in designs]
    prepared = block.prepared()  # centred and indexed once per block, shared by every design and task
    fits = fit_design_batch(
        [d.design for d in designs], [d.rows for d in designs], exposures, binary, prepared, clusters, cluster_reference=options.reference
    )
    return [DesignFits(f) for f in fits]


def _fit_mixed(
    designs: list[SharedDesign], exposures: list[np.ndarray], binary: list[np.ndarray], block: ModelBlock, options: OlsOptions | None
) -> list[DesignFits]:
    """REML random-intercept model per design (the plan's cluster column gives the groups)."""
    prepared = block.prepared()
    fits = []
    for design, design_exposures, design_binary in zip(designs, exposures, binary, strict=True):
        if design.clusters is None:
            raise ValueError("model 'lmm' needs cluster codes: the plan must name a cluster column")
        slopes, components = fit_random_intercept(design.design, design_exposures, design_binary, prepared, design.clusters, design.rows)
        fits.append(DesignFits(slopes, components))
    return fits


def _fit_presence(
    designs: list[SharedDesign], exposures: list[np.ndarray], binary: list[np.ndarray], block: ModelBlock, options: OlsOptions | None
) -> list[DesignFits]:
    """Logistic regression of presence per design (Firth's penalised likelihood where separated)."""
    designs_rows: list[np.ndarray | None] = [d.rows for d in designs]
    return [DesignFits(f) for f in fit_logistic_designs([d.design for d in designs], designs_rows, exposures, binary, block.values)]


#: model -> kernel over a task's designs: ``fitter(designs, exposures, binary, block, options) -> [DesignFits per design]``,
#: ``options`` the plan's options of an OLS model (None for the others, which have none).
MODEL_FITTERS: dict[
    str, Callable[[list[SharedDesign], list[np.ndarray], list[np.ndarray], ModelBlock, OlsOptions | None], list[DesignFits]]
] = {
    "lm": _fit_linear,
    "lm_nonzero": _fit_linear,
    "lmm": _fit_mixed,
    "prevalence": _fit_presence,
}


def carrier_counts(present: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``(m,)`` participants among ``rows`` with each feature present (``present`` is ``(N, m)`` bool)."""
    return np.count_nonzero(present[rows], axis=0)


def design_carriers(block: ModelBlock, rows: list[np.ndarray], groups: list[list[PreparedAnalysis]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per design: ``(m,)`` carriers among its participants and ``(k, m)`` among each binary analysis' cases (-1 for other exposures).

    ``rows`` ``(n,)`` positions of each design's participants among the block's
    ``N`` rows; ``groups`` its analyses, whose exposures follow those rows. All
    counts of a task are one product of participant weights with the block's
    presence (:meth:`ModelBlock.present_counts`), rather than a copy of the
    presence rows per design and a count per design and per exposure.
    """
    n_total = block.present.shape[0]
    weights = []
    for design_rows, group in zip(rows, groups, strict=True):
        weights.append(np.bincount(design_rows, minlength=n_total))
        weights.extend(np.bincount(design_rows[a.exposure == 1], minlength=n_total) for a in group if a.binary)
    counts = iter(block.present_counts(np.array(weights).reshape(len(weights), n_total)))
    found = []
    for group in groups:
        n_present = next(counts)
        cases = np.full((len(group), n_present.size), -1, dtype=np.int64)
        for i, analysis in enumerate(group):
            if analysis.binary:
                cases[i] = next(counts)
        found.append((n_present, cases))
    return found


def _labels(analysis: PreparedAnalysis) -> AnalysisLabels:
    a = analysis
    return AnalysisLabels(
        a.key.exposure, a.key.adjustment, a.key.model, "+".join(a.covariates), a.key.analysis_id, a.binary, "+".join(a.dropped)
    )


def _exposure_columns(analysis: PreparedAnalysis) -> np.ndarray:
    """``(n, J)``: a categorical exposure's level dummies, or the exposure itself."""
    return level_dummies(analysis.exposure, len(analysis.levels)) if analysis.levels else analysis.exposure[:, None]


def _fit_categorical(
    layer: str,
    feature_ids: tuple[str, ...],
    by_key: dict[str, SharedDesign],
    batch: tuple[PreparedAnalysis, ...],
    prepared: PreparedBlock,
    present: np.ndarray,
) -> pa.Table:
    """Categorical exposures (lm, lm_nonzero): the level dummies fitted jointly, one row per level and an omnibus F row.

    ``present`` ``(N, m)`` bool: where the block's features are present, for the carrier rule.
    """
    tables = []
    for analysis in batch:
        shared = by_key[analysis.design_key]
        if shared.clusters is not None:
            raise ValueError(f"categorical exposure '{analysis.key.exposure}': no cluster-robust joint test")
        fits = fit_terms(shared.design, level_dummies(analysis.exposure, len(analysis.levels)), prepared, shared.rows)
        tables.append(
            categorical_to_table(
                layer,
                feature_ids,
                _labels(analysis),
                analysis.levels,
                fits,
                shared.design.problem,
                carrier_counts(present, shared.rows),
                analysis.min_carriers,
                analysis.min_prevalence,
                analysis.key.model != "lm_nonzero",
            )
        )
    return pa.concat_tables(tables)


def covariate_rows(
    layer: str, feature_ids: tuple[str, ...], by_key: dict[str, SharedDesign], batch: tuple[PreparedAnalysis, ...], prepared: PreparedBlock
) -> pa.Table:
    """Every covariate's coefficient in each analysis's model ``feature ~ exposure + covariates``.

    The same joint kernel with an intercept-only design and the exposure's
    columns followed by the raw covariate columns as the terms of interest.
    """
    tables = [empty_table(COVARIATE_SCHEMA)]
    for analysis in batch:
        shared = by_key[analysis.design_key]
        design = shared.design
        if len(design.names) < 2:
            continue
        exposure = _exposure_columns(analysis)
        intercept = factorise_covariates(np.ones((design.n, 1)), ("(intercept)",))
        columns = np.hstack([exposure, design.raw_covariates()[:, 1:]])
        fits = fit_terms(intercept, columns, prepared, shared.rows)
        if design.problem is not None:
            fits = replace(fits, status=np.full_like(fits.status, FitStatus.DESIGN_RANK_DEFICIENT))
        tables.append(covariate_table(layer, feature_ids, _labels(analysis), design.names[1:], fits, exposure.shape[1], design.problem))
    return pa.concat_tables(tables)


def fit_chunk(
    layer: str,
    block: ModelBlock,
    feature_ids: tuple[str, ...],
    designs: list[SharedDesign],
    batch: tuple[PreparedAnalysis, ...],
    output: Path,
    covariate_output: Path | None = None,
) -> dict[str, float | int | str]:
    """Fit every analysis of ``batch`` on every feature of ``block`` and write the rows to ``output``.

    ``designs`` are the factorised designs the batch's analyses use. Rows
    resting on fewer carriers than the plan's ``min_carriers`` (or below
    ``min_prevalence`` among the model's participants, with ``prevalence_within:
    model``) keep their counts but lose their estimate. With
    ``covariate_output`` every covariate's coefficient rows go there, written
    before ``output`` so that an existing ``output`` means both are complete.
    """
    started = time.perf_counter()
    by_key = {d.key: d for d in designs}
    if covariate_output is not None:
        write_parquet(Path(covariate_output), covariate_rows(layer, feature_ids, by_key, batch, block.prepared()))
        seal(Path(covariate_output))
    if any(a.levels for a in batch):
        if not all(a.levels for a in batch):
            raise ValueError("a batch holds categorical exposures only, or none")
        table = _fit_categorical(layer, feature_ids, by_key, batch, block.prepared(), block.present)
        write_parquet(Path(output), table)
        seal(Path(output))
        return {"chunk": Path(output).stem, "rows": table.num_rows, "seconds": time.perf_counter() - started}
    order = list(dict.fromkeys(a.design_key for a in batch))
    members = [[a for a in batch if a.design_key == key] for key in order]
    models = {a.key.model for a in batch}
    if len(models) != 1:
        raise ValueError(f"a batch holds one model, got {sorted(models)}")
    options = {a.ols for a in batch}
    if len(options) != 1:
        raise ValueError("a batch holds analyses of one model with one set of options")
    model = models.pop()
    fitter = MODEL_FITTERS[model]
    fits = fitter(
        [by_key[key] for key in order],
        [np.stack([a.exposure for a in group]) for group in members],
        [np.array([a.binary for a in group]) for group in members],
        block,
        options.pop(),
    )
    tables = []
    carriers = design_carriers(block, [by_key[key].rows for key in order], members)
    for key, group, fit, (design_present, n_present_cases) in zip(order, members, fits, carriers, strict=True):
        # Every analysis of a design has the same participants, hence the same carriers.
        n_present = np.broadcast_to(design_present, fit.slopes.beta.shape)
        slopes = withhold_rare_carriers(
            fit.slopes,
            n_present,
            group[0].min_carriers,
            group[0].min_prevalence,
            count_absent=model != "lm_nonzero",
            n_present_cases=n_present_cases if group[0].carrier_cells else None,
        )
        labels = [_labels(a) for a in group]
        tables.append(
            fits_to_table(
                layer, feature_ids, labels, slopes, by_key[key].design.problem, fit.components, n_present, n_present_cases=n_present_cases
            )
        )
    table = pa.concat_tables(tables)
    write_parquet(Path(output), table)
    seal(Path(output))  # last: a chunk whose task died before this is recomputed, never trusted
    return {"chunk": Path(output).stem, "rows": table.num_rows, "seconds": time.perf_counter() - started}


def fit_chunk_task(
    layer: str,
    block: ModelBlock,
    feature_ids: tuple[str, ...],
    design_files: list[Path],
    batch: tuple[PreparedAnalysis, ...],
    output: Path,
    covariate_output: Path | None = None,
) -> dict[str, float | int | str]:
    """The fit task of a chunk: :func:`fit_chunk` with its designs factorised in this worker (:data:`WORKER_DESIGNS`)."""
    designs = [WORKER_DESIGNS.get(Path(path)) for path in design_files]
    return fit_chunk(layer, block, feature_ids, designs, batch, output, covariate_output)


def read_and_fit_chunk(
    block_arguments: tuple,
    layer: str,
    feature_ids: tuple[str, ...],
    design_files: list[Path],
    batch: tuple[PreparedAnalysis, ...],
    output: Path,
    covariate_output: Path | None = None,
) -> dict[str, float | int | str]:
    """:func:`model_block` (of ``block_arguments``) then :func:`fit_chunk_task`, in one task: for a block view only one chunk reads.

    A separate block task would cost a second task (a scheduler round trip, its
    bookkeeping on the worker) and keep the block in the worker's memory until the
    scheduler releases it; here it is freed as the fit ends.
    """
    return fit_chunk_task(layer, model_block(*block_arguments), feature_ids, design_files, batch, output, covariate_output)


def read_and_fit_chunks(
    layer: str, design_files: list[Path], batch: tuple[PreparedAnalysis, ...], chunks: list[SoloChunk]
) -> list[dict[str, float | int | str]]:
    """:func:`read_and_fit_chunk` for several chunks of one layer with the same designs and analyses, one after another.

    One task for several chunks spares the scheduler and the worker their work
    per task (a graph entry, messages, state transitions on both sides; the
    scheduler's runs in the client's process, competing with the workers for
    the cores). Each chunk's block is read, fitted, written (sealed) and
    released before the next is read, so the task holds one chunk's memory at a
    time, and a chunk written before the task died is reused by a rerun.
    Returns each chunk's :func:`fit_chunk` summary, in order.
    """
    return [
        read_and_fit_chunk(block_arguments, layer, feature_ids, design_files, batch, output, covariate_output)
        for block_arguments, feature_ids, output, covariate_output in chunks
    ]


def sufficient_chunk(
    layer: str, block: ModelBlock, feature_ids: tuple[str, ...], design_path: Path, analyses: tuple[PreparedAnalysis, ...]
) -> pa.Table:
    """Centred cross-products of every analysis of one design on every feature of one block (``sumstats --sufficient``).

    ``block`` holds the run's transformed view ``(n_used, m)``; ``design_path`` the
    design file written by the run (participant rows and covariate matrix). Returns
    rows of :data:`~scalable_assoc.results.sumstats_format.SUFFICIENT_SCHEMA`, one per
    analysis and feature.
    """
    design = read_design(Path(design_path))
    covariates, names = with_reference_dummies(design.matrix, design.names, design.references)
    outcome = block.values[design.rows]
    tables = []
    for analysis in analyses:
        products = centred_cross_products(analysis.exposure, covariates, analysis.binary, outcome)
        key = analysis.key
        tables.append(
            cross_products_table(layer, feature_ids, key.exposure, key.adjustment, key.analysis_id, ("exposure", *names), products)
        )
    return pa.concat_tables(tables) if tables else empty_table(SUFFICIENT_SCHEMA)
