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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

from scalable_assoc import __version__
from scalable_assoc.errors import DataError, UserInputError
from scalable_assoc.io.atomic import write_json, write_parquet, write_tsv
from scalable_assoc.models.fits import STATUS_TEXT, FitStatus
from scalable_assoc.models.pooled import drop_reference_levels, solve_pooled, unpack_symmetric
from scalable_assoc.plan.spec import FdrSpec
from scalable_assoc.progress import ProgressReporter
from scalable_assoc.results.cohort_files import CohortFile
from scalable_assoc.results.cohort_files import open_cohorts as open_cohorts  # the first step of meta and pool, public here too
from scalable_assoc.results.compatibility import check_compatible
from scalable_assoc.results.gather import family_q
from scalable_assoc.results.harmonise import coverage_table, harmonised_names
from scalable_assoc.stats.meta import METHODS, MetaFits, combine_estimates, direction_strings, leave_one_out

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
    """Every row, in blocks of ``block_rows``: in this process, or through ``mapper`` when it wants them.

    Blocks give progress as they finish. They do not change a row's result: the
    kernel iterates each row on its own (a converged row is frozen).
    """
    starts = range(0, beta.shape[0], block_rows)
    blocks = [(beta[s : s + block_rows], se[s : s + block_rows], method, hksj) for s in starts]

    def finished(i: int) -> None:
        progress.advance(blocks[i][0].shape[0])

    if mapper is not None and mapper.wanted(beta.shape[0]):
        parts = mapper(combine_estimates, blocks, finished)
    else:
        parts = []
        for i, block in enumerate(blocks):
            parts.append(combine_estimates(*block))
            finished(i)
    if not parts:
        return combine_estimates(beta, se, method=method, hksj=hksj)
    return MetaFits(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(MetaFits)})


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


def _with_harmonised_features(frame: pd.DataFrame, cohort: CohortFile, mapping: dict[str, str] | None, keys: Sequence[str]) -> pd.DataFrame:
    """Replace ``feature`` by its matching key; refuse two spellings of one cohort that become the same feature."""
    original = frame["feature"].astype(str)
    frame = frame.assign(feature=harmonised_names(original, mapping).to_numpy(), source_feature=original.to_numpy())
    clash = frame.duplicated(list(keys), keep=False)
    if clash.any():
        names = sorted(set(frame.loc[clash, "source_feature"]))[:4]
        raise DataError(
            f"{cohort.path} (cohort {cohort.cohort}): features {', '.join(names)} become the same feature after matching names; "
            "give a --feature-map that tells them apart"
        )
    return frame


def _coverage(frames: list[pd.DataFrame], cohorts: list[CohortFile]) -> tuple[pd.DataFrame, list[str]]:
    present = pd.concat([f[["layer", "feature", "cohort"]] for f in frames], ignore_index=True)
    names = [c.cohort for c in cohorts]
    coverage = coverage_table(present, names)
    warnings = []
    for cohort in names:
        own = coverage[coverage["present_in"].str.split(",").map(lambda cs, c=cohort: c in cs)]
        if len(own) and (own["cohorts"] == 1).all() and len(names) > 1:
            warnings.append(f"cohort {cohort} shares no feature with any other cohort (check feature spellings or --feature-map)")
        elif not len(own):
            warnings.append(f"cohort {cohort} has no rows to combine (everything was withheld or failed)")
    partial = int((coverage["cohorts"] < len(names)).sum())
    if partial:
        warnings.append(f"{partial} of {len(coverage)} features are present in only some cohorts (see feature_coverage.tsv)")
    for warning in warnings:
        logger.warning("%s", warning)
    return coverage, warnings


