"""Combining cohorts from their exported files: meta-analysis and the exact pooled model.

Both steps read only what ``scalable-assoc sumstats`` let leave each cohort,
verify every file against its sidecar, refuse cohorts that ran different
analyses (unless allowed), match features across spellings
(:mod:`scalable_assoc.results.harmonise`), and report features present in only
some cohorts. Outputs are written atomically; the manifest last.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import shutil
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from scalable_assoc import __version__
from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import write_json, write_parquet, write_tsv
from scalable_assoc.models.fits import STATUS_TEXT, FitStatus
from scalable_assoc.models.pooled import drop_reference_levels, solve_pooled, unpack_symmetric
from scalable_assoc.plan.spec import FdrSpec
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.results.coded_keys import (
    CodedKeys,
    Dictionary,
    code_keys,
    composite,
    decompose,
    dictionary_column,
    duplicated_rows,
    key_space,
    line_up,
    pattern_codes,
    text_column,
    thread_map,
    worker_threads,
)
from scalable_assoc.results.cohort_files import CohortFile
from scalable_assoc.results.cohort_files import open_cohorts as open_cohorts  # the first step of meta and pool, public here too
from scalable_assoc.results.compatibility import check_compatible
from scalable_assoc.results.harmonise import feature_coverage
from scalable_assoc.results.table_files import write_table_parquet, write_table_tsv
from scalable_assoc.stats.meta import METHODS, MetaFits, combine_estimates, direction_strings, leave_one_out
from scalable_assoc.stats.multitest import benjamini_hochberg_grouped

KEY_COLUMNS = ("layer", "feature", "exposure", "adjustment", "model")
META_FILES = (
    "meta_manifest.json",
    "meta_results.parquet",
    "meta_results.tsv",
    "meta_leave_one_out.parquet",
    "meta_leave_one_out.tsv",
    "meta_forest_estimates.parquet",
    "meta_forest_estimates.tsv",
    "feature_coverage.tsv",
)
#: Keys per layer x model whose cohort estimates ``meta_forest_estimates`` keeps (those with the smallest p), for the report's forests.
FOREST_KEYS = 30
#: What ``scalable-assoc report`` writes into a meta or pool folder (besides ``figures/``); removed with the outputs it describes.
REPORT_FILES = ("report.html",)
POOL_FILES = ("pool_manifest.json", "pooled_results.parquet", "pooled_results.tsv", "feature_coverage.tsv")

logger = logging.getLogger(__name__)


class BlockMapper(Protocol):
    """Runs ``function(*block)`` for each block, e.g. on a Dask cluster (the engine's ``ClusterMapper``)."""

    def wanted(self, rows: int) -> bool:
        """Whether ``rows`` rows are worth sending out in blocks."""
        ...

    def __call__(self, function: Callable[..., Any], blocks: Sequence[tuple], done: Callable[[int], None] | None = None) -> list[Any]:
        """``[function(*block) for block in blocks]``, calling ``done(i)`` as block ``i`` finishes (in any order)."""
        ...


def _combine(
    beta: np.ndarray, se: np.ndarray, method: str, hksj: bool, mapper: BlockMapper | None, block_rows: int, progress: ProgressReporter
) -> MetaFits:
    """Every row, in blocks of ``block_rows``: on this process's threads, or through ``mapper`` when it wants them.

    Blocks give progress as they finish. They do not change a row's result: the
    kernel iterates each row on its own (a converged row is frozen). In process,
    blocks run on one thread per CPU: the kernel's time is in NumPy loops over
    whole blocks, which release the GIL.
    """
    starts = range(0, beta.shape[0], block_rows)
    blocks = [(beta[s : s + block_rows], se[s : s + block_rows], method, hksj) for s in starts]
    if not blocks:
        return combine_estimates(beta, se, method=method, hksj=hksj)
    # Each block's fits go straight into whole-size arrays (not a list of parts concatenated at the end,
    # which held every row's fits twice at the peak).
    fields = [f.name for f in dataclasses.fields(MetaFits)]
    out: dict[str, np.ndarray] = {}

    def finished(i: int) -> None:
        progress.advance(blocks[i][0].shape[0])

    def store(i: int, part: MetaFits) -> None:
        begin = starts[i]
        for name in fields:
            values = getattr(part, name)
            if name not in out:
                out[name] = np.empty(beta.shape[0], dtype=values.dtype)
            out[name][begin : begin + values.shape[0]] = values

    if mapper is not None and mapper.wanted(beta.shape[0]):
        for i, part in enumerate(mapper(combine_estimates, blocks, finished)):
            store(i, part)
    elif worker_threads() > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(max_workers=min(worker_threads(), len(blocks))) as pool:
            futures = {pool.submit(combine_estimates, *block): i for i, block in enumerate(blocks)}
            for future in as_completed(futures):
                i = futures.pop(future)
                store(i, future.result())
                finished(i)
    else:
        for i, block in enumerate(blocks):
            store(i, combine_estimates(*block))
            finished(i)
    return MetaFits(**out)


def _beside_one_writer() -> int:
    """Threads for a TSV written while the Parquet writer keeps one CPU busy: the other CPUs (at least one)."""
    return max(1, worker_threads() - 1)


def _remove(out_dir: Path, names: Sequence[str]) -> None:
    for name in names:
        (out_dir / name).unlink(missing_ok=True)


def _begin(
    cohorts: Sequence[CohortFile],
    min_cohorts: int,
    allow_mismatch: bool,
    out_dir: str | Path,
    outputs: Sequence[str],
    alpha: float | None,
) -> tuple[list[CohortFile], list[str], Path, float]:
    """Check the arguments and the cohorts' compatibility, then remove earlier outputs (none may outlive a failure).

    Returns the cohorts, the warnings (also logged), the output folder and the
    significance level: ``alpha``, else the cohorts' plans' ``fdr.alpha``.
    """
    if min_cohorts < 1:
        raise UserInputError(f"--min-cohorts must be at least 1, got {min_cohorts}")
    if alpha is not None and not 0 < alpha < 1:
        raise UserInputError(f"--alpha must be between 0 and 1, got {alpha}")
    cohorts = list(cohorts)
    if not cohorts:
        raise UserInputError("give at least one summary-statistics file")
    warnings = check_compatible(cohorts, allow_mismatch)
    if alpha is None:
        alpha, alpha_warning = _plan_alpha(cohorts)
        warnings += alpha_warning
    for warning in warnings:
        logger.warning("%s", warning)
    out = Path(out_dir)
    _remove(out, outputs)
    _remove(out, REPORT_FILES)  # a report of earlier outputs would describe results that are gone
    shutil.rmtree(out / "figures", ignore_errors=True)
    return cohorts, warnings, out, alpha


#: ``fdr.alpha`` of a plan that does not set it; used for a sidecar that records none
DEFAULT_ALPHA = FdrSpec().alpha


def _plan_alpha(cohorts: list[CohortFile]) -> tuple[float, list[str]]:
    """The ``fdr.alpha`` the cohorts' plans give (the first cohort's if they differ, with a warning)."""
    alphas = {c.cohort: float(c.sidecar.get("fdr", {}).get("alpha", DEFAULT_ALPHA)) for c in cohorts}
    first = alphas[cohorts[0].cohort]
    if len(set(alphas.values())) == 1:
        return first, []
    listed = ", ".join(f"{name} {value:g}" for name, value in alphas.items())
    return first, [
        f"the cohorts' plans set different fdr.alpha ({listed}); using {first:g} (cohort {cohorts[0].cohort}); pass --alpha to choose"
    ]


@dataclass
class CombinedSummary:
    """What ``meta`` or ``pool`` wrote."""

    out_dir: Path
    results: pd.DataFrame
    coverage: pd.DataFrame
    manifest: dict[str, Any]


def significant_rows(results: pd.DataFrame, alpha: float) -> int:
    """Rows with q below ``alpha``."""
    return int(results["q"].lt(alpha).fillna(False).sum())


def _manifest(
    kind: str, cohorts: list[CohortFile], settings: dict[str, Any], warnings: list[str], rows: int, **extra: Any
) -> dict[str, Any]:
    return {
        "package": "scalable_assoc",
        "version": __version__,
        "kind": kind,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "cohorts": [
            {
                "cohort": c.cohort,
                "file": str(c.path),
                "sha256": c.sidecar["files"]["summary"]["sha256"],
                "analysis_hash": c.sidecar["analysis_hash"],
                "plan_name": c.sidecar.get("plan_name"),
                "samples": {layer: info.get("samples") for layer, info in c.sidecar.get("layers", {}).items()},
            }
            for c in cohorts
        ],
        "settings": settings,
        "warnings": warnings,
        "rows": rows,
        **extra,
    }


def meta_analyse(
    cohorts: Sequence[CohortFile],
    out_dir: str | Path,
    *,
    method: str = "reml",
    hksj: bool = False,
    min_cohorts: int = 2,
    leave_one_out_estimates: bool = False,
    mapping: dict[str, str] | None = None,
    allow_mismatch: bool = False,
    mapper: BlockMapper | None = None,
    block_rows: int = 50_000,
    alpha: float | None = None,
) -> CombinedSummary:
    """Meta-analyse every (layer, feature, exposure, adjustment, model) over the cohorts' summary files.

    Writes ``meta_results.parquet`` / ``.tsv`` (see the README for columns),
    ``feature_coverage.tsv``, optionally ``meta_leave_one_out.*``, and
    ``meta_manifest.json`` last. All rows are combined at once (vectorised
    over features); BH FDR per family as in the cohorts' plan (``fdr.by``).
    ``mapper`` (for example the engine's ``ClusterMapper``) spreads blocks of
    ``block_rows`` rows over a cluster when it judges the rows many enough.
    Rows with q below ``alpha`` (default: the cohorts' plans' ``fdr.alpha``)
    are counted as significant in the manifest. With ``hksj``, rows combined
    from fewer than 3 cohorts are counted and warned about.

    Parameters
    ----------
    cohorts
        Opened summary files (:func:`open_cohorts`), one per cohort.
    out_dir
        Output folder (created if needed); earlier outputs of ``meta`` there are removed first.
    method
        ``fe`` (fixed effect), or random effects by ``dl``, ``reml`` or ``pm``.
    hksj
        Hartung-Knapp-Sidik-Jonkman standard errors and t(k - 1) p-values.
    min_cohorts
        Combine a row only where at least this many cohorts have an estimate.
    leave_one_out_estimates
        Also write leave-one-cohort-out estimates.
    mapping
        Feature spelling -> matching key (:func:`~scalable_assoc.results.harmonise.read_mapping`), or None.
    allow_mismatch
        Combine cohorts whose analyses differ, with warnings.
    mapper, block_rows
        Where to combine the rows, and in blocks of how many.
    alpha
        Significance level for the manifest's count; None: the plans' ``fdr.alpha``.

    Returns
    -------
    CombinedSummary
        The folder, the results (one row per combined key), the feature coverage and the manifest.

    Examples
    --------
    >>> from scalable_assoc import meta_analyse
    >>> meta = meta_analyse(opened, tmp / "meta", mapping=mapping)
    >>> int(meta.results["k"].max())
    3
    """
    if method not in METHODS:
        raise UserInputError(f"--method {method!r}: use one of {', '.join(METHODS)}")
    cohorts, warnings, out, alpha = _begin(cohorts, min_cohorts, allow_mismatch, out_dir, META_FILES, alpha)
    names = [c.cohort for c in cohorts]
    read = _read_estimates(cohorts, mapping)
    coverage, coverage_warnings = _coverage_of(read.pairs, read.values, names)
    warnings += coverage_warnings
    table = _estimates_by_cohort(read, names, min_cohorts)
    del read  # the rows are in ``table`` now; the cohorts' own arrays would only raise the peak
    rows = table.rows
    logger.info(f"meta-analysing {rows} rows over {len(names)} cohorts ({method}{' + HKSJ' if hksj else ''})")
    progress = ProgressReporter(logger, "meta", rows, "rows", label="meta-analysing")
    progress.start()
    fits = _combine(table.beta, table.se, method, hksj, mapper, block_rows, progress)
    progress.finish()
    few = int(((fits.k > 1) & (fits.k < 3)).sum()) if hksj else 0
    if few:
        warning = (
            f"--hksj: {few} of {rows} rows were combined from fewer than 3 cohorts; with k = 2 the Hartung-Knapp "
            "standard error rests on 1 degree of freedom and can be far too small or too large (treat those rows with care, "
            "or use --min-cohorts 3)"
        )
        logger.warning("%s", warning)
        warnings.append(warning)
    fdr_by = list(cohorts[0].sidecar["analysis"].get("fdr_by", ["layer", "exposure", "adjustment", "model"]))
    result_table = _meta_results(table, fits, names, fdr_by, method + ("+hksj" if hksj else ""))
    del fits  # in ``result_table`` now
    p = result_table.column("p").to_numpy(zero_copy_only=False)
    p = np.where(pd.isna(p), np.nan, p).astype(np.float64) if p.dtype == object else p.astype(np.float64)
    forest = _forest_of(table, p, names)
    del p
    if leave_one_out_estimates:
        _write_leave_one_out(out, table, names, method, hksj)
    # Every row's cohort estimates are no longer needed: freed before the largest outputs are written.
    del table
    written = thread_map(
        lambda job: job(),
        [
            lambda: write_table_parquet(out / "meta_results.parquet", result_table),
            lambda: write_table_tsv(out / "meta_results.tsv", result_table, threads=_beside_one_writer()),
        ],
    )
    del written
    write_parquet(out / "meta_forest_estimates.parquet", forest)
    write_tsv(out / "meta_forest_estimates.tsv", forest)
    write_tsv(out / "feature_coverage.tsv", coverage)
    settings = {
        "method": method,
        "hksj": hksj,
        "min_cohorts": min_cohorts,
        "leave_one_out": leave_one_out_estimates,
        "fdr_by": list(fdr_by),
        "alpha": alpha,
        "allow_mismatch": allow_mismatch,
    }
    q = result_table.column("q").to_numpy(zero_copy_only=False)
    extra: dict[str, Any] = {"significant": int(np.count_nonzero(np.nan_to_num(q.astype(np.float64), nan=np.inf) < alpha))}
    if hksj:
        extra["hksj_rows_below_3_cohorts"] = few
    manifest = _manifest("meta", cohorts, settings, warnings, result_table.num_rows, **extra)
    write_json(out / "meta_manifest.json", manifest)
    return CombinedSummary(out, result_table.to_pandas(), coverage, manifest)


@dataclass(frozen=True)
class _ReadEstimates:
    """Every cohort's summary rows, keys as shared codes (:mod:`scalable_assoc.results.coded_keys`)."""

    values: dict[str, list[str]]  # per key column, the text of each code
    sizes: list[int]  # dictionary sizes, in KEY_COLUMNS order
    keys: np.ndarray  # (r,) the distinct composite keys, in order of first appearance
    rows: list[np.ndarray]  # per cohort (rows_j,) positions into ``keys``
    beta: list[np.ndarray]  # per cohort (rows_j,)
    se: list[np.ndarray]
    n: list[np.ndarray]
    pairs: list[np.ndarray]  # per cohort, the distinct (layer, feature) composite codes it has rows for


def _read_estimates(cohorts: list[CohortFile], mapping: dict[str, str] | None) -> _ReadEstimates:
    """Read each cohort's keys (dictionary-encoded), estimates and n; match features; line the rows up."""
    dictionaries = {column: Dictionary() for column in KEY_COLUMNS}
    coded, beta, se, n = [], [], [], []
    for cohort, table in _read_ahead(cohorts, lambda cohort: cohort.summary_table([*KEY_COLUMNS, "beta", "se", "n"], KEY_COLUMNS)):
        coded.append(code_keys(table, KEY_COLUMNS, dictionaries, mapping, f"{cohort.path} (cohort {cohort.cohort})"))
        beta.append(_floats(table.column("beta")))
        se.append(_floats(table.column("se")))
        n.append(_floats(table.column("n")))
        del table
    sizes = [len(dictionaries[column]) for column in KEY_COLUMNS]
    keys, space = _cohort_keys(cohorts, coded, KEY_COLUMNS, sizes)
    distinct, rows = line_up(keys, space)
    pair_sizes = sizes[:2]
    pairs = [_distinct(composite(codes.codes, KEY_COLUMNS[:2], pair_sizes), key_space(pair_sizes)) for codes in coded]
    values = {column: dictionaries[column].values for column in KEY_COLUMNS}
    return _ReadEstimates(values, sizes, distinct, rows, beta, se, n, pairs)


def _read_ahead(cohorts: Sequence[CohortFile], read: Callable[[CohortFile], pa.Table]) -> Iterator[tuple[CohortFile, pa.Table]]:
    """``(cohort, read(cohort))`` in order, the next cohort's file read on a thread while the caller codes this one.

    Coding keys into the shared dictionaries must go cohort by cohort (codes in order of
    first appearance); reading and decoding a file (Arrow, without the GIL) need not wait
    for it. At most two cohorts' tables are held at once.
    """
    if not cohorts:
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(read, cohorts[0])
        for j, cohort in enumerate(cohorts):
            table = pending.result()
            if j + 1 < len(cohorts):
                pending = pool.submit(read, cohorts[j + 1])
            yield cohort, table
            del table


def _distinct(keys: np.ndarray, space: int) -> np.ndarray:
    """``np.unique(keys)`` (sorted int64) for keys in ``[0, space)``: counted in a dense table when ``space`` is not much
    larger than the rows (a (layer, feature) key space is the features), instead of sorting millions of rows."""
    if space <= 4 * keys.size + 1_000_000:
        return np.flatnonzero(np.bincount(keys, minlength=space)).astype(np.int64)
    return np.unique(keys)


def _cohort_keys(
    cohorts: list[CohortFile], coded: list[CodedKeys], columns: Sequence[str], sizes: list[int]
) -> tuple[list[np.ndarray], int]:
    """Each cohort's rows as one integer key over ``columns`` (``sizes`` distinct values each), and the size of that key space.

    Raises DataError naming the file when two of a cohort's rows get one key: feature names that matching made equal.
    """
    space = key_space(sizes)
    keys = []
    for cohort, codes in zip(cohorts, coded, strict=True):
        key = composite(codes.codes, columns, sizes)
        clash = duplicated_rows(key, space)
        if clash.size:
            spelled = sorted({codes.source_names[i] for i in np.unique(codes.source_feature[clash])})[:4]
            raise DataError(
                f"{cohort.path} (cohort {cohort.cohort}): features {', '.join(spelled)} become the same feature after matching names; "
                "give a --feature-map that tells them apart"
            )
        keys.append(key)
    return keys, space


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """A numeric column as float64, NaN where empty."""
    return column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _coverage_of(pairs: list[np.ndarray], values: dict[str, list[str]], names: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """:func:`feature_coverage` of the (layer, feature) codes each cohort has, and the warnings about it."""
    sizes = [len(values["layer"]), len(values["feature"])]
    distinct, rows = line_up(pairs, key_space(sizes))
    presence = np.zeros((distinct.size, len(names)), dtype=bool)
    for j, where in enumerate(rows):
        presence[where, j] = True
    layer, feature = decompose(distinct, sizes)
    coverage = feature_coverage(
        np.asarray(values["layer"], dtype=object)[layer], np.asarray(values["feature"], dtype=object)[feature], presence, names
    )
    return coverage, _coverage_warnings(coverage, presence, names)


def _coverage_warnings(coverage: pd.DataFrame, presence: np.ndarray, names: list[str]) -> list[str]:
    """Cohorts that share no feature with another, or have no rows; features some cohorts lack. Logged too."""
    warnings = []
    count = presence.sum(axis=1)
    for j, cohort in enumerate(names):
        own = presence[:, j]
        if own.any() and (count[own] == 1).all() and len(names) > 1:
            warnings.append(f"cohort {cohort} shares no feature with any other cohort (check feature spellings or --feature-map)")
        elif not own.any():
            warnings.append(f"cohort {cohort} has no rows to combine (everything was withheld or failed)")
    partial = int((count < len(names)).sum())
    if partial:
        warnings.append(f"{partial} of {len(coverage)} features are present in only some cohorts (see feature_coverage.tsv)")
    for warning in warnings:
        logger.warning("%s", warning)
    return warnings


@dataclass(frozen=True)
class _CohortEstimates:
    """The rows to combine, ``r`` keys x ``k`` cohorts: NaN (``n`` 0) where a cohort has no estimate."""

    codes: dict[str, np.ndarray]  # per key column (r,) codes into ``values``
    values: dict[str, list[str]]
    beta: np.ndarray  # (r, k)
    se: np.ndarray  # (r, k)
    n: np.ndarray  # (r, k)
    present: np.ndarray  # (r, k) bool: a finite beta and a positive se

    @property
    def rows(self) -> int:
        return int(self.beta.shape[0])

    def key_columns(self, rows: np.ndarray | None = None) -> dict[str, pa.Array]:
        """The key columns (of ``rows``, default all) as text columns."""
        return {
            column: text_column(self.codes[column] if rows is None else self.codes[column][rows], self.values[column])
            for column in KEY_COLUMNS
        }

    def key_frame(self, rows: np.ndarray) -> pd.DataFrame:
        """The keys of ``rows`` as a small frame (forest plots)."""
        return pd.DataFrame({column: np.asarray(self.values[column], dtype=object)[self.codes[column][rows]] for column in KEY_COLUMNS})


def _estimates_by_cohort(read: _ReadEstimates, names: list[str], min_cohorts: int) -> _CohortEstimates:
    """The cohorts' rows side by side, keeping the keys estimated in at least ``min_cohorts`` cohorts."""
    r, k = read.keys.size, len(names)
    beta = np.full((r, k), np.nan)
    se = np.full((r, k), np.nan)
    n = np.zeros((r, k))
    for j in range(k):
        beta[read.rows[j], j] = read.beta[j]
        se[read.rows[j], j] = read.se[j]
        n[read.rows[j], j] = read.n[j]
    with np.errstate(invalid="ignore"):
        present = np.isfinite(beta) & np.isfinite(se) & (se > 0)
    enough = present.sum(axis=1) >= min_cohorts
    if not enough.any():
        raise DataError(
            f"no feature has estimates in at least {min_cohorts} cohorts ({', '.join(names)}); nothing to meta-analyse (see --min-cohorts)"
        )
    keep = None if enough.all() else np.flatnonzero(enough)
    codes = dict(zip(KEY_COLUMNS, decompose(read.keys if keep is None else read.keys[keep], read.sizes), strict=True))
    if keep is None:
        return _CohortEstimates(codes, read.values, beta, se, n, present)
    return _CohortEstimates(codes, read.values, beta[keep], se[keep], n[keep], present[keep])


def _floats_column(values: np.ndarray) -> pa.Array:
    """float64 with NaN as empty (as pandas writes a frame)."""
    return pa.array(values, pa.float64(), from_pandas=True)


def _pattern_text(flags: np.ndarray, base: int, text_of: Callable[[np.ndarray], np.ndarray]) -> pa.Array:
    """A per-row text that depends only on a row of small integers: computed once per distinct row, as a text column.

    ``flags`` is ``(r, k)`` with values below ``base``; ``text_of`` maps a ``(u, k)``
    matrix of distinct rows to their ``(u,)`` texts.
    """
    code = pattern_codes(flags, base)
    if code is None:  # too many cohorts for one int64 per pattern: one text per row
        return pa.array(text_of(flags), pa.large_string())
    distinct, inverse = (
        np.unique(code, return_inverse=True) if base ** flags.shape[1] > 1 << 22 else _dense_unique(code, base ** flags.shape[1])
    )
    digits = np.stack(decompose(distinct, [base] * flags.shape[1]), axis=1) if distinct.size else np.zeros((0, flags.shape[1]), np.int64)
    return text_column(inverse, list(text_of(digits)))


def _dense_unique(code: np.ndarray, space: int) -> tuple[np.ndarray, np.ndarray]:
    used = np.flatnonzero(np.bincount(code, minlength=space))
    lookup = np.zeros(space, dtype=np.int64)
    lookup[used] = np.arange(used.size)
    return used, lookup[code]


_SIGN_VALUES = np.array([np.nan, 1.0, -1.0, 0.0])  # direction digits: 0 missing, 1 positive, 2 negative, 3 zero


def _meta_results(table: _CohortEstimates, fits: MetaFits, names: list[str], fdr_by: list[str], method: str) -> pa.Table:
    """One row per key: the combined estimate, q, heterogeneity, direction per cohort and the cohorts combined."""
    # One byte per cell (not int64: the nested where's and the copy of ``present`` were some 1.6 GB of fresh
    # memory at 10 million rows, system time on first touch and the run's peak), freed once coded.
    one, two, three, zero = np.int8(1), np.int8(2), np.int8(3), np.int8(0)
    with np.errstate(invalid="ignore"):
        signs = np.where(np.isnan(table.beta), zero, np.where(table.beta > 0, one, np.where(table.beta < 0, two, three)))
    names_array = np.array(names, dtype=object)
    direction = _pattern_text(signs, 4, lambda digits: direction_strings(_SIGN_VALUES[digits]))
    del signs
    cohorts = _pattern_text(
        table.present.view(np.int8), 2, lambda bits: np.array([",".join(names_array[row > 0]) for row in bits], dtype=object)
    )
    columns: dict[str, pa.Array] = {
        **table.key_columns(),
        "k": pa.array(fits.k.astype(np.int64)),
        "n": pa.array(table.n.sum(axis=1).astype(np.int64)),
        "beta": _floats_column(fits.beta),
        "se": _floats_column(fits.se),
        "statistic": _floats_column(fits.statistic),
        "p": _floats_column(fits.p),
        "q": _floats_column(_family_q(table, fits.p, fdr_by)),
        "tau2": _floats_column(fits.tau2),
        "i2": _floats_column(fits.i2),
        "q_stat": _floats_column(fits.q_stat),
        "q_p": _floats_column(fits.q_p),
        "direction": direction,
        "cohorts": cohorts,
    }
    columns["method"] = text_column(np.zeros(table.rows, dtype=np.int32), [method])
    return pa.table(columns)


def _family_q(table: _CohortEstimates, p: np.ndarray, fdr_by: list[str]) -> np.ndarray:
    """BH q within the families of ``fdr_by`` (key columns; others are not in the results and ignored, as :func:`family_q` does)."""
    columns = [c for c in fdr_by if c in KEY_COLUMNS]
    if columns:
        sizes = [len(table.values[c]) for c in columns]
        family = composite(table.codes, columns, sizes)
    else:
        family = np.zeros(table.rows, dtype=np.int64)
    return np.where(np.isnan(p), np.nan, benjamini_hochberg_grouped(p, family))


def _forest_of(table: _CohortEstimates, p: np.ndarray, names: list[str], per_group: int = FOREST_KEYS) -> pd.DataFrame:
    """:func:`forest_estimates` of the combined rows, grouping on codes."""
    groups = composite(table.codes, ["layer", "model"], [len(table.values["layer"]), len(table.values["model"])])
    chosen = smallest_p_rows(groups, p, per_group)
    rows, columns = np.nonzero(table.present[chosen])
    picked = chosen[rows]
    return table.key_frame(picked).assign(
        cohort=np.array(names, dtype=object)[columns],
        beta=table.beta[picked, columns],
        se=table.se[picked, columns],
        n=table.n[picked, columns].astype(np.int64),
    )


def smallest_p_rows(groups: np.ndarray, p: np.ndarray, per_group: int) -> np.ndarray:
    """Positions of the ``per_group`` rows with the smallest ``p`` in each group (rows without a p left out).

    Parameters
    ----------
    groups
        ``(r,)`` integer group of each row (layer x model).
    p
        ``(r,)`` p-values, NaN where there is none.
    per_group
        Rows kept per group.

    Returns
    -------
    np.ndarray
        ``(s,)`` int64 positions, grouped in order of each group's first row, by p within each (ties in row order).
    """
    if groups.size == 0:
        return np.zeros(0, dtype=np.int64)
    distinct, first = np.unique(groups, return_index=True)
    chosen = []
    finite = np.isfinite(p)
    for group in distinct[np.argsort(first)]:  # a few layer x model groups, each handled whole
        rows = np.flatnonzero((groups == group) & finite)
        if rows.size > per_group:
            rows = rows[np.argpartition(p[rows], per_group - 1)[:per_group]]
        chosen.append(rows[np.argsort(p[rows], kind="stable")])
    return np.concatenate(chosen).astype(np.int64)


def _write_leave_one_out(out: Path, table: _CohortEstimates, names: list[str], method: str, hksj: bool) -> None:
    """``meta_leave_one_out.parquet`` / ``.tsv``: per key and cohort present, the estimate without that cohort."""
    loo_beta, loo_se, loo_p = leave_one_out(table.beta, table.se, method=method, hksj=hksj)
    rows, columns = np.nonzero(table.present)
    loo = pa.table(
        {
            **table.key_columns(rows),
            "left_out": text_column(columns, names),
            "beta": _floats_column(loo_beta[rows, columns]),
            "se": _floats_column(loo_se[rows, columns]),
            "p": _floats_column(loo_p[rows, columns]),
        }
    )
    write_parquet(out / "meta_leave_one_out.parquet", loo)
    write_table_tsv(out / "meta_leave_one_out.tsv", loo)


def pool_cohorts(
    cohorts: Sequence[CohortFile],
    out_dir: str | Path,
    *,
    min_cohorts: int = 2,
    mapping: dict[str, str] | None = None,
    allow_mismatch: bool = False,
    alpha: float | None = None,
) -> CombinedSummary:
    """Solve ``feature ~ cohort + exposure + covariates`` over all cohorts from their cross-products.

    Writes ``pooled_results.parquet`` / ``.tsv``, ``feature_coverage.tsv`` and
    ``pool_manifest.json`` (last). Equal to an OLS on the stacked individual
    data with cohort indicators (categorical covariates share one reference
    level across cohorts: the first in sorted order).

    Parameters
    ----------
    cohorts
        Opened summary files exported with their cross-products (:func:`open_cohorts` with ``need_sufficient``).
    out_dir
        Output folder (created if needed); earlier outputs of ``pool`` there are removed first.
    min_cohorts
        Pool a feature only where at least this many cohorts have its cross-products.
    mapping
        Feature spelling -> matching key, or None.
    allow_mismatch
        Pool cohorts whose analyses differ, with warnings.
    alpha
        Significance level for the manifest's count; None: the plans' ``fdr.alpha``.

    Returns
    -------
    CombinedSummary
        The folder, the results (one row per layer x feature x exposure x adjustment), the feature coverage and the manifest.

    Examples
    --------
    >>> from scalable_assoc import pool_cohorts
    >>> pooled = pool_cohorts(opened, tmp / "pooled", mapping=mapping)
    >>> (pooled.out_dir / "pooled_results.parquet").is_file()
    True
    """
    cohorts, warnings, out, alpha = _begin(cohorts, min_cohorts, allow_mismatch, out_dir, POOL_FILES, alpha)
    names = [c.cohort for c in cohorts]
    read = _read_cross_products(cohorts, mapping)
    coverage, coverage_warnings = _coverage_of(read.pairs, read.values, names)
    warnings += coverage_warnings
    categorical = tuple(cohorts[0].sidecar["analysis"].get("categorical", []))
    plan = _pool_plan(read, min_cohorts)
    if not plan:
        raise DataError(
            f"no feature has cross-products in at least {min_cohorts} cohorts ({', '.join(names)}); nothing to pool (see --min-cohorts)"
        )
    pieces = thread_map(lambda analysis: _pool_analysis(read, analysis, categorical), plan)
    fdr_by = list(cohorts[0].sidecar["analysis"].get("fdr_by", ["layer", "exposure", "adjustment", "model"]))
    results = _pooled_table(read, pieces, names, fdr_by)
    logger.info(f"pooled {results.num_rows} rows over {len(names)} cohorts")
    thread_map(
        lambda job: job(),
        [
            lambda: write_parquet(out / "pooled_results.parquet", results),
            lambda: write_table_tsv(out / "pooled_results.tsv", results, threads=_beside_one_writer()),
        ],
    )
    write_tsv(out / "feature_coverage.tsv", coverage)
    settings = {"min_cohorts": min_cohorts, "fdr_by": list(fdr_by), "alpha": alpha, "allow_mismatch": allow_mismatch}
    q = results.column("q").to_numpy(zero_copy_only=False).astype(np.float64)
    significant = int(np.count_nonzero(np.nan_to_num(q, nan=np.inf) < alpha))
    manifest = _manifest("pool", cohorts, settings, warnings, results.num_rows, significant=significant)
    write_json(out / "pool_manifest.json", manifest)
    return CombinedSummary(out, results.to_pandas(), coverage, manifest)


#: Key columns of a cross-products row (one ``lm`` analysis x feature).
POOL_KEYS = ("layer", "feature", "exposure", "adjustment")
_TERM_SEPARATOR = "\x1f"
#: The cross-product columns the pool reads (not ``analysis_id``, ``n_cases``, ``n_controls``).
POOL_COLUMNS = (*POOL_KEYS, "n", "terms", "zz", "zy", "yy")


@dataclass(frozen=True)
class _CohortProducts:
    """One cohort's cross-product rows: positions among the distinct keys, term-set codes and the flat sums."""

    rows: np.ndarray  # (rows,) position of each row among the distinct (analysis, feature) keys
    terms: np.ndarray  # (rows,) code of the row's term set
    zz_offsets: np.ndarray  # (rows + 1,) into zz_values
    zz_values: np.ndarray
    zy_offsets: np.ndarray
    zy_values: np.ndarray
    yy: np.ndarray
    n: np.ndarray


@dataclass(frozen=True)
class _ReadProducts:
    """Every cohort's cross-products, keyed by shared codes."""

    values: dict[str, list[str]]
    sizes: list[int]  # of POOL_KEYS
    keys: np.ndarray  # (r,) distinct composite keys (layer, feature, exposure, adjustment), first appearance first
    term_sets: list[tuple[str, ...]]  # per term-set code
    cohorts: list[_CohortProducts]
    pairs: list[np.ndarray]


def _list_parts(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and flat values of a list-of-float64 column."""
    combined = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = combined.offsets.to_numpy().astype(np.int64)
    return offsets, combined.values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _read_cross_products(cohorts: list[CohortFile], mapping: dict[str, str] | None) -> _ReadProducts:
    """Read each cohort's cross-products, keys and term sets as shared codes; line the rows up."""
    dictionaries = {column: Dictionary() for column in POOL_KEYS}
    term_dictionary = Dictionary()
    coded, parts = [], []
    for cohort in cohorts:
        table = cohort.sufficient(read_dictionary=POOL_KEYS, columns=POOL_COLUMNS)
        source = f"{cohort.path} (cohort {cohort.cohort})"
        coded.append(code_keys(table, POOL_KEYS, dictionaries, mapping, source))
        joined = pc.binary_join(table.column("terms"), _TERM_SEPARATOR)
        term_indices, term_values = dictionary_column(pa.table({"terms": joined}), "terms", source)
        zz_offsets, zz_values = _list_parts(table.column("zz"))
        zy_offsets, zy_values = _list_parts(table.column("zy"))
        parts.append(
            (
                term_dictionary.codes([str(v) for v in term_values])[term_indices],
                zz_offsets,
                zz_values,
                zy_offsets,
                zy_values,
                _floats(table.column("yy")),
                table.column("n").to_numpy(zero_copy_only=False).astype(np.int64),
            )
        )
        del table
    sizes = [len(dictionaries[column]) for column in POOL_KEYS]
    keys, space = _cohort_keys(cohorts, coded, POOL_KEYS, sizes)
    distinct, rows = line_up(keys, space)
    products = [_CohortProducts(where, *part) for where, part in zip(rows, parts, strict=True)]
    pairs = [_distinct(composite(codes.codes, POOL_KEYS[:2], sizes[:2]), key_space(sizes[:2])) for codes in coded]
    term_sets = [tuple(text.split(_TERM_SEPARATOR)) if text else () for text in term_dictionary.values]
    return _ReadProducts({c: dictionaries[c].values for c in POOL_KEYS}, sizes, distinct, term_sets, products, pairs)


@dataclass(frozen=True)
class _Analysis:
    """One (layer, exposure, adjustment) to pool: its output rows (positions among the distinct keys), in order."""

    keys: np.ndarray  # (m,) positions into ``_ReadProducts.keys``


def _pool_plan(read: _ReadProducts, min_cohorts: int) -> list[_Analysis]:
    """The analyses in order of first appearance, each with its features present in at least ``min_cohorts`` cohorts.

    Within an analysis the features keep their order of first appearance (as grouping the stacked rows did).
    """
    r = read.keys.size
    count = np.zeros(r, dtype=np.int64)
    for cohort in read.cohorts:
        count[cohort.rows] += 1
    layer, _, exposure, adjustment = decompose(read.keys, read.sizes)
    analysis = composite({"l": layer, "e": exposure, "a": adjustment}, ["l", "e", "a"], [read.sizes[0], read.sizes[2], read.sizes[3]])
    distinct, first = np.unique(analysis, return_index=True)
    plan = []
    for code in distinct[np.argsort(first)]:
        members = np.flatnonzero((analysis == code) & (count >= min_cohorts))
        if members.size:
            plan.append(_Analysis(members))
    return plan


def _pool_analysis(read: _ReadProducts, analysis: _Analysis, categorical: tuple[str, ...]) -> tuple[_Analysis, Any, np.ndarray, str]:
    """The pooled fit of one analysis' features: ``(analysis, PooledFits, contributing (m, k), covariate terms)``."""
    m, k = analysis.keys.size, len(read.cohorts)
    position = np.full(read.keys.size, -1, dtype=np.int64)
    position[analysis.keys] = np.arange(m)
    # each cohort's rows of this analysis, and the term sets in order of first appearance over the cohorts
    selected = []
    term_order: dict[int, None] = {}
    for cohort in read.cohorts:
        where = position[cohort.rows]
        mine = np.flatnonzero(where >= 0)
        selected.append((mine, where[mine]))
        term_order.update(dict.fromkeys(pd.unique(cohort.terms[mine]).tolist()))
    layer, exposure, adjustment = (read.values[c][_key_code(read, int(analysis.keys[0]), c)] for c in ("layer", "exposure", "adjustment"))
    all_terms = list(dict.fromkeys(t for code in term_order for t in read.term_sets[code]))
    if not all_terms or all_terms[0] != "exposure":
        raise DataError(f"cohort files disagree on the first term of {layer}/{exposure}/{adjustment}: {(all_terms or [''])[0]!r}")
    width = len(all_terms)
    upper_rows, upper_cols = np.triu_indices(width)
    packed_index = np.full((width, width), -1, dtype=np.int64)
    packed_index[upper_rows, upper_cols] = np.arange(upper_rows.size)
    zz = np.zeros((m, upper_rows.size))
    zy = np.zeros((m, width))
    yy = np.zeros(m)
    n = np.zeros(m, dtype=np.int64)
    contributing = np.zeros((m, k), dtype=bool)
    # term sets outside, cohorts inside: the order in which each feature's sums are added up
    for code in term_order:
        terms = read.term_sets[code]
        place = np.array([all_terms.index(t) for t in terms], dtype=np.int64)
        c = len(terms)
        own_rows, own_cols = np.triu_indices(c)
        low, high = np.minimum(place[own_rows], place[own_cols]), np.maximum(place[own_rows], place[own_cols])
        target = packed_index[low, high]
        # the usual case: this term set is all the terms, in order; whole rows are added (same sums, fewer index passes)
        whole = target.size == zz.shape[1] and np.array_equal(target, np.arange(target.size))
        for j, (cohort, (mine, where)) in enumerate(zip(read.cohorts, selected, strict=True)):
            chosen = cohort.terms[mine] == code
            rows = mine[chosen]
            if rows.size == 0:
                continue
            at = where[chosen]
            if whole:
                zz[at] += _gather(cohort.zz_offsets, cohort.zz_values, rows, own_rows.size, layer)
                zy[at] += _gather(cohort.zy_offsets, cohort.zy_values, rows, c, layer)
            else:
                zz[at[:, None], target[None, :]] += _gather(cohort.zz_offsets, cohort.zz_values, rows, own_rows.size, layer)
                zy[at[:, None], place[None, :]] += _gather(cohort.zy_offsets, cohort.zy_values, rows, c, layer)
            yy[at] += cohort.yy[rows]
            n[at] += cohort.n[rows]
            contributing[at, j] = True
    kept_terms = drop_reference_levels(all_terms, categorical)
    keep = np.array([all_terms.index(t) for t in kept_terms])
    full = unpack_symmetric(zz)
    fits = solve_pooled(full[:, keep][:, :, keep], zy[:, keep], yy, n, contributing.sum(axis=1))
    return analysis, fits, contributing, "+".join(kept_terms[1:])


def _key_code(read: _ReadProducts, position: int, column: str) -> int:
    """The code of ``column`` in the distinct key at ``position``."""
    parts = decompose(read.keys[position : position + 1], read.sizes)
    return int(parts[POOL_KEYS.index(column)][0])


def _gather(offsets: np.ndarray, values: np.ndarray, rows: np.ndarray, width: int, layer: str) -> np.ndarray:
    """``(len(rows), width)``: the list cells of ``rows``, each of ``width`` values."""
    starts = offsets[rows]
    if not np.all(offsets[rows + 1] - starts == width):
        raise DataError(f"layer {layer}: cross-product rows hold a number of values that does not fit their terms")
    return values[starts[:, None] + np.arange(width)[None, :]]


def _pooled_table(read: _ReadProducts, pieces: list, names: list[str], fdr_by: list[str]) -> pa.Table:
    """The pooled results of every analysis as one Arrow table (README columns), with q per family."""
    keys = np.concatenate([analysis.keys for analysis, *_ in pieces])
    codes = dict(zip(POOL_KEYS, decompose(read.keys[keys], read.sizes), strict=True))
    codes["model"] = np.zeros(keys.size, dtype=np.int64)
    values = {**read.values, "model": ["lm"]}

    def stacked(name: str) -> np.ndarray:
        return np.concatenate([getattr(fits, name) for _, fits, *_ in pieces])

    contributing = np.concatenate([piece[2] for piece in pieces])
    p = stacked("p").astype(np.float64)
    columns = [c for c in fdr_by if c in KEY_COLUMNS]
    family = composite(codes, columns, [len(values[c]) for c in columns]) if columns else np.zeros(keys.size, dtype=np.int64)
    q = np.where(np.isnan(p), np.nan, benjamini_hochberg_grouped(p, family))
    status_codes = stacked("status").astype(np.int64)
    status_values = sorted(set(status_codes.tolist()))
    status_index = np.searchsorted(np.array(status_values, dtype=np.int64), status_codes)
    covariates = np.concatenate([np.full(analysis.keys.size, i) for i, (analysis, *_) in enumerate(pieces)])
    names_array = np.array(names, dtype=object)
    return pa.table(
        {
            **{column: text_column(codes[column], values[column]) for column in KEY_COLUMNS},
            "k": pa.array(contributing.sum(axis=1).astype(np.int64)),
            "n": pa.array(stacked("n")),
            "beta": _floats_column(stacked("beta")),
            "se": _floats_column(stacked("se")),
            "t": _floats_column(stacked("t")),
            "p": _floats_column(p),
            "q": _floats_column(q),
            "df": _floats_column(stacked("df")),
            "status": text_column(status_index, [STATUS_TEXT[FitStatus(code)] for code in status_values]),
            "covariate_terms": text_column(covariates, [piece[3] for piece in pieces]),
            "cohorts": _pattern_text(
                contributing.astype(np.int64), 2, lambda bits: np.array([",".join(names_array[row > 0]) for row in bits], dtype=object)
            ),
        }
    )