def _add_q(results: pd.DataFrame, cohorts: list[CohortFile]) -> list[str]:
    """Insert ``q`` after ``p``: BH within the families of the cohorts' plan (``fdr.by``); returns those columns."""
    fdr_by = list(cohorts[0].sidecar["analysis"].get("fdr_by", ["layer", "exposure", "adjustment", "model"]))
    results.insert(results.columns.get_loc("p") + 1, "q", family_q(results, fdr_by))
    return fdr_by


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
    block_rows: int = 250_000,
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
    frames = [_with_harmonised_features(c.summary(), c, mapping, KEY_COLUMNS).assign(cohort=c.cohort) for c in cohorts]
    coverage, coverage_warnings = _coverage(frames, cohorts)
    warnings += coverage_warnings
    names = [c.cohort for c in cohorts]
    table = _estimates_by_cohort(pd.concat(frames, ignore_index=True), names, min_cohorts)
    logger.info(f"meta-analysing {len(table.keys)} rows over {len(names)} cohorts ({method}{' + HKSJ' if hksj else ''})")
    progress = ProgressReporter(logger, "meta", len(table.keys), "rows", label="meta-analysing")
    progress.start()
    fits = _combine(table.beta, table.se, method, hksj, mapper, block_rows, progress)
    progress.finish()
    few = int(((fits.k > 1) & (fits.k < 3)).sum()) if hksj else 0
    if few:
        warning = (
            f"--hksj: {few} of {len(table.keys)} rows were combined from fewer than 3 cohorts; with k = 2 the Hartung-Knapp "
            "standard error rests on 1 degree of freedom and can be far too small or too large (treat those rows with care, "
            "or use --min-cohorts 3)"
        )
        logger.warning("%s", warning)
        warnings.append(warning)
    results = _meta_results(table, fits, names)
    fdr_by = _add_q(results, cohorts)
    results["method"] = method + ("+hksj" if hksj else "")
    write_parquet(out / "meta_results.parquet", results)
    write_tsv(out / "meta_results.tsv", results)
    forest = forest_estimates(table.keys, results["p"].to_numpy(dtype=np.float64), table.beta, table.se, table.n, table.present, names)
    write_parquet(out / "meta_forest_estimates.parquet", forest)
    write_tsv(out / "meta_forest_estimates.tsv", forest)
    write_tsv(out / "feature_coverage.tsv", coverage)
    if leave_one_out_estimates:
        _write_leave_one_out(out, table, names, method, hksj)
    settings = {
        "method": method,
        "hksj": hksj,
        "min_cohorts": min_cohorts,
        "leave_one_out": leave_one_out_estimates,
        "fdr_by": list(fdr_by),
        "alpha": alpha,
        "allow_mismatch": allow_mismatch,
    }
    extra: dict[str, Any] = {"significant": significant_rows(results, alpha)}
    if hksj:
        extra["hksj_rows_below_3_cohorts"] = few
    manifest = _manifest("meta", cohorts, settings, warnings, len(results), **extra)
    write_json(out / "meta_manifest.json", manifest)
    return CombinedSummary(out, results, coverage, manifest)


@dataclass(frozen=True)
class _CohortEstimates:
    """The rows to combine, ``r`` keys x ``k`` cohorts: NaN (``n`` 0) where a cohort has no estimate."""

    keys: pd.DataFrame  # (r, len(KEY_COLUMNS))
    beta: np.ndarray  # (r, k)
    se: np.ndarray  # (r, k)
    n: np.ndarray  # (r, k)
    present: np.ndarray  # (r, k) bool: a finite beta and a positive se


def _estimates_by_cohort(long: pd.DataFrame, names: list[str], min_cohorts: int) -> _CohortEstimates:
    """The cohorts' rows side by side, keeping the keys estimated in at least ``min_cohorts`` cohorts."""
    keys = long[list(KEY_COLUMNS)].drop_duplicates().reset_index(drop=True)
    row_of = pd.MultiIndex.from_frame(keys).get_indexer(pd.MultiIndex.from_frame(long[list(KEY_COLUMNS)]))
    column_of = pd.Index(names).get_indexer(long["cohort"])
    beta = np.full((len(keys), len(names)), np.nan)
    se = np.full((len(keys), len(names)), np.nan)
    n = np.zeros((len(keys), len(names)))
    beta[row_of, column_of] = long["beta"].to_numpy(dtype=np.float64)
    se[row_of, column_of] = long["se"].to_numpy(dtype=np.float64)
    n[row_of, column_of] = long["n"].to_numpy(dtype=np.float64)
    present = np.isfinite(beta) & np.isfinite(se) & (se > 0)
    enough = present.sum(axis=1) >= min_cohorts
    if not enough.any():
        raise DataError(
            f"no feature has estimates in at least {min_cohorts} cohorts ({', '.join(names)}); nothing to meta-analyse (see --min-cohorts)"
        )
    return _CohortEstimates(keys[enough].reset_index(drop=True), beta[enough], se[enough], n[enough], present[enough])


def _meta_results(table: _CohortEstimates, fits: MetaFits, names: list[str]) -> pd.DataFrame:
    """One row per key: the combined estimate, heterogeneity, direction per cohort and the cohorts combined."""
    names_array = np.array(names, dtype=object)
    return table.keys.assign(
        k=fits.k,
        n=table.n.sum(axis=1).astype(np.int64),
        beta=fits.beta,
        se=fits.se,
        statistic=fits.statistic,
        p=fits.p,
        tau2=fits.tau2,
        i2=fits.i2,
        q_stat=fits.q_stat,
        q_p=fits.q_p,
        direction=direction_strings(table.beta),
        cohorts=[",".join(names_array[row]) for row in table.present],
    )


def smallest_p_rows(keys: pd.DataFrame, p: np.ndarray, per_group: int) -> np.ndarray:
    """Positions of the ``per_group`` rows with the smallest ``p`` in each layer x model of ``keys`` (rows without a p left out).

    Parameters
    ----------
    keys
        ``(r, ...)`` frame with ``layer`` and ``model`` columns.
    p
        ``(r,)`` p-values, NaN where there is none.
    per_group
        Rows kept per layer x model.

    Returns
    -------
    np.ndarray
        ``(s,)`` int64 positions into ``keys``, grouped by layer x model in order of first appearance, by p within each.
    """
    groups = keys.groupby(["layer", "model"], sort=False, observed=True).ngroup().to_numpy()
    chosen = []
    finite = np.isfinite(p)
    for group in range(int(groups.max()) + 1 if len(groups) else 0):  # a few layer x model groups, each handled whole
        rows = np.flatnonzero((groups == group) & finite)
        if rows.size > per_group:
            rows = rows[np.argpartition(p[rows], per_group - 1)[:per_group]]
        chosen.append(rows[np.argsort(p[rows], kind="stable")])
    return np.concatenate(chosen).astype(np.int64) if chosen else np.zeros(0, dtype=np.int64)


def forest_estimates(
    keys: pd.DataFrame,
    p: np.ndarray,
    beta: np.ndarray,
    se: np.ndarray,
    n: np.ndarray,
    present: np.ndarray,
    names: list[str],
    per_group: int = FOREST_KEYS,
) -> pd.DataFrame:
    """Each cohort's estimate as combined, for the :data:`FOREST_KEYS` keys with the smallest p per layer x model.

    Parameters
    ----------
    keys
        ``(r, len(KEY_COLUMNS))`` the combined keys.
    p
        ``(r,)`` the combined p-values.
    beta, se, n, present
        ``(r, k)`` each cohort's estimate, its se, participants and whether it was combined.
    names
        The ``k`` cohorts.
    per_group
        Keys kept per layer x model.

    Returns
    -------
    pd.DataFrame
        One row per kept key x cohort combined: the key columns, ``cohort, beta, se, n``.
    """
    chosen = smallest_p_rows(keys, p, per_group)
    rows, columns = np.nonzero(present[chosen])
    picked = chosen[rows]
    return (
        keys.iloc[picked]
        .reset_index(drop=True)
        .assign(
            cohort=np.array(names, dtype=object)[columns],
            beta=beta[picked, columns],
            se=se[picked, columns],
            n=n[picked, columns].astype(np.int64),
        )
    )


def _write_leave_one_out(out: Path, table: _CohortEstimates, names: list[str], method: str, hksj: bool) -> None:
    """``meta_leave_one_out.parquet`` / ``.tsv``: per key and cohort present, the estimate without that cohort."""
    loo_beta, loo_se, loo_p = leave_one_out(table.beta, table.se, method=method, hksj=hksj)
    rows, columns = np.nonzero(table.present)
    loo = (
        table.keys.iloc[rows]
        .reset_index(drop=True)
        .assign(
            left_out=np.array(names, dtype=object)[columns], beta=loo_beta[rows, columns], se=loo_se[rows, columns], p=loo_p[rows, columns]
        )
    )
    write_parquet(out / "meta_leave_one_out.parquet", loo)
    write_tsv(out / "meta_leave_one_out.tsv", loo)


def _stack_sufficient(cohort: CohortFile, mapping: dict[str, str] | None) -> pd.DataFrame:
    table: pa.Table = cohort.sufficient()
    frame = table.to_pandas()
    frame["terms"] = frame["terms"].map(tuple)
    return _with_harmonised_features(frame, cohort, mapping, ("layer", "feature", "exposure", "adjustment")).assign(cohort=cohort.cohort)


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
    frames = [_stack_sufficient(c, mapping) for c in cohorts]
    coverage, coverage_warnings = _coverage(frames, cohorts)
    warnings += coverage_warnings
    long = pd.concat(frames, ignore_index=True)
    categorical = tuple(cohorts[0].sidecar["analysis"].get("categorical", []))
    names = [c.cohort for c in cohorts]
    pieces = []
    for (layer, exposure, adjustment), group in long.groupby(["layer", "exposure", "adjustment"], sort=False):
        features = group.groupby("feature", sort=False)["cohort"].nunique()
        features = features[features >= min_cohorts].index
        if len(features):
            pieces.append(
                _pool_analysis((layer, exposure, adjustment), group[group["feature"].isin(features)], features, categorical, names)
            )
    if not pieces:
        raise DataError(
            f"no feature has cross-products in at least {min_cohorts} cohorts ({', '.join(names)}); nothing to pool (see --min-cohorts)"
        )
    results = pd.concat(pieces, ignore_index=True)
    fdr_by = _add_q(results, cohorts)
    logger.info(f"pooled {len(results)} rows over {len(names)} cohorts")
    write_parquet(out / "pooled_results.parquet", results)
    write_tsv(out / "pooled_results.tsv", results)
    write_tsv(out / "feature_coverage.tsv", coverage)
    settings = {"min_cohorts": min_cohorts, "fdr_by": list(fdr_by), "alpha": alpha, "allow_mismatch": allow_mismatch}
    manifest = _manifest("pool", cohorts, settings, warnings, len(results), significant=significant_rows(results, alpha))
    write_json(out / "pool_manifest.json", manifest)
    return CombinedSummary(out, results, coverage, manifest)


@dataclass(frozen=True)
class _PooledProducts:
    """Cross-products summed over cohorts for ``m`` features and ``c`` terms."""

    zz: np.ndarray  # (m, c, c)
    zy: np.ndarray  # (m, c)
    yy: np.ndarray  # (m,)
    n: np.ndarray  # (m,) int64
    contributing: np.ndarray  # (m, k) bool: which cohorts have the feature


def _sum_cross_products(group: pd.DataFrame, features: pd.Index, all_terms: list[str], names: list[str]) -> _PooledProducts:
    """Add up the cohorts' cross-product rows of one analysis, each cohort's terms placed among ``all_terms``."""
    width = len(all_terms)
    m = len(features)
    zz = np.zeros((m, width, width))
    zy = np.zeros((m, width))
    yy = np.zeros(m)
    n = np.zeros(m, dtype=np.int64)
    contributing = np.zeros((m, len(names)), dtype=bool)
    for terms, rows in group.groupby("terms", sort=False):
        position = np.array([all_terms.index(t) for t in terms])
        where = features.get_indexer(rows["feature"])
        packed = np.stack(rows["zz"].to_numpy())
        # add.at, not +=: a feature appears once per cohort in ``rows`` and every copy must count
        np.add.at(zz, (where[:, None, None], position[None, :, None], position[None, None, :]), unpack_symmetric(packed))
        np.add.at(zy, (where[:, None], position[None, :]), np.stack(rows["zy"].to_numpy()))
        np.add.at(yy, where, rows["yy"].to_numpy(dtype=np.float64))
        np.add.at(n, where, rows["n"].to_numpy(dtype=np.int64))
        contributing[where, pd.Index(names).get_indexer(rows["cohort"])] = True
    return _PooledProducts(zz, zy, yy, n, contributing)


def _pool_analysis(
    analysis: tuple[str, str, str], group: pd.DataFrame, features: pd.Index, categorical: tuple[str, ...], names: list[str]
) -> pd.DataFrame:
    """The pooled fit of one (layer, exposure, adjustment) on each of ``features``, from the rows of ``group``."""
    layer, exposure, adjustment = analysis
    all_terms = list(dict.fromkeys(t for terms in group["terms"].drop_duplicates() for t in terms))
    if all_terms[0] != "exposure":
        raise DataError(f"cohort files disagree on the first term of {layer}/{exposure}/{adjustment}: {all_terms[0]!r}")
    kept_terms = drop_reference_levels(all_terms, categorical)
    feature_index = pd.Index(features)
    summed = _sum_cross_products(group, feature_index, all_terms, names)
    keep = np.array([all_terms.index(t) for t in kept_terms])
    fits = solve_pooled(summed.zz[:, keep][:, :, keep], summed.zy[:, keep], summed.yy, summed.n, summed.contributing.sum(axis=1))
    status = np.array([STATUS_TEXT[FitStatus(code)] for code in fits.status], dtype=object)
    return pd.DataFrame(
        {
            "layer": layer,
            "feature": feature_index,
            "exposure": exposure,
            "adjustment": adjustment,
            "model": "lm",
            "k": summed.contributing.sum(axis=1),
            "n": fits.n,
            "beta": fits.beta,
            "se": fits.se,
            "t": fits.t,
            "p": fits.p,
            "df": fits.df,
            "status": status,
            "covariate_terms": "+".join(kept_terms[1:]),
            "cohorts": [",".join(np.array(names)[row]) for row in summed.contributing],
        }
    )
